"""The webdataset stream: shards -> raw samples -> shuffle buffer -> decoded, collated batches.

Why not `webdataset.WebDataset(shardshuffle=...)`: in webdataset 1.0 its shard order is drawn from
a seed fixed when the pipeline is built, so every epoch repeats the same shard order (checked with
persistent and with non-persistent workers), and shards are split over workers before shuffling, so
a worker reads the same shards every epoch. Here every random choice comes from a generator seeded
by (seed, epoch[, rank, worker]), and the epoch number lives in shared memory, set by `EpochLoader`
at each `iter()`: non-persistent workers receive it in their fresh copy of the dataset, persistent
workers read the same shared tensor. That also makes a position reproducible from (epoch, batches
seen), which is what data-stream resume needs: `EpochLoader.state_dict()` is (epoch, batches each
worker has handed to the training loop); after `load_state_dict` each worker replays that many batches
of that epoch without yielding them (decoding again: a resume costs at most one epoch of reading)
and the stream continues exactly where it stopped. Lightning saves and restores this state with its
checkpoints because the loader has `state_dict`/`load_state_dict`.

Epoch length and DDP. A rank that runs out of batches before the others hangs DDP's gradient
all-reduce, so training streams have a fixed length: `batches_per_epoch` for every rank, split
over workers; each worker cycles through its own shards (re-shuffled every pass) until its quota
is met. Without it the stream is one exact pass (each sample once, possibly uneven across ranks):
for validation, and for single-process training.
"""

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from ldm_train.data.decode import SkipSample
from ldm_train.data.samples import SampleDecoder, collate
from ldm_train.data.shardlist import epoch_order, split_for_worker
from ldm_train.data.tar_samples import read_tar_samples

logger = logging.getLogger(__name__)
# An endless stream in which this many samples in a row fail is broken data, not bad luck; without
# this limit it would spin forever without producing a batch.
MAX_CONSECUTIVE_SKIPS = 10_000
WARNED_SKIPS_PER_WORKER = 20  # later skips are logged at DEBUG, so a bad dataset cannot flood the log
# Batch key naming the worker that built a batch; `EpochLoader` removes it and counts per worker.
WORKER_KEY = "__worker__"


class BrokenStreamError(RuntimeError):
    """The stream cannot produce batches at all (no usable samples in its shards)."""


class SkipCounter:
    """Skipped samples of one worker; `take()` hands the count since the last batch to that batch."""

    def __init__(self, where: str):
        self.where = where
        self.total = self.pending = self.consecutive = 0

    def skip(self, reason: str, what: str) -> None:
        self.total += 1
        self.pending += 1
        self.consecutive += 1
        level = logging.WARNING if self.total <= WARNED_SKIPS_PER_WORKER else logging.DEBUG
        logger.log(level, "skipped %s: %s (%s)", what, reason, self.where)
        if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise BrokenStreamError(
                f"{self.consecutive} samples in a row were unusable ({self.where}); last: {reason}"
            )

    def good(self) -> None:
        self.consecutive = 0

    def take(self) -> int:
        count, self.pending = self.pending, 0
        return count


def read_shard(url: str, counter: SkipCounter) -> Iterator[dict]:
    """Raw samples ({"__key__", "jpg": bytes, ...}) of one shard. A broken sample (a duplicated
    member) or a damaged stretch costs only the samples it touches and is counted (tar_samples.py);
    an unreadable shard counts one skip, and reading moves on to the next shard."""
    try:
        with gopen(url) as stream:
            yield from read_tar_samples(stream, url, counter.skip)
    except BrokenStreamError:
        raise  # too many bad samples in a row: that ends the run, on purpose
    # gopen/pipe/HTTP failures come in many types; none of them may end the run.
    except Exception as error:
        counter.skip(f"unreadable shard ({type(error).__name__}: {error.args[0] if error.args else error})", url)


def buffer_shuffle(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a stream through a buffer of `size` items (sample order mixes across shards)."""
    if size <= 1:
        yield from items
        return
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Collated batches from webdataset shards, split by rank and by DataLoader worker.

    rank/world_size are explicit (the data module takes them from the Trainer), so the split does
    not depend on torch.distributed being initialised. `batches_per_epoch` (per rank) gives the
    fixed-length endless stream DDP needs; `resampled` draws shards with replacement from all shards
    (independent per rank and worker) instead of cycling through a disjoint share.
    """

    def __init__(
        self,
        urls: list[str],
        decoder: SampleDecoder,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        batches_per_epoch: int | None = None,
        resampled: bool = False,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if resampled and batches_per_epoch is None:
            raise ValueError("a resampled stream is endless: give it batches_per_epoch")
        self.urls, self.decoder, self.batch_size = list(urls), decoder, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.batches_per_epoch, self.resampled = batches_per_epoch, resampled
        # Shared memory: persistent workers keep their own copy of this object, but see this tensor.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # Set by `resume_at` before the workers start (see there).
        self._resume: tuple[int, list[int], int] | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def resume_at(self, epoch: int | None, batches_per_worker: list[int] = (), next_worker: int = 0) -> None:
        """In `epoch`, stream worker w first replays (and drops) `batches_per_worker[w]` batches
        (`epoch` None: no replay).

        A DataLoader takes batches from its workers round robin starting at worker 0; the
        interrupted epoch continued with `next_worker`, so DataLoader worker i plays stream worker
        (i + next_worker) mod num_workers in that epoch: the round robin goes on where it stopped."""
        self._resume = None if epoch is None else (epoch, list(batches_per_worker), next_worker)

    def __len__(self) -> int:  # batches per epoch on this rank; unknown for a single exact pass
        if self.batches_per_epoch is None:
            raise TypeError("a single-pass ShardStream has no length (its sample count is not known)")
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, replay = self.epoch, 0
        if self._resume is not None and self._resume[0] == epoch:
            _, batches_per_worker, next_worker = self._resume
            worker = (worker + next_worker) % num_workers
            replay = batches_per_worker[worker]
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        counter = SkipCounter(f"epoch {epoch}, rank {self.rank}, worker {worker}")
        raw = self._raw_samples(self._passes(epoch, worker, num_workers, rng), counter)
        batches = self._batches(buffer_shuffle(raw, self.shuffle_buffer, rng), rng, counter)
        if self.batches_per_epoch is not None:
            base, extra = divmod(self.batches_per_epoch, num_workers)
            batches = itertools.islice(batches, base + int(worker < extra))
        for batch in itertools.islice(batches, replay, None):
            batch[WORKER_KEY] = worker
            yield batch

    def _passes(
        self, epoch: int, worker: int, num_workers: int, rng: np.random.Generator
    ) -> Iterator[list[str]]:
        """Lists of shard URLs to read, one list per pass; endless unless this is a single pass."""
        if self.resampled:
            while True:
                yield [self.urls[index] for index in rng.integers(len(self.urls), size=len(self.urls))]
        order = epoch_order(self.urls, self.seed, epoch, self.shuffle)
        mine = split_for_worker(order, self.rank, self.world_size, worker, num_workers)
        if self.batches_per_epoch is None:
            yield mine
            return
        if not mine:
            raise BrokenStreamError(
                f"{len(self.urls)} shards cannot feed {self.world_size} ranks × {num_workers} workers disjointly: "
                "write more (smaller) shards, use fewer workers, or set resampled=True"
            )
        yield mine
        while True:
            yield [mine[index] for index in rng.permutation(len(mine))]

    def _raw_samples(self, passes: Iterator[list[str]], counter: SkipCounter) -> Iterator[dict]:
        for shards in passes:
            produced = 0
            for url in shards:
                for sample in read_shard(url, counter):
                    produced += 1
                    yield sample
            if produced == 0 and self.batches_per_epoch is not None:
                raise BrokenStreamError(
                    f"a full pass over {len(shards)} shards gave no samples ({counter.where})"
                )

    def _batches(self, raw: Iterator[dict], rng: np.random.Generator, counter: SkipCounter) -> Iterator[dict]:
        # A full batch is held back until the next one is ready (or the pass ends), so skips after
        # the last good sample of a pass still reach the training loop, in the held batch.
        examples, held = [], None
        collate_fn = getattr(self.decoder, "collate", collate)  # a decoder may bring its own (data/latents.py)
        for sample in raw:
            try:
                examples.append(self.decoder(sample, rng))
            except SkipSample as reason:
                counter.skip(str(reason), f"sample {sample.get('__key__')!r} of {sample.get('__url__')}")
                continue
            counter.good()
            if len(examples) == self.batch_size:
                if held is not None:
                    yield collate_fn(held, counter.take())
                held, examples = examples, []
        if held is not None:
            yield collate_fn(held, counter.take())
        if examples:  # only a single pass ends; its last batch may be partial
            yield collate_fn(examples, counter.take())


class EpochLoader(DataLoader):
    """DataLoader over a ShardStream that starts a new epoch (new shard and sample order) at every
    `iter()`; Lightning calls `iter()` once per epoch. Batches are built in the workers.

    Resumable: `state_dict()` is the position of the next batch the training loop will take,
    {"epoch", "batches_per_worker", "next_worker"}, and `load_state_dict` (before the first
    `iter()`) makes the next `iter()` continue from there. `lookahead` is how many batches the
    consumer reads ahead of the step being checkpointed: Lightning's fetcher reads one ahead when
    the loader has no length (a single-pass stream) and none when it has one.

    The loader draws its DataLoader base seed from a generator of its own, so iterating it never
    moves the global torch RNG (training noise stays the same stream, resumed or not).
    """

    def __init__(self, dataset: ShardStream, lookahead: int = 1, **kwargs):
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.seed))
        super().__init__(dataset, batch_size=None, **kwargs)
        self.lookahead = lookahead
        self.epochs_started = 0
        self._resume: tuple[int, list[int], int] | None = None
        self._delivered = [0] * self._num_readers  # batches of the current epoch, per stream worker
        self._recent: list[int] = []  # stream workers of this epoch's last few batches, oldest first
        self._first_worker = 0  # the worker this epoch's round robin started with
        self._exhausted = False

    @property
    def _num_readers(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self):
        epoch = self.epochs_started
        self.dataset.set_epoch(epoch)
        self.epochs_started += 1
        self._delivered, self._recent, self._first_worker, self._exhausted = [0] * self._num_readers, [], 0, False
        if self._resume is not None and self._resume[0] == epoch:
            _, delivered, self._first_worker = self._resume
            self._delivered = list(delivered)
            self.dataset.resume_at(*self._resume)
        else:  # another loader over this dataset (end-of-training batches) must not replay its position
            self.dataset.resume_at(None)
        self._resume = None
        return self._counted(super().__iter__())

    def _counted(self, batches) -> Iterator[dict]:
        for batch in batches:
            worker = batch.pop(WORKER_KEY)
            self._delivered[worker] += 1
            self._recent = [*self._recent, worker][-(self.lookahead + 1) :]
            yield batch
        self._exhausted = True

    def state_dict(self) -> dict:
        readers = self._num_readers
        if self._resume is not None:  # loaded and not iterated since: still that position
            epoch, counts, next_worker = self._resume
            return {"epoch": epoch, "batches_per_worker": list(counts), "next_worker": next_worker}
        epoch, delivered = max(self.epochs_started - 1, 0), list(self._delivered)
        sized = self.dataset.batches_per_epoch is not None
        if self._exhausted or (sized and sum(delivered) >= len(self)):
            return {"epoch": epoch + 1, "batches_per_worker": [0] * readers, "next_worker": 0}
        read_ahead = self._recent[-self.lookahead :] if self.lookahead and not sized else []
        for worker in read_ahead:  # fetched by the consumer but not yet trained on
            delivered[worker] -= 1
        trained = self._recent[: len(self._recent) - len(read_ahead)]
        if read_ahead:
            next_worker = read_ahead[0]
        else:
            next_worker = (trained[-1] + 1) % readers if trained else self._first_worker
        return {"epoch": epoch, "batches_per_worker": delivered, "next_worker": next_worker}

    def load_state_dict(self, state: dict) -> None:
        if self._iterator is not None:  # persistent workers hold the dataset as it was at their start
            raise RuntimeError("EpochLoader.load_state_dict must be called before the loader's first iter()")
        epoch, next_worker = int(state["epoch"]), int(state["next_worker"])
        counts, readers = [int(c) for c in state["batches_per_worker"]], self._num_readers
        if len(counts) != readers:
            total = sum(counts)
            counts, next_worker = [len(range(w, total, readers)) for w in range(readers)], total % readers
            logger.warning(
                "The data position was saved with %d loader workers and this run has %d: continuing after "
                "the same %d batches of epoch %d, but the rest of that epoch is not the sample order an "
                "uninterrupted run would have seen (resume with the same data.num_workers for that).",
                len(state["batches_per_worker"]), readers, total, epoch,
            )
        self.epochs_started = epoch
        self._resume = (epoch, counts, next_worker)
