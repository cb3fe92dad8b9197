"""The evaluators on real Fashion-MNIST with the real Inception and classifier, at tiny N: sharding over
two gloo ranks gives the single-process numbers, results are written, and bad settings are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ldm_train.evaluation.generation import GenerationEvaluator
from ldm_train.evaluation.reference import RealReference, cache_path, reference_features
from ldm_train.evaluation.results import count_label
from ldm_train.evaluation.sharding import gather_rows, shard
from ldm_train.metrics.fashion_data import fashion_mnist_tensors, to_model_range
from ldm_train.metrics.fid import INCEPTION_NAME
from tests.helpers import free_port

WORLD = 2
PER_PROMPT = 2  # 20 samples: 2 per class
REFERENCE_N = 20


def fake_sampler(prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """A deterministic 'model': the sample of seed s is test image 20 + s (mod 50), real data outside the
    reference (the first 20), depending only on its seed like the real sampler's per-image seeds."""
    images, _ = fashion_mnist_tensors("test", 50)
    return torch.stack([to_model_range(images[(REFERENCE_N + s) % 50][None])[0] for s in seeds])


def evaluator() -> GenerationEvaluator:
    return GenerationEvaluator(RealReference(n=REFERENCE_N), per_prompt=PER_PROMPT, batch_size=3,
                               feature_batch_size=4, kid_subsets=10, grid_per_prompt=2)


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    rows = torch.arange(5)[shard(5)][:, None].float() * 10  # items 0,2,4 on rank 0; 1,3 on rank 1
    gathered = gather_rows(rows, 5)
    result = evaluator().run(fake_sampler, "cpu")
    torch.save({"gathered": gathered, "metrics": result.metrics, "details": result.details, "grid": result.grid},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A fresh assets folder: the reference features are computed (sharded) here, not read from a cache."""
    path = tmp_path_factory.mktemp("assets")
    previous = os.environ.get("LDM_TRAIN_ASSETS")
    os.environ["LDM_TRAIN_ASSETS"] = str(path)
    yield path
    os.environ.pop("LDM_TRAIN_ASSETS") if previous is None else os.environ.update(LDM_TRAIN_ASSETS=previous)


@pytest.fixture(scope="module")
def single(assets):
    return evaluator().run(fake_sampler, "cpu", keep_samples=True)


@pytest.fixture(scope="module")
def ranks(assets, single, tmp_path_factory) -> list[dict]:
    cache_path(RealReference(n=REFERENCE_N), INCEPTION_NAME).unlink()  # the ranks compute it again, sharded
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_rank_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_single_process_metrics_are_named_with_n_and_sensible(single):
    n = count_label(10 * PER_PROMPT)
    assert set(single.metrics) >= {f"fid@{n}", f"kid@{n}", f"kid_std@{n}", "class_accuracy"}
    # The fake samples are real test images, so the classifier (91.9% test accuracy) mostly agrees
    # with their true labels; the prompts' labels are unrelated to them, so accuracy is near chance.
    assert 0.0 <= single.metrics["class_accuracy"] <= 0.5
    assert single.metrics[f"fid@{n}"] > 0 and single.details["work_per_rank"] == [20]
    assert single.samples.shape == (20, 3, 32, 32) and single.samples.dtype == torch.uint8
    assert single.grid.shape == (3, 10 * 34 + 2, 2 * 34 + 2)  # 10 rows (one per class) × 2, 2-px padding


def test_ddp_sharded_evaluation_equals_single_process(ranks, single):
    assert ranks[0]["gathered"].flatten().tolist() == [0, 10, 20, 30, 40]  # item order restored
    assert [r["details"]["work_per_rank"] for r in ranks] == [[10, 10]] * 2  # both ranks sampled half
    for rank in ranks:
        assert rank["metrics"].keys() == single.metrics.keys()
        for name, value in single.metrics.items():
            assert rank["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        torch.testing.assert_close(rank["grid"], single.grid)


def test_reference_features_are_cached_and_serve_smaller_n(assets):
    calls = []

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return images.float().flatten(1)[:, :8]

    big = reference_features(RealReference(n=12), counting, "toy", batch_size=5)
    assert sum(calls) == 12 and big.shape == (12, 8)
    small = reference_features(RealReference(n=6), counting, "toy", batch_size=5)
    assert sum(calls) == 12, "a smaller reference must come from the cache"
    torch.testing.assert_close(small, big[:6])
    reference_features(RealReference(n=20), counting, "toy", batch_size=5)
    assert sum(calls) == 32, "a larger reference is computed again"


def test_result_writes_json_and_grid(single, tmp_path):
    path = single.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["metrics"] == pytest.approx(single.metrics) and data["reference"] == "fashion_mnist test[:20] @32px"
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"per_prompt": 0}, "per_prompt must be >= 1"),
     ({"classes": None}, "exactly one of"),
     ({"prompts": ["a"]}, "exactly one of"),
     ({"batch_size": 0}, "batch sizes must be >= 1")],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationEvaluator(RealReference(n=10), **kwargs)


def test_reference_is_checked():
    with pytest.raises(ValueError, match="not built in"):
        RealReference(dataset="imagenet", n=10)
    with pytest.raises(ValueError, match="n >= 2"):
        RealReference(n=1)
