"""Log how many samples the data stream skipped (corrupt images, missing images, bad captions).

Workers are separate processes, so the count reaches the training loop inside each batch
(`batch["skipped"]`: samples dropped since that worker's previous batch); this callback sums it.
"""

import lightning as L
import torch


class SkippedSamplesLogger(L.Callback):
    """Logs the running total of skipped training samples, summed over all ranks, as `data/skipped`,
    and the skips of each validation pass as `data/val_skipped`.

    The training total is all-reduced every step (every rank runs the same number of steps), so it is
    identical on all ranks and survives checkpoint/resume through `state_dict`. Validation batch counts
    may differ per rank, so validation is reduced once, at the end of the pass.
    """

    def __init__(
        self, batch_key: str = "skipped", name: str = "data/skipped", val_name: str = "data/val_skipped"
    ):
        self.batch_key, self.name, self.val_name = batch_key, name, val_name
        self.total = 0
        self._val_skipped = 0

    def _reduced(self, trainer: L.Trainer, pl_module: L.LightningModule, count: int) -> int:
        summed = trainer.strategy.reduce(torch.tensor(count, device=pl_module.device), reduce_op="sum")
        return int(summed)

    def _count(self, batch) -> int:  # batches of other data modules may carry no count (or be no dict)
        return int(batch.get(self.batch_key, 0)) if isinstance(batch, dict) else 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.total += self._reduced(trainer, pl_module, self._count(batch))
        pl_module.log(self.name, float(self.total), on_step=True, on_epoch=False)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_skipped = 0

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._val_skipped += self._count(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        total = self._reduced(trainer, pl_module, self._val_skipped)
        pl_module.log(self.val_name, float(total), on_step=False, on_epoch=True)

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = int(state_dict["total"])
