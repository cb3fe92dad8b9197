"""ShardStream: disjoint split over ranks × workers, new order every epoch, fixed epoch length,
bad samples skipped and counted; a duplicated member or a damaged header costs only its sample."""

import tarfile

import pytest
from PIL import Image
from shard_helpers import all_captions, good_sample, jpeg_bytes, sample_members, write_shards, write_tar

from ldm_train.data import stream as stream_module
from ldm_train.data.samples import SampleDecoder
from ldm_train.data.shardlist import expand_shards
from ldm_train.data.stream import BrokenStreamError, EpochLoader, ShardStream
from ldm_train.data.transforms import ResizeCrop


def make_stream(pattern: str, batch_size: int = 4, **kwargs) -> ShardStream:
    decoder = SampleDecoder(ResizeCrop(8, hflip=True))
    return ShardStream(expand_shards(pattern), decoder, batch_size, **kwargs)


def epoch_captions(loader) -> list[str]:
    return [caption for batch in loader for caption in batch["caption"]]


def test_two_ranks_two_workers_read_every_sample_exactly_once(shards):
    per_rank = []
    for rank in range(2):
        stream = make_stream(shards, rank=rank, world_size=2, shuffle=True, shuffle_buffer=5, seed=7)
        per_rank.append(epoch_captions(EpochLoader(stream, num_workers=2)))
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)), "a sample was read twice"
    assert set(seen) == all_captions(8, 6), "a sample was lost"
    assert set(per_rank[0]).isdisjoint(per_rank[1])


@pytest.mark.parametrize("persistent", [True, False])
def test_every_epoch_has_a_new_order(shards, persistent):
    def three_epochs():
        stream = make_stream(shards, shuffle=True, shuffle_buffer=5, seed=3)
        loader = EpochLoader(stream, num_workers=2, persistent_workers=persistent)
        return [epoch_captions(loader) for _ in range(3)]

    epochs = three_epochs()
    for order in epochs:
        assert sorted(order) == sorted(all_captions(8, 6))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    # shard order changes too, not only the mixing inside the buffer
    assert [c.split("-")[0] for c in epochs[0][:6]] != [c.split("-")[0] for c in epochs[1][:6]]
    assert three_epochs() == epochs, "same seed, same epochs: the stream is reproducible"


def test_fixed_epoch_length_gives_every_rank_the_same_batch_count(tmp_path):
    # 5 shards over 2 ranks: rank 0 owns 3, rank 1 owns 2, yet both must run 7 steps.
    pattern = write_shards(tmp_path, num_shards=5, per_shard=6)
    for rank in range(2):
        stream = make_stream(
            pattern, batch_size=4, rank=rank, world_size=2, shuffle=True, batches_per_epoch=7
        )
        loader = EpochLoader(stream, num_workers=2)
        assert len(loader) == 7
        for _ in range(2):
            batches = list(loader)
            assert len(batches) == 7 and all(len(b["caption"]) == 4 for b in batches)


def test_fixed_length_ranks_stay_disjoint_within_an_epoch(tmp_path):
    pattern = write_shards(tmp_path, num_shards=4, per_shard=5)
    shards_of = []
    for rank in range(2):
        stream = make_stream(pattern, rank=rank, world_size=2, shuffle=True, batches_per_epoch=6, seed=1)
        shards_of.append({c.split("-")[0] for c in epoch_captions(EpochLoader(stream, num_workers=1))})
    assert shards_of[0].isdisjoint(shards_of[1]) and len(shards_of[0] | shards_of[1]) == 4


def test_resampled_stream_is_endless_with_fixed_length(shards):
    stream = make_stream(shards, batch_size=5, resampled=True, batches_per_epoch=30, seed=2)
    batches = list(EpochLoader(stream))
    assert len(batches) == 30
    assert len(epoch_captions(batches)) == 150 > 48  # more than one pass: samples repeat


def test_bad_samples_are_skipped_and_counted(tmp_path):
    jpeg = jpeg_bytes(Image.new("RGB", (32, 32), (200, 10, 10)))
    bad = {
        0: [{"__key__": "truncated", "jpg": jpeg[: len(jpeg) // 2], "txt": b"truncated jpeg"}],
        1: [{"__key__": "noise", "jpg": bytes(range(256)) * 4, "txt": b"random bytes"}],
        2: [{"__key__": "noimage", "txt": b"caption without image"}],
        3: [{**good_sample(3, 99), "__key__": "latin1", "txt": "caf\xe9".encode("latin-1")}],
    }
    pattern = write_shards(tmp_path, num_shards=4, per_shard=3, bad=bad)
    for workers in (0, 2):
        batches = list(EpochLoader(make_stream(pattern, batch_size=2), num_workers=workers))
        assert sorted(epoch_captions(batches)) == sorted(all_captions(4, 3))
        assert sum(b["skipped"] for b in batches) == 4


def test_skips_after_the_last_good_sample_are_still_counted(tmp_path):
    bad = {0: [{"__key__": f"x{i}", "txt": b"no image"} for i in range(3)]}
    pattern = write_shards(tmp_path, num_shards=1, per_shard=0, bad=bad)
    (tmp_path / "shard-000001.tar").write_bytes((tmp_path / "shard-000000.tar").read_bytes())
    good = write_shards(tmp_path / "good", num_shards=1, per_shard=4)
    stream = make_stream(f"{good}::{pattern}", batch_size=2)  # good shard first, bad tail last
    assert sum(b["skipped"] for b in EpochLoader(stream)) == 3


def test_damaged_and_unreadable_shards_count_and_the_stream_goes_on(tmp_path):
    pattern = write_shards(tmp_path, num_shards=3, per_shard=4)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1700])  # cut inside the caption of its first sample
    urls = expand_shards(pattern) + [
        "pipe:cat /nonexistent/shard.tar",
        f"pipe:cat {tmp_path / 'shard-000002.tar'}",
    ]
    stream = ShardStream(urls, SampleDecoder(ResizeCrop(8)), batch_size=3)
    batches = list(EpochLoader(stream))
    captions = epoch_captions(batches)
    assert all_captions(1, 4) <= set(captions) and {f"s2-{i}" for i in range(4)} <= set(captions)
    assert captions.count("s2-0") == 2  # once from the file, once through the pipe: URL
    # the damaged shard's first sample (image but no caption; nothing after it is in the file) and
    # the failing pipe: one count each
    assert sum(b["skipped"] for b in batches) == 2


def forty_samples() -> list[list[tuple[str, bytes]]]:
    return [sample_members(good_sample(0, index)) for index in range(40)]


def read_all(path) -> tuple[list[str], int]:
    batches = list(EpochLoader(make_stream(str(path), batch_size=4)))
    return epoch_captions(batches), sum(b["skipped"] for b in batches)


def test_a_duplicated_member_costs_exactly_its_sample(tmp_path):
    samples = forty_samples()
    samples[10].append(samples[10][0])  # s0i10.png a second time, inside its sample
    captions, skipped = read_all(write_tar(tmp_path / "shard.tar", [m for s in samples for m in s]))
    assert sorted(captions) == sorted(all_captions(1, 40) - {"s0-10"}) and len(captions) == 39
    assert skipped == 1


def test_a_damaged_header_costs_only_the_sample_it_hit(tmp_path):
    path = write_tar(tmp_path / "shard.tar", [m for s in forty_samples() for m in s])
    with tarfile.open(path) as tar:
        offset = tar.getmember("s0i20.txt").offset  # its header block
    data = bytearray(path.read_bytes())
    data[offset : offset + 512] = bytes(range(256)) * 2  # overwritten: not a header any more
    path.write_bytes(bytes(data))
    captions, skipped = read_all(path)
    assert sorted(captions) == sorted(all_captions(1, 40) - {"s0-20"}), "samples after the damage were lost"
    assert skipped == 1  # s0i20 reached the decoder without its caption


def test_long_member_names_are_read(tmp_path):
    key = "d" * 120 + "/s0i0"  # beyond the 100 bytes of a ustar name: a PAX or GNU header carries it
    members = [(f"{key}.png", sample_members(good_sample(0, 0))[0][1]), (f"{key}.txt", b"long")]
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        captions, skipped = read_all(write_tar(tmp_path / f"shard{tar_format}.tar", members, tar_format))
        assert (captions, skipped) == (["long"], 0)


def test_endless_stream_of_only_bad_data_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_module, "MAX_CONSECUTIVE_SKIPS", 5)
    bad = {0: [{"__key__": f"x{i}", "txt": b"no image"} for i in range(3)]}
    pattern = write_shards(tmp_path, num_shards=1, per_shard=0, bad=bad)
    with pytest.raises(BrokenStreamError, match="in a row were unusable"):
        list(EpochLoader(make_stream(pattern, batches_per_epoch=2)))


def test_endless_stream_of_empty_shards_fails_loudly(tmp_path):
    pattern = write_shards(tmp_path, num_shards=2, per_shard=0)
    with pytest.raises(BrokenStreamError, match="gave no samples"):
        list(EpochLoader(make_stream(pattern, batches_per_epoch=2)))


def test_too_few_shards_for_a_disjoint_endless_split(tmp_path):
    pattern = write_shards(tmp_path, num_shards=1, per_shard=4)
    with pytest.raises(BrokenStreamError, match="resampled=True"):
        list(EpochLoader(make_stream(pattern, rank=1, world_size=2, batches_per_epoch=2)))


def test_single_pass_has_no_length_and_bad_arguments_are_rejected(shards):
    with pytest.raises(TypeError):
        len(make_stream(shards))
    with pytest.raises(ValueError, match="rank 2"):
        make_stream(shards, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        make_stream(shards, resampled=True)
