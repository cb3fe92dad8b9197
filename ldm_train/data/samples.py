"""Raw webdataset sample -> training example {"image", "caption"[, "label"]}, and batch collation."""

import numpy as np
import torch

from ldm_train.data.decode import IMAGE_KEYS, SkipSample, decode_image, find_image_bytes, read_field
from ldm_train.data.transforms import ResizeCrop


class SampleDecoder:
    """Decodes and transforms one sample; raises `SkipSample` for anything unusable.

    caption_key: "txt" (an extension) or "json:<field>"; None gives an empty caption (phase 1 does
    not need text). label_key: optional integer class label, e.g. "json:label" (evaluation uses it).
    """

    def __init__(
        self,
        transform: ResizeCrop,
        caption_key: str | None = "txt",
        label_key: str | None = None,
        image_keys: tuple[str, ...] = IMAGE_KEYS,
    ):
        self.transform = transform
        self.caption_key = caption_key
        self.label_key = label_key
        self.image_keys = tuple(image_keys)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        # Text first: it is cheap, and a sample with a bad caption should not cost an image decode.
        caption = "" if self.caption_key is None else read_field(sample, self.caption_key)
        if not isinstance(caption, str):
            raise SkipSample(f"caption {self.caption_key!r} is {type(caption).__name__}, not text")
        example = {"caption": caption}
        if self.label_key is not None:
            label = read_field(sample, self.label_key)
            if isinstance(label, str) and label.lstrip("-").isdigit():
                label = int(label)
            if not isinstance(label, int) or isinstance(label, bool):
                raise SkipSample(f"label {self.label_key!r} is not an integer: {label!r}")
            example["label"] = label
        image = decode_image(find_image_bytes(sample, self.image_keys), min_size=self.transform.resolution)
        example["image"] = self.transform(image, rng)
        return example


def collate(examples: list[dict], skipped: int) -> dict:
    """Examples -> {"image": B×3×H×W, "caption": [str], "skipped": int[, "label": B]}.

    `skipped` travels with the batch because workers are separate processes: it is the number of
    samples this worker dropped since its previous batch, summed up in the training loop.
    """
    batch = {
        "image": torch.stack([example["image"] for example in examples]),
        "caption": [example["caption"] for example in examples],
        "skipped": skipped,
    }
    if "label" in examples[0]:
        batch["label"] = torch.tensor([example["label"] for example in examples], dtype=torch.long)
    return batch
