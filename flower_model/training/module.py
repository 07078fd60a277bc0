"""LightningModule: any registered model, uint8 batches in, metrics and schedules from config."""

import math
import random

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from flower_model.config import TrainConfig
from flower_model.data.datamodule import train_crop_size
from flower_model.models import registry
from flower_model.models.classifier import normalise, pixel_tensor

ONE_CYCLE_DIV_FACTOR = 25.0  # start lr = peak / 25 (PyTorch's default)
ONE_CYCLE_FINAL_DIV = 1e4  # end lr = start / 1e4 (PyTorch's default)
# OneCycleLR divides by each phase's length minus one step, so it needs 2+ steps of warm-up and
# of decay; shorter schedules (smoke runs, warmup_epochs=0) use warm-up + cosine instead.
ONE_CYCLE_MIN_PHASE_STEPS = 2


def zero_head(net: nn.Module) -> None:
    """Start the new classifier at zero (`train.zero_head`, as BiT's transfer recipe does): every
    class equally likely, so the first loss is ln(classes), the pretrained layers get no random
    gradients, and a linear probe starts from a neutral head. timm's Google-style init draws the
    head's weights from +-1/sqrt(classes), +-0.45 for 5 classes: on Lite0's 1280 features the
    first loss was 6.6 (ln 5 = 1.61) and a probe could not shrink it (docs/training.md)."""
    for param in registry.head_module(net).parameters():
        nn.init.zeros_(param)


class FlowerClassifier(pl.LightningModule):
    def __init__(self, model: dict, train: dict, class_names: list[str], steps_per_epoch: int):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = registry.model_config(model)
        self.train_config = TrainConfig(**train)
        self.class_names = class_names
        num_classes = len(class_names)
        self.net = registry.create_model(self.model_config, num_classes)
        if self.train_config.zero_head:
            zero_head(self.net)
        if self.train_config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("mean", pixel_tensor(self.model_config.input_mean), persistent=False)
        self.register_buffer("std", pixel_tensor(self.model_config.input_std), persistent=False)
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

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """With `train.freeze_bn_stats` every BatchNorm runs in eval mode in training too: the
        pretrained running statistics are used (and kept) exactly as in evaluation. With 160 px
        training crops and 224 px evaluation, batch statistics otherwise drift from what
        evaluation sees: re-estimating them at 224 px lifted a trial's val accuracy 0.898 -> 0.918.
        Done per batch because Lightning restores recorded module modes around validation."""
        if self.train_config.freeze_bn_stats:
            for module in self.net.modules():
                if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                    module.eval()

    def on_fit_start(self) -> None:
        # A resumed run's checkpoint already holds the probed head.
        if self.train_config.probe_steps and self.trainer.ckpt_path is None:
            train_set = self.trainer.datamodule.sets["train"]
            size = train_crop_size(
                0,
                self.train_config.max_epochs,
                train_set.images.shape[1],
                self.train_config.augment,
            )
            accuracy = self.linear_probe(train_set.images, train_set.labels, size)
            self.print(
                f"linear probe: train accuracy {accuracy:.4f} on frozen features at {size} px"
            )

    def linear_probe(self, images, labels: Tensor, size: int) -> float:
        """Fit the new head on frozen backbone features first (LP-FT, Kumar et al. 2022): a
        random head's large early gradients would otherwise distort the pretrained features.

        The features are the inputs of the head (captured by a hook, so any family works), of
        centre crops resized to `size`, computed once; the head then takes `probe_steps`
        full-batch AdamW steps on them. Returns the head's accuracy on those features.
        """
        config = self.train_config
        head = registry.head_module(self.net)
        captured: list[Tensor] = []
        hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        self.net.eval()
        with torch.no_grad():
            for start in range(0, len(labels), config.eval_batch_size):
                batch = torch.from_numpy(np.array(images[start : start + config.eval_batch_size]))
                floats = batch.permute(0, 3, 1, 2).float().to(self.device)
                if floats.shape[-1] != size:
                    floats = F.interpolate(
                        floats, size=(size, size), mode="bilinear", antialias=True
                    )
                self.net(normalise(floats, self.mean, self.std, config.channels_last))
        hook.remove()
        features, targets = torch.cat(captured), labels.to(self.device)
        optimizer = torch.optim.AdamW(
            head.parameters(), lr=config.probe_lr, weight_decay=config.weight_decay
        )
        head.train()
        for _ in range(config.probe_steps):
            optimizer.zero_grad(set_to_none=True)
            self.criterion(head(features), targets).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            accuracy = (head(features).argmax(dim=1) == targets).float().mean().item()
        self.net.train()
        return accuracy

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
        # The head's lr; the backbone's is train.backbone_lr_scale times it.
        self.log("lr", self.optimizers().param_groups[-1]["lr"], on_step=True, on_epoch=False)
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
        # One name per quantity: `train/loss` is the per-step loss, so the epoch mean is
        # `train/epoch_loss`; the epoch accuracy is `train/acc`, like `val/acc`.
        values = {
            "train/epoch_loss": self.metrics["train_loss"].compute(),
            "train/acc": self.metrics["train_acc"].compute(),
        }
        self.log_dict(values, sync_dist=True)
        for name in ("loss", "acc", "f1"):
            self.metrics[f"train_{name}"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        config = self.train_config
        groups = self._parameter_groups()
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
                max_lr=[group["lr"] for group in groups],
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

    def _parameter_groups(self) -> list[dict]:
        """Weight decay on weights only (not norms or biases); the new head at `train.lr`, the
        (pretrained) rest at `lr * backbone_lr_scale`. Frozen parameters are left out."""
        config = self.train_config
        head = {id(param) for param in registry.head_module(self.net).parameters()}
        groups = []
        for is_head in (False, True):
            lr = config.lr if is_head else config.lr * config.backbone_lr_scale
            params = [
                param
                for param in self.net.parameters()
                if param.requires_grad and (id(param) in head) == is_head
            ]
            for decays in (True, False):
                chosen = [param for param in params if (param.ndim > 1) == decays]
                if chosen:
                    decay = config.weight_decay if decays else 0.0
                    groups.append({"params": chosen, "weight_decay": decay, "lr": lr})
        return groups

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
