"""Every input mode decodes to the right 8-bit RGB; unusable samples raise SkipSample."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from shard_helpers import jpeg_bytes, png_bytes

from ldm_train.data.decode import SkipSample, decode_image, find_image_bytes, read_field


def rgb(data: bytes) -> np.ndarray:
    image = decode_image(data)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey H×W or RGB H×W×3) written by hand: Pillow cannot write 48-bit RGB."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_grey_is_replicated_to_three_channels():
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    out = rgb(png_bytes(Image.fromarray(grey)))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_bilevel_image():
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    out = rgb(png_bytes(image))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_palette_is_expanded():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert rgb(png_bytes(image)).tolist() == [[[10, 20, 30], [200, 150, 100]]]


def test_palette_transparency_becomes_white():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    image.putpixel((1, 0), 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    assert rgb(buffer.getvalue()).tolist() == [[[255, 255, 255], [200, 150, 100]]]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_over_white(fmt):
    pixels = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 100, 0, 128]]], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, lossless=True)
    alpha = 128 / 255
    expected = [
        [255, 0, 0],
        [255, 255, 255],
        [round(255 * (1 - alpha)), round(100 * alpha + 255 * (1 - alpha)), round(255 * (1 - alpha))],
    ]
    np.testing.assert_allclose(rgb(buffer.getvalue())[0], expected, atol=1)


def test_grey_alpha_is_composited_over_white():
    pixels = np.array([[[0, 0], [50, 255]]], dtype=np.uint8)
    out = rgb(png_bytes(Image.fromarray(pixels, mode="LA")))
    assert out.tolist() == [[[255, 255, 255], [50, 50, 50]]]


def test_cmyk_jpeg_converts_to_rgb():
    # Flat 16×16 blocks: cyan, magenta at half, black, paper white.
    inks = [(255, 0, 0, 0), (0, 128, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)]
    image = Image.new("CMYK", (64, 16))
    for block, ink in enumerate(inks):
        image.paste(ink, (16 * block, 0, 16 * block + 16, 16))
    out = rgb(jpeg_bytes(image, quality=100))
    centres = [out[8, 16 * block + 8].tolist() for block in range(4)]
    np.testing.assert_allclose(centres, [[0, 255, 255], [255, 127, 255], [0, 0, 0], [255, 255, 255]], atol=4)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    # Pillow's own convert("RGB") would turn everything >= 256 into 255.
    levels = np.array([[0, 0x00FF, 0x0100, 0x8000, 0xFFFF]], dtype=np.uint16)
    out = rgb(png16(levels))
    for channel in range(3):
        assert out[0, :, channel].tolist() == [0, 0, 1, 128, 255]


def test_sixteen_bit_rgb_keeps_the_high_byte():
    pixels = np.array([[[0xFFFF, 0, 0x8000], [0x1234, 0x00FF, 0x7F80]]], dtype=np.uint16)
    assert rgb(png16(pixels)).tolist() == [[[255, 0, 128], [0x12, 0, 0x7F]]]


def test_exif_orientation_is_applied():
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red top-left in the stored (sensor) orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    out = rgb(buffer.getvalue())
    assert out.shape == (4, 2, 3)
    assert out[0, 1].tolist() == [255, 0, 0]  # top-left went to top-right


def test_draft_keeps_at_least_min_size():
    image = decode_image(jpeg_bytes(Image.new("RGB", (400, 300), (10, 200, 30))), min_size=64)
    assert min(image.size) >= 64 and image.size[0] < 400  # decoded at a reduced scale


@pytest.mark.parametrize(
    "data",
    [
        jpeg_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:300],  # truncated JPEG
        np.random.default_rng(0).bytes(500),  # random bytes
        b"",
    ],
    ids=["truncated-jpeg", "random-bytes", "empty"],
)
def test_undecodable_images_raise_skip(data):
    with pytest.raises(SkipSample, match="undecodable image"):
        decode_image(data)


def test_fields():
    sample = {"txt": b" a cat \n", "json": json.dumps({"caption": "a dog", "label": 3}).encode()}
    assert read_field(sample, "txt") == "a cat"
    assert read_field(sample, "json:caption") == "a dog"
    assert read_field(sample, "json:label") == 3
    with pytest.raises(SkipSample, match="no 'text' entry"):
        read_field(sample, "text")
    with pytest.raises(SkipSample, match="no field 'url'"):
        read_field(sample, "json:url")
    with pytest.raises(SkipSample, match="not UTF-8"):
        read_field({"txt": b"caf\xe9 \xff"}, "txt")
    with pytest.raises(SkipSample, match="invalid json"):
        read_field({"json": b"{not json"}, "json:caption")


def test_first_present_image_key_wins():
    assert find_image_bytes({"png": b"p", "webp": b"w"}) == b"p"
    assert find_image_bytes({"jpeg": b"j"}) == b"j"
    with pytest.raises(SkipSample, match="no image"):
        find_image_bytes({"txt": b"caption only"})
