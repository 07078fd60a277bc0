"""Training callbacks and loggers: step timing (data-wait share), the CSV logger behind
`dvc plots`, and the JSON event log (the console lines: console.py)."""

import csv
import json
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, WeightAveraging
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch.optim.swa_utils import get_ema_multi_avg_fn

from flower_model.io_utils import csv_text, write_text

STEP_KEYS = ("train/loss", "lr")
EPOCH_KEYS = ("train/epoch_loss", "train/acc", "val/loss", "val/acc", "val/f1")
STEPS_FILE = "steps.csv"
EPOCHS_FILE = "epochs.csv"
EVENTS_FILE = "train_events.jsonl"  # in models_dir: ignored by git, not a DVC out
EVENTS_VARIABLE = "FLOWER_MODEL_EVENTS"  # `stderr`: the JSON event lines on stderr as well


def weight_averaging(ema_decay: float, on_gpu: bool) -> list[pl.Callback]:
    """Lightning's EMA of the weights, updated after every optimiser step; [] when `ema_decay` is 0.

    Validation, the checkpoints (their `state_dict`) and so export and evaluate all see the average.
    The average lives on the training device: Lightning's default is the module's device when the
    callback is set up, before the model moves to the GPU, so on a GPU it would copy every weight
    to the CPU after each step. "cuda" is each DDP rank's own device (Lightning selects it first).
    """
    if ema_decay == 0:
        return []
    device = "cuda" if on_gpu else None
    return [WeightAveraging(device=device, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))]


class EarlyStoppingFrom(EarlyStopping):
    """Early stopping whose patience starts counting at `first_epoch`.

    Under progressive resizing the first epochs train on small crops while validation runs at
    the full size, so the monitored metric stalls until the crops grow; plain early stopping
    ended such a run at epoch 19 of 64 (test accuracy 0.68). Counting starts once training sees
    the size it is judged at.
    """

    def __init__(self, first_epoch: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.first_epoch = first_epoch

    # Lightning's two public hooks that run the check (which one acts depends on
    # check_on_train_epoch_end); gating both keeps to the public API.
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super().on_validation_end(trainer, pl_module)


class StepTimer(pl.Callback):
    """Times each optimisation step and the wait for its batch; logs step and epoch figures."""

    def __init__(self) -> None:
        self.totals = {"wait_s": 0.0, "compute_s": 0.0, "images": 0, "epoch_s": 0.0}
        self._last_end = self._batch_start = self._epoch_start = 0.0
        self._epoch_wait = self._epoch_compute = 0.0
        self._epoch_images = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last_end = time.perf_counter()
        self._epoch_wait = self._epoch_compute = 0.0
        self._epoch_images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()
        self._epoch_wait += self._batch_start - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_end = time.perf_counter()
        step = self._last_end - self._batch_start
        self._epoch_compute += step
        self._epoch_images += len(batch[1])
        pl_module.log("train/step_time", step, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        busy = self._epoch_wait + self._epoch_compute
        epoch_s = time.perf_counter() - self._epoch_start
        self.totals["wait_s"] += self._epoch_wait
        self.totals["compute_s"] += self._epoch_compute
        self.totals["images"] += self._epoch_images
        self.totals["epoch_s"] += epoch_s
        pl_module.log_dict(
            {
                "time/epoch_s": epoch_s,
                "train/data_wait_share": self._epoch_wait / busy if busy else 0.0,
                "train/images_per_s": self._epoch_images / busy if busy else 0.0,
            }
        )

    def summary(self) -> dict[str, float]:
        busy = self.totals["wait_s"] + self.totals["compute_s"]
        return {
            "data_wait_share": self.totals["wait_s"] / busy if busy else 0.0,
            "train_images_per_s": self.totals["images"] / busy if busy else 0.0,
            "train_epoch_seconds_total": self.totals["epoch_s"],
        }


def _read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


class DvcPlotsLogger(Logger):
    """Writes deterministic metrics only (no timings) as two dense CSVs that `dvc plots` draws.

    On resume, the rows up to the resumed step are kept, so the curves cover the whole run.
    """

    def __init__(self, directory: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.directory = directory
        self.frozen = False  # set after fit: the best-checkpoint validate/test must not add rows
        self.steps: dict[int, dict[str, float]] = {}
        self.epochs: dict[int, dict[str, float]] = {}
        if resume_step is not None:
            for row in _read_rows(directory / STEPS_FILE):
                if int(row["step"]) <= resume_step:
                    self.steps[int(row["step"])] = {
                        key: float(row[key]) for key in STEP_KEYS if row[key]
                    }
            for row in _read_rows(directory / EPOCHS_FILE):
                if int(row["step"]) <= resume_step:
                    values = {key: float(row[key]) for key in EPOCH_KEYS if row[key]}
                    self.epochs[int(row["epoch"])] = {"step": int(row["step"]), **values}

    @property
    def name(self) -> str:
        return "dvc_plots"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the resolved config is written beside the outs instead

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.frozen:
            return
        step = int(step or 0)
        for key in STEP_KEYS:
            if key in metrics:
                self.steps.setdefault(step, {})[key] = float(metrics[key])
        if "epoch" in metrics and any(key in metrics for key in EPOCH_KEYS):
            row = self.epochs.setdefault(int(metrics["epoch"]), {})
            row["step"] = step
            row.update({key: float(metrics[key]) for key in EPOCH_KEYS if key in metrics})

    @rank_zero_only
    def save(self) -> None:
        step_rows = [
            [step] + [values.get(key, "") for key in STEP_KEYS]
            for step, values in sorted(self.steps.items())
        ]
        epoch_rows = [
            [epoch, values.get("step", "")] + [values.get(key, "") for key in EPOCH_KEYS]
            for epoch, values in sorted(self.epochs.items())
        ]
        write_text(self.directory / STEPS_FILE, csv_text(["step", *STEP_KEYS], step_rows))
        write_text(
            self.directory / EPOCHS_FILE, csv_text(["epoch", "step", *EPOCH_KEYS], epoch_rows)
        )

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


class EventLog:
    """Machine-readable progress and failures (train_start, train_failed, mlflow_lost, train_done):
    one JSON object a line, appended to `path`; each line names its run. The ~600-character lines
    used to go to stderr, in the middle of the human output; now the console says once where they
    are, and FLOWER_MODEL_EVENTS=stderr also prints them there."""

    def __init__(self, path: Path, shown_as: str) -> None:
        self.path, self.shown_as = path, shown_as
        self.announced = False

    def __call__(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(line + "\n")  # one append per line: DDP ranks' lines do not interleave
        if os.environ.get(EVENTS_VARIABLE) == "stderr":
            print(line, file=sys.stderr, flush=True)
        elif not self.announced and rank_zero_only.rank == 0:
            also = f"{EVENTS_VARIABLE}=stderr prints them too"
            print(f"train: JSON events go to {self.shown_as} ({also})", flush=True)
        self.announced = True
