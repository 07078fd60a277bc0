"""Checkpoint callbacks (best, last, periodic), early stopping, and the shipped best checkpoint
(`models/model.ckpt`, with project-relative paths so the DVC out is the same on any machine)."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from flower_model.config import Config
from flower_model.data.datamodule import first_full_size_epoch
from flower_model.io_utils import atomic_path, load_checkpoint
from flower_model.training.callbacks import EarlyStoppingFrom
from flower_model.training.resume import LAST


class LatestCheckpoint(ModelCheckpoint):
    """last.ckpt after every epoch. Lightning's `save_last` only writes when a top-k file is
    written, but `resume=last` needs the latest state, improved or not."""

    @property
    def state_key(self) -> str:
        return "latest_checkpoint"  # distinct from the periodic callback's key (same settings)


def checkpoint_callbacks(
    config: Config, checkpoints: Path, image_size: int
) -> tuple[ModelCheckpoint, list[pl.Callback]]:
    """(the best-checkpoint callback, every checkpointing and stopping callback)."""
    train = config.train
    metric = train.checkpoint.monitor
    metric_name = metric.replace("/", "_")
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename=f"best-epoch{{epoch:03d}}-step{{step:06d}}-{metric_name}{{{metric}:.4f}}",
        monitor=metric,
        mode=train.checkpoint.mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    last = LatestCheckpoint(
        dirpath=checkpoints, filename=LAST, save_top_k=1, enable_version_counter=False
    )
    periodic = ModelCheckpoint(
        dirpath=checkpoints,
        filename="periodic-epoch{epoch:03d}-step{step:06d}",
        every_n_epochs=train.checkpoint.every_n_epochs,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    # No LearningRateMonitor: the module logs `lr` itself (MLflow had it twice).
    callbacks: list[pl.Callback] = [best, last, periodic]
    if train.early_stopping.enabled:
        callbacks.append(
            EarlyStoppingFrom(
                first_full_size_epoch(train.max_epochs, image_size, train.augment),
                monitor=metric,
                patience=train.early_stopping.patience,
                mode=train.checkpoint.mode,
            )
        )
    return best, callbacks


def relative_paths(value, root: Path):
    """Checkpoint callback states hold absolute paths; make them relative to the project root."""
    if isinstance(value, str) and value.startswith(str(root)):
        return str(Path(value).relative_to(root))
    if isinstance(value, dict):
        return {
            relative_paths(key, root): relative_paths(item, root) for key, item in value.items()
        }
    if isinstance(value, list):
        return [relative_paths(item, root) for item in value]
    return value


def ship_best(best_path: Path, target: Path, root: Path) -> dict:
    """Copy the best checkpoint to `target` with project-relative paths; return its state."""
    state = load_checkpoint(best_path, weights_only=False)
    with atomic_path(target) as tmp:
        torch.save(relative_paths(state, root.resolve()), tmp)
    return state
