"""Fixtures of the data tests (helpers live in shard_helpers.py, importable from the tests)."""

import pytest
from shard_helpers import write_shards


@pytest.fixture
def shards(tmp_path) -> str:
    """8 shards × 6 samples = 48 good samples."""
    return write_shards(tmp_path / "shards", num_shards=8, per_shard=6)
