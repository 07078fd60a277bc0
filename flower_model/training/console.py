"""What a training run prints when its output is a log, not a terminal (`dvc repro > log`, `dvc
queue logs`, CI): one line per epoch, a progress line at least every PROGRESS_INTERVAL_S inside a
long epoch, and none of Lightning's notices or upstream warnings a user cannot act on."""

import datetime
import logging
import time
import warnings

import lightning.pytorch as pl
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

PROGRESS_INTERVAL_S = 60.0  # the longest a log stays silent inside an epoch


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))  # 0:04:02


class EpochLines(Logger):
    """One line per epoch on stdout, for output that is not a terminal. Lightning's Rich bar
    redraws in place, so such a log got nothing until the run ended: a contended run printed
    nothing for 4 minutes. A logger, not a callback: the line needs the epoch's train loss, which
    the module logs after every callback's `on_train_epoch_end`; loggers receive the epoch's
    values together once they are computed."""

    def __init__(self, max_epochs: int, first_epoch: int = 0) -> None:
        super().__init__()
        self.max_epochs, self.first_epoch = max_epochs, first_epoch
        self.started = time.perf_counter()
        self.latest: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "epoch_lines"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.latest.update(metrics)
        if "train/epoch_loss" not in metrics or "epoch" not in metrics:
            return
        epoch = int(metrics["epoch"]) + 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(1, epoch - self.first_epoch) * (self.max_epochs - epoch)
        values = self.latest
        print(
            f"epoch {epoch}/{self.max_epochs}  train loss {values['train/epoch_loss']:.4f}  "
            f"val loss {values.get('val/loss', float('nan')):.4f}  "
            f"val acc {values.get('val/acc', float('nan')):.4f}  "
            f"{values.get('train/images_per_s', 0.0):.0f} images/s  "
            f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}",
            flush=True,
        )


class ProgressLines(pl.Callback):
    """A line at least every `interval_s` inside an epoch (training and validation batches), so a
    log shows a slow run is alive: under load the first epoch line came after 11 minutes."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.started = self.last = time.perf_counter()

    def _maybe_print(self, trainer: pl.Trainer, phase: str, batch_idx: int, total) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval_s or not trainer.is_global_zero:
            return
        self.last = now
        of = f"/{int(total)}" if isinstance(total, (int, float)) and total != float("inf") else ""
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        print(
            f"{epoch}  {phase} batch {batch_idx + 1}{of}  elapsed {_clock(now - self.started)}",
            flush=True,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_print(trainer, "train", batch_idx, trainer.num_training_batches)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        total = trainer.num_val_batches[dataloader_idx] if trainer.num_val_batches else None
        self._maybe_print(trainer, "validation", batch_idx, total)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.last = time.perf_counter()  # the epoch line follows: the interval restarts


def quiet_lightning_notices(resuming: bool = False) -> None:
    """Lightning's informational lines (GPU/TPU availability, the litlogger advert, checkpoint
    restore paths) go through these loggers; its warnings still show, except the upstream ones
    below, each matched by message and category. Our own train_start line names the device and
    the run instead."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",  # "Seed set to 42": the JSON events carry the seed
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning (<= 2.6.6, the newest) builds torch's LeafSpec() for every DataLoader it wraps;
    # torch >= 2.10 deprecates that class. Nothing in this project's code can avoid it.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # Lightning warns (a 339-character hint) wherever `srun` is installed but did not start the
    # process: a run on a Slurm host's login node or a local run beside a cluster. The Slurm
    # launcher starts its runs with srun, so this says nothing a user can act on.
    warnings.filterwarnings(
        "ignore",
        message=r"The `srun` command is available on your system but is not used",
        category=PossibleUserWarning,
    )
    if resuming:  # resume=last continues in the run's own checkpoint folder: not empty by design
        warnings.filterwarnings(
            "ignore",
            message=r"Checkpoint directory .* exists and is not empty",
            category=UserWarning,
        )
