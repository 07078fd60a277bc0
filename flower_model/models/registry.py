"""Model registry: `@register_model("name")` builders, created from config by name (timm style).

A leaf: it imports no model family. The families register themselves when the package
`flower_model.models` is imported (its __init__ imports each one), as timm's do.
"""

from collections.abc import Callable

from torch import nn

from flower_model.config import ModelConfig

Builder = Callable[[ModelConfig, int], nn.Module]
_REGISTRY: dict[str, Builder] = {}
# Where each family keeps its classifier: timm's `get_classifier()`, else one of these attributes.
HEAD_ATTRIBUTES = ("head", "fc", "classifier")


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the model `config.name` with a `num_classes`-way head; takes normalised NCHW floats."""
    if config.name not in _REGISTRY:
        raise KeyError(
            f"model.name={config.name!r} is not registered; choose from {available_models()}"
        )
    return _REGISTRY[config.name](config, num_classes)


def head_module(net: nn.Module) -> nn.Module:
    """The new, randomly initialised classifier of a built model (it may get its own lr)."""
    if hasattr(net, "get_classifier"):
        return net.get_classifier()
    for attribute in HEAD_ATTRIBUTES:
        if isinstance(getattr(net, attribute, None), nn.Module):
            return getattr(net, attribute)
    raise KeyError(f"{type(net).__name__} has none of {HEAD_ATTRIBUTES}; name its classifier")
