"""Reader for the IDX format of (Fashion-)MNIST: big-endian header, then the raw array."""

import gzip
from pathlib import Path

import numpy as np

_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type (Fashion-)MNIST uses
_HEADER_BYTES = 4
_DIM_BYTES = 4


def read_idx(path: str | Path) -> np.ndarray:
    """A .idx or .idx.gz file -> uint8 array (N for labels, N×H×W for images)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < _HEADER_BYTES or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file (bad magic number): re-download or reinstall the dataset"
        )
    if data[2] != _UBYTE:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x} is not supported (only unsigned bytes)")
    ndim = data[3]
    dims_end = _HEADER_BYTES + _DIM_BYTES * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[_HEADER_BYTES:dims_end], dtype=">u4"))
    expected = dims_end + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path}: {len(data)} bytes, the header promises {expected} (truncated?): reinstall the dataset"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=dims_end).reshape(shape)
