"""Train the Fashion-MNIST classifier behind the generation-accuracy metric (once; about 10 CPU minutes).

    python scripts/train_classifier.py                 # -> ldm_train/metrics/weights/fashion_mnist_classifier.safetensors
    python scripts/train_classifier.py --epochs 6 --out /tmp/clf.safetensors

Reads the Debian package's idx files (`apt-get install dataset-fashion-mnist`), pads 28→32 with
background like the training shards, trains with random horizontal flips (the diffusion data
pipeline flips too, so generated shoes may point either way), logs the test accuracy and refuses to
save a classifier below `--min-accuracy`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch
import torch.nn.functional as F

from ldm_train.metrics.accuracy import class_accuracy
from ldm_train.metrics.classifier import (
    NUM_CLASSES,
    FashionClassifier,
    fashion_classifier_path,
    predict_classes,
    save_fashion_classifier,
)
from ldm_train.metrics.fashion_data import fashion_mnist_tensors, to_model_range

log = logging.getLogger("train_classifier")
FLIP_PROBABILITY = 0.5


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # B×C×H×W -> B×C×H×W
    flip = torch.rand(images.shape[0], generator=generator) < FLIP_PROBABILITY
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def train(
    model: FashionClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> None:
    """AdamW with a one-cycle learning rate (fast convergence in a few epochs; Smith & Topin 2019)."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(images) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        start, total_loss = time.perf_counter(), 0.0
        for index in torch.randperm(len(images), generator=generator).split(batch_size):
            batch = random_hflip(to_model_range(images[index]), generator)
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        log.info(
            "epoch %d/%d: loss %.4f (%.0f s)",
            epoch + 1,
            epochs,
            total_loss / steps_per_epoch,
            time.perf_counter() - start,
        )
    model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.91, help="refuse to save a weaker classifier")
    parser.add_argument("--out", default=None, help=f"output file (default {fashion_classifier_path()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    train_images, train_labels = fashion_mnist_tensors("train")
    test_images, test_labels = fashion_mnist_tensors("test")
    model = FashionClassifier()
    start = time.perf_counter()
    train(
        model, train_images, train_labels, args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed
    )
    minutes = (time.perf_counter() - start) / 60
    scores = class_accuracy(predict_classes(model, to_model_range(test_images)), test_labels, NUM_CLASSES)
    log.info(
        "test accuracy %.4f after %d epochs (%.1f min on %d threads)",
        scores["accuracy"],
        args.epochs,
        minutes,
        torch.get_num_threads(),
    )
    log.info("per class: %s", ", ".join(f"{a:.3f}" for a in scores["per_class"]))
    if scores["accuracy"] < args.min_accuracy:
        log.error(
            "test accuracy %.4f < --min-accuracy %.2f: not saved; train longer (--epochs)",
            scores["accuracy"],
            args.min_accuracy,
        )
        return 1
    log.info("saved %s", save_fashion_classifier(model, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
