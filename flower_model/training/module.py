"""LightningModule: any registered model, uint8 batches in, metrics and schedules from config."""

import math
import random

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from flower_model.config import ModelConfig, TrainConfig
from flower_model.constants import IMAGENET_MEAN, IMAGENET_STD, UINT8_MAX
from flower_model.data.datamodule import augment_batch, augment_generator, train_crop_size
from flower_model.models.registry import create_model

ONE_CYCLE_DIV_FACTOR = 25.0  # start lr = peak / 25 (PyTorch's default)
ONE_CYCLE_FINAL_DIV = 1e4  # end lr = start / 1e4 (PyTorch's default)
# OneCycleLR divides by each phase's length minus one step, so it needs 2+ steps of warm-up and
# of decay; shorter schedules (smoke runs, warmup_epochs=0) use warm-up + cosine instead.
ONE_CYCLE_MIN_PHASE_STEPS = 2


def normalise(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool) -> Tensor:
    """uint8 (or float 0..255) NCHW -> normalised float NCHW; the arithmetic of the ONNX graph."""
    floats = (images.float() - mean) / std
    return floats.contiguous(memory_format=torch.channels_last) if channels_last else floats


class FlowerClassifier(pl.LightningModule):
    def __init__(self, model: dict, train: dict, class_names: list[str], steps_per_epoch: int):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = ModelConfig(**model)
        self.train_config = TrainConfig(**train)
        self.class_names = class_names
        num_classes = len(class_names)
        self.net = create_model(self.model_config, num_classes)
        if self.train_config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        scale = float(UINT8_MAX)
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1) * scale, persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1) * scale, persistent=False
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.train_config.label_smoothing)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": metric
                for split in ("train", "val", "test")
                for name, metric in (
                    ("acc", MulticlassAccuracy(num_classes, average="micro")),
                    ("f1", MulticlassF1Score(num_classes, average="macro")),
                    ("loss", MeanMetric()),
                )
            }
        )
        # Filled by the training script before fit; saved into every checkpoint.
        self.run_info: dict = {}

    def forward(self, images: Tensor) -> Tensor:
        return self.net(normalise(images, self.mean, self.std, self.train_config.channels_last))

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int):
        if self._trainer is None or not self._trainer.training:
            return batch
        images, labels = batch
        config = self.train_config
        generator = augment_generator(config.seed, self.global_step, self.global_rank)
        size = train_crop_size(
            self.current_epoch, config.max_epochs, images.shape[-1], config.augment
        )
        return augment_batch(images, config.augment, generator, size), labels

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        predictions = logits.argmax(dim=1)
        for name in ("acc", "f1"):
            self.metrics[f"{split}_{name}"].update(predictions, labels)
        self.metrics[f"{split}_loss"].update(loss.detach(), weight=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, split: str) -> None:
        values = {
            f"{split}/{name}": self.metrics[f"{split}_{name}"].compute()
            for name in ("loss", "acc", "f1")
        }
        self.log_dict(values, prog_bar=split == "val", sync_dist=True)
        for name in ("loss", "acc", "f1"):
            self.metrics[f"{split}_{name}"].reset()

    def on_train_epoch_end(self) -> None:
        values = {
            f"train/epoch_{name}": self.metrics[f"train_{name}"].compute()
            for name in ("loss", "acc")
        }
        values["train/acc"] = values["train/epoch_acc"]
        self.log_dict(values, sync_dist=True)
        for name in ("loss", "acc", "f1"):
            self.metrics[f"train_{name}"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        config = self.train_config
        decay = [param for param in self.net.parameters() if param.ndim > 1]
        no_decay = [param for param in self.net.parameters() if param.ndim <= 1]  # norms, biases
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if config.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
        else:
            optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=config.momentum, nesterov=True
            )
        total = config.max_epochs * self.hparams.steps_per_epoch
        warmup = config.warmup_epochs * self.hparams.steps_per_epoch
        one_cycle_fits = min(warmup, total - warmup) >= ONE_CYCLE_MIN_PHASE_STEPS
        if config.scheduler == "onecycle" and one_cycle_fits:
            scheduler = OneCycleLR(
                optimizer,
                max_lr=config.lr,
                total_steps=total,
                pct_start=warmup / total,
                div_factor=ONE_CYCLE_DIV_FACTOR,
                final_div_factor=ONE_CYCLE_FINAL_DIV,
            )
        else:

            def warmup_cosine(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = (step - warmup) / max(1, total - warmup)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

            scheduler = LambdaLR(optimizer, warmup_cosine)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.update(self.run_info)
        # Global RNG (dropout) state, so a resumed run continues the same random stream.
        # Stored as tensors and plain tuples so `torch.load(weights_only=True)` still reads it.
        kind, keys, position, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            kind, keys, position, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
            random.setstate(states["python"])
