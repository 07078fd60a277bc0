"""The training console when its output is a log: progress inside a long epoch, and Lightning's
upstream warnings silenced narrowly (each by message and category, nothing else)."""

import contextlib
import io
import os
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from flower_model.training.console import ProgressLines, quiet_lightning_notices

BATCHES, EPOCHS = 4, 2
PROGRESS_LINE = re.compile(
    r"^epoch (\d)/2  (train|validation) batch (\d)/4  elapsed \d+:\d\d:\d\d$"
)


class Linear(pl.LightningModule):
    """The smallest module Lightning trains: one linear layer on random numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(BATCHES * 2, 2)), batch_size=2)


def _fit(callback: pl.Callback, epochs: int, folder) -> str:
    """What `callback` prints while Linear trains for `epochs` (no sanity validation, as the
    train stage runs)."""
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
        accelerator="cpu",
    )
    output = io.StringIO()
    with contextlib.redirect_stdout(output), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notices about this toy setup
        trainer.fit(Linear(), _loader(), _loader())
    return output.getvalue()


def test_progress_lines_come_inside_epochs_at_the_interval(tmp_path):
    """Interval 0: a line after every training and validation batch (60 s in a real run)."""
    output = _fit(ProgressLines(interval_s=0.0), EPOCHS, tmp_path)
    found = [PROGRESS_LINE.match(line).groups() for line in output.splitlines()]
    expected = [
        (str(epoch), phase, str(batch))
        for epoch in range(1, EPOCHS + 1)
        for phase in ("train", "validation")
        for batch in range(1, BATCHES + 1)
    ]
    assert sorted(found) == sorted(expected)


def test_a_long_interval_prints_nothing_in_a_short_epoch(tmp_path):
    assert _fit(ProgressLines(), 1, tmp_path) == ""


@pytest.mark.parametrize("resuming", [False, True])
def test_lightning_upstream_warnings_are_silenced_and_nothing_else(tmp_path, monkeypatch, resuming):
    """Lightning's own code warns here: a `srun` on PATH that did not start the process, and a
    checkpoint folder that is not empty (silenced only when resuming, where it is by design)."""
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning_notices(resuming=resuming)
        SLURMEnvironment._validate_srun_used()
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints")
        checkpoint._ModelCheckpoint__warn_if_dir_not_empty(checkpoint.dirpath)  # Lightning's
        warnings.warn("a warning of our own", UserWarning)
    messages = [str(item.message) for item in caught]
    assert not any("srun" in message for message in messages), messages
    assert any("exists and is not empty" in message for message in messages) is not resuming
    assert "a warning of our own" in messages
