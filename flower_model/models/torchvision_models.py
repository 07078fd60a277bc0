"""torchvision families, with their ImageNet weights when `model.pretrained=true`."""

from torch import nn
from torchvision import models

from flower_model.config import TorchvisionConfig
from flower_model.errors import FlowerModelError
from flower_model.models.registry import register_model


def _weights(config: TorchvisionConfig, weights_enum):
    if not config.pretrained:
        return None
    weights = weights_enum.DEFAULT
    try:
        # Fetch (or find in the torch hub cache) before building, so failure names the cause.
        weights.get_state_dict(progress=False)
    except Exception as error:  # urllib/hub raise many types; all mean "no weights here"
        raise FlowerModelError(
            f"model.pretrained=true but the ImageNet weights of {config.name} cannot be loaded "
            f"({type(error).__name__}: {error}). This machine may have no internet: put the file "
            f"{weights.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints/, or set "
            "model.pretrained=false to train from scratch"
        ) from None
    return weights


@register_model("resnet18", TorchvisionConfig)
def resnet18(config: TorchvisionConfig, num_classes: int) -> nn.Module:
    model = models.resnet18(weights=_weights(config, models.ResNet18_Weights))
    model.fc = nn.Sequential(
        nn.Dropout(config.dropout), nn.Linear(model.fc.in_features, num_classes)
    )
    return model


@register_model("mobilenet_v3_small", TorchvisionConfig)
def mobilenet_v3_small(config: TorchvisionConfig, num_classes: int) -> nn.Module:
    model = models.mobilenet_v3_small(weights=_weights(config, models.MobileNet_V3_Small_Weights))
    last = model.classifier[-1]
    model.classifier[-2] = nn.Dropout(config.dropout)
    model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model
