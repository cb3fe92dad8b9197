"""EpochLoader's state: a loader restored from `state_dict()` continues the stream exactly where the
training loop stopped (fixed-length and single-pass streams, 0 or 2 workers, persistent or not)."""

import logging

import pytest
from shard_helpers import write_shards

from ldm_train.data.samples import SampleDecoder
from ldm_train.data.shardlist import expand_shards
from ldm_train.data.stream import EpochLoader, ShardStream
from ldm_train.data.transforms import ResizeCrop

EPOCHS = 3


def make_loader(pattern: str, batches_per_epoch: int | None, workers: int = 0, persistent: bool = False) -> EpochLoader:
    stream = ShardStream(expand_shards(pattern), SampleDecoder(ResizeCrop(8, hflip=True)), batch_size=3,
                         shuffle=True, shuffle_buffer=5, seed=5, batches_per_epoch=batches_per_epoch)
    # Lightning's fetcher reads one batch ahead only when the loader has no length.
    lookahead = 0 if batches_per_epoch is not None else 1
    return EpochLoader(stream, lookahead=lookahead, num_workers=workers, persistent_workers=persistent)


def read_epochs(loader: EpochLoader, epochs: int) -> list:
    return [batch["caption"] for _ in range(epochs) for batch in loader]


def train_then_save(loader: EpochLoader, epochs: int, steps: int) -> tuple[list, dict]:
    """`epochs` whole epochs, then `steps` batches of the next, read as Lightning reads them; the
    batches trained on and the state a checkpoint taken right then would hold."""
    trained = read_epochs(loader, epochs)
    iterator = iter(loader)
    fetched = [next(iterator)["caption"] for _ in range(steps + loader.lookahead)]
    return trained + fetched[:steps], loader.state_dict()


def resume(pattern: str, state: dict, epochs_left: int, **kwargs) -> list:
    loader = make_loader(pattern, **kwargs)
    loader.load_state_dict(state)
    return read_epochs(loader, epochs_left)


@pytest.fixture
def uneven(tmp_path) -> str:
    """7 shards × 6 samples: with 2 workers, one reads 4 shards (8 batches), the other 3 (6 batches)."""
    return write_shards(tmp_path / "uneven", num_shards=7, per_shard=6)


@pytest.mark.parametrize(
    "batches_per_epoch,workers,persistent,steps",
    [(7, 0, False, 3), (7, 2, False, 3), (7, 2, True, 4),
     (None, 0, False, 3), (None, 2, False, 5), (None, 2, True, 13)],  # 13: after one worker ran out
)
def test_a_restored_loader_continues_exactly_where_training_stopped(uneven, batches_per_epoch, workers, persistent, steps):
    kwargs = {"batches_per_epoch": batches_per_epoch, "workers": workers, "persistent": persistent}
    uninterrupted = read_epochs(make_loader(uneven, **kwargs), EPOCHS)
    trained, state = train_then_save(make_loader(uneven, **kwargs), epochs=1, steps=steps)
    assert state["epoch"] == 1 and sum(state["batches_per_worker"]) == steps
    assert trained + resume(uneven, state, EPOCHS - 1, **kwargs) == uninterrupted


@pytest.mark.parametrize("batches_per_epoch", [7, None])
def test_a_state_saved_after_the_last_batch_of_an_epoch_points_at_the_next_epoch(shards, batches_per_epoch):
    loader = make_loader(shards, batches_per_epoch)
    batches = len(list(loader))
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    if batches_per_epoch is None:  # a single pass learns it ended when the fetcher reads past the end
        assert next(iterator, None) is None
    assert loader.state_dict() == {"epoch": 2, "batches_per_worker": [0], "next_worker": 0}


def test_a_different_worker_count_continues_after_as_many_batches_and_says_so(shards, caplog):
    trained, state = train_then_save(make_loader(shards, 8, workers=2), epochs=0, steps=5)
    loader = make_loader(shards, 8)
    with caplog.at_level(logging.WARNING):
        loader.load_state_dict(state)
    assert "2 loader workers and this run has 1" in caplog.text
    assert len(list(loader)) == 8 - 5, "the epoch keeps its length"


def test_loading_a_state_into_running_persistent_workers_fails_clearly(shards):
    loader = make_loader(shards, 7, workers=2, persistent=True)
    next(iter(loader))
    with pytest.raises(RuntimeError, match="before the loader's first iter"):
        loader.load_state_dict({"epoch": 0, "batches_per_worker": [1, 1], "next_worker": 0})
