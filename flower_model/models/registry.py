"""Model registry: `@register_model("name")` builders, created from config by name (timm style)."""

from collections.abc import Callable

from torch import nn

from flower_model.config import ModelConfig

Builder = Callable[[ModelConfig, int], nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def _load_families() -> None:
    # Importing a family module runs its @register_model decorators.
    from flower_model.models import small_cnn, torchvision_models  # noqa: F401


def available_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the model `config.name` with a `num_classes`-way head; takes normalised NCHW floats."""
    _load_families()
    if config.name not in _REGISTRY:
        raise KeyError(
            f"model.name={config.name!r} is not registered; choose from {available_models()}"
        )
    return _REGISTRY[config.name](config, num_classes)
