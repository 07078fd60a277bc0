"""Model registry: `@register_model("name", FamilyConfig)` builders, created from config by name
(timm style).

A leaf: it imports no model family. The families register themselves when the package
`flower_model.models` is imported (its __init__ imports each one), as timm's do. Each builder
names its family's config class (flower_model/config/schema.py), so a name is checked against the
family its yaml declares, and a new model of an existing family needs only its module and its
configs/model/ yaml.
"""

from collections.abc import Callable

from torch import nn

from flower_model.config import ConfigError, ModelBase, ModelConfig

Builder = Callable[[ModelBase, int], nn.Module]
_REGISTRY: dict[str, tuple[Builder, type[ModelBase]]] = {}
# Where each family keeps its classifier: timm's `get_classifier()`, else one of these attributes.
HEAD_ATTRIBUTES = ("head", "fc", "classifier")


def register_model(name: str, family: type[ModelBase]) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (builder, family)
        return builder

    return decorate


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def family_of(name: str) -> type[ModelBase]:
    """The config class of a registered model; a one-line error naming the choices otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.name={name!r} is not registered; choose from {available_models()} "
            "(or pick a preset: model=<configs/model/ file name>)"
        )
    return _REGISTRY[name][1]


def check_model(config: ModelConfig) -> None:
    """The name is registered, in the family the config declares (training checks it first)."""
    family = family_of(config.name)
    if not isinstance(config, family):
        expected = family.model_fields["family"].default
        raise ConfigError(
            f"model.name={config.name!r} belongs to model.family={expected!r}, not "
            f"{config.family!r}; pick its preset: model={config.name}"
        )


def model_config(raw: dict) -> ModelConfig:
    """The family config of a checkpoint's `hyper_parameters["model"]`. Checkpoints written before
    the per-family configs hold every family's keys and no `family`: they keep the keys of the
    family the registry gives their name (the others were unused by it)."""
    family = family_of(raw["name"])
    if "family" not in raw:
        raw = {key: value for key, value in raw.items() if key in family.model_fields}
    return family.model_validate(raw)


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """Build the model `config.name` with a `num_classes`-way head; takes normalised NCHW floats."""
    check_model(config)
    return _REGISTRY[config.name][0](config, num_classes)


def head_module(net: nn.Module) -> nn.Module:
    """The new, randomly initialised classifier of a built model (it may get its own lr)."""
    if hasattr(net, "get_classifier"):
        return net.get_classifier()
    for attribute in HEAD_ATTRIBUTES:
        if isinstance(getattr(net, attribute, None), nn.Module):
            return getattr(net, attribute)
    raise KeyError(f"{type(net).__name__} has none of {HEAD_ATTRIBUTES}; name its classifier")
