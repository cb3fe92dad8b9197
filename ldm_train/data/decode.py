"""Turn one raw webdataset sample (a dict of bytes per extension) into an RGB image and a caption.

Anything that cannot be turned into a usable training example raises `SkipSample` with a short
reason; the stream counts it and moves on, so a single bad sample never ends a run.
"""

import io
import json
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# Transparent pixels are composited onto white: the usual choice for product / web images, where a
# transparent background is meant to look like the (white) page it was shown on.
BACKGROUND_RGB = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_HIGH_BYTE_SHIFT = 8  # 16-bit -> 8-bit keeps the high byte, as Pillow does for 48-bit RGB PNGs
_JSON_PREFIX = "json:"


class SkipSample(Exception):
    """Raised for a sample that must be skipped; the message is the reason that gets counted."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: grey replicated, palette expanded, alpha over white, CMYK
    converted, 16-bit scaled (Pillow's own `convert("RGB")` clips 16-bit values at 255)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = (np.asarray(image).astype(np.uint32) >> _HIGH_BYTE_SHIFT).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Encoded bytes -> RGB PIL image with EXIF orientation applied.

    `min_size` lets JPEG decoding run at a reduced scale (libjpeg's DCT scaling) while keeping
    both sides >= min_size, which makes small-resolution training much cheaper on large photos.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns (instead of failing) on some corrupt EXIF / ICC blocks; the pixels are fine.
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            if min_size is not None:
                image.draft(image.mode, (min_size, min_size))
            image.load()  # forces the full decode here, so a truncated file fails inside this try
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    # Pillow raises many exception types on malformed files (OSError, SyntaxError, struct.error,
    # IndexError, DecompressionBombError, ...); every one of them means "this sample is unusable".
    except Exception as error:
        raise SkipSample(f"undecodable image ({type(error).__name__}: {error})") from error


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SkipSample(f"{what} is not UTF-8") from error


def read_field(sample: dict, key: str):
    """`key` is an extension ("txt") or "json:<field>"; returns str for text, the JSON value otherwise."""
    if key.startswith(_JSON_PREFIX):
        field = key[len(_JSON_PREFIX) :]
        if "json" not in sample:
            raise SkipSample(f"no json for {key!r}")
        try:
            record = json.loads(_text(sample["json"], "json"))
        except json.JSONDecodeError as error:
            raise SkipSample("invalid json") from error
        if not isinstance(record, dict) or field not in record:
            raise SkipSample(f"json has no field {field!r}")
        return record[field]
    if key not in sample:
        raise SkipSample(f"no {key!r} entry")
    return _text(sample[key], key).strip()


def find_image_bytes(sample: dict, image_keys: tuple[str, ...] = IMAGE_KEYS) -> bytes:
    for key in image_keys:
        if key in sample:
            return sample[key]
    raise SkipSample(f"no image (looked for {', '.join(image_keys)})")
