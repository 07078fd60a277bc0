"""The trained network as it ships: uint8 NHWC RGB in, (logits, probs) out, built from a
checkpoint without Lightning.

export_onnx and evaluate only need the network and its input scaling: building the whole
LightningModule for that would import Lightning and torchmetrics in both stages, seconds of start-up
each (docs/models.md).
"""

from pathlib import Path

import torch
from torch import Tensor, nn

from flower_model.config import PretrainedModel
from flower_model.errors import FlowerModelError
from flower_model.io_utils import load_checkpoint
from flower_model.models import registry

NET_PREFIX = "net."  # FlowerClassifier keeps the network as `self.net`
HYPER_KEYS = ("model", "class_names", "train")  # what a checkpoint of ours must say about itself


def normalise(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool) -> Tensor:
    """uint8 (or float 0..255) NCHW -> (x - mean) / std float NCHW, mean and std in pixel units
    (`model.input_mean`/`input_std`): the arithmetic of the ONNX graph too."""
    floats = (images.float() - mean) / std
    return floats.contiguous(memory_format=torch.channels_last) if channels_last else floats


def pixel_tensor(values: list[float]) -> Tensor:
    """Per-channel values (mean or std) shaped to broadcast over NCHW batches."""
    return torch.tensor(values).view(1, -1, 1, 1)


class ExportWrapper(nn.Module):
    """uint8 [N, H, W, 3] RGB -> (logits, probs): the contract of the shipped model."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(
            normalise(images.permute(0, 3, 1, 2), self.mean, self.std, channels_last=False)
        )
        return logits, torch.softmax(logits, dim=1)


def load_classifier(checkpoint: Path) -> tuple[ExportWrapper, dict]:
    """(the shipped model in eval mode, the checkpoint's contents) of a training checkpoint."""
    state = load_checkpoint(checkpoint, weights_only=True)
    hyper = state.get("hyper_parameters") if isinstance(state, dict) else None
    ours = isinstance(hyper, dict) and all(key in hyper for key in HYPER_KEYS)
    if not ours or "state_dict" not in state:
        raise FlowerModelError(
            f"{checkpoint} is not a flower-model training checkpoint (no state_dict and "
            f"hyper_parameters {'/'.join(HYPER_KEYS)}): use models/model.ckpt from `dvc repro "
            "train`, or restore it with `dvc checkout`"
        )
    config = registry.model_config(hyper["model"])
    # The checkpoint holds every weight: skip loading the ImageNet ones only to overwrite them.
    if isinstance(config, PretrainedModel):
        config = config.model_copy(update={"pretrained": False})
    net = registry.create_model(config, len(hyper["class_names"]))
    weights = {
        key[len(NET_PREFIX) :]: value
        for key, value in state["state_dict"].items()
        if key.startswith(NET_PREFIX)
    }
    net.load_state_dict(weights)
    if hyper["train"].get("channels_last"):
        net = net.to(memory_format=torch.channels_last)  # as it trained
    wrapper = ExportWrapper(net, pixel_tensor(config.input_mean), pixel_tensor(config.input_std))
    return wrapper.eval(), state
