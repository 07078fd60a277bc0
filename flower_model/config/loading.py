"""The one way stages load their config: params.yaml (the exact file DVC hashes), or configs/
composed with Hydra when overrides are given, validated against the schema."""

import re
from pathlib import Path

from pydantic import ValidationError

from flower_model.config import strict_yaml
from flower_model.config.schema import FAMILY_NAMES, Config, ConfigError
from flower_model.constants import CONFIG_DIR_NAME, CONFIG_NAME, PARAMS_FILE

# Pydantic's errors for a missing or unknown `model.family`.
FAMILY_ERRORS = ("union_tag_invalid", "union_tag_not_found")
UNKNOWN_OVERRIDE = re.compile(r"Could not override '([^']+)'")
SHOWN_CHARS = 80  # a value longer than this is cut in the error line (a pasted blob is not a key)


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} chars)"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # Pydantic puts the model family's tag into the location (`model.torchvision.widths`).
        loc = [part for part in item["loc"] if part not in FAMILY_NAMES]
        key = _short(".".join(str(part) for part in loc)) or "<root>"
        value = item.get("input")
        # A rule across keys reports the whole section as its input: the message names the keys.
        shown = "(missing)" if item["type"] == "missing" else _short(repr(value))
        if isinstance(value, dict) and item["type"] != "missing":
            shown = "(these keys)"
        if item["type"] == "extra_forbidden":
            hint = "unknown key: remove it or fix its spelling (see configs/)"
        elif item["type"] in FAMILY_ERRORS:
            tag = item.get("ctx", {}).get("tag")
            key, shown = f"{key}.family", "(missing)" if tag is None else repr(tag)
            hint = f"choose one of {list(FAMILY_NAMES)} (or a preset: model=<configs/model/ name>)"
        else:
            hint = item["msg"]
        lines.append(f"  {key} = {shown}: {hint}")
    return "invalid config:\n" + "\n".join(lines)


def validate(raw: dict) -> Config:
    """Validate a composed config mapping; raise ConfigError naming every bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def compose_raw(root: Path, overrides: list[str] | None = None) -> dict:
    """Compose configs/ with Hydra (the same composition DVC's Hydra mode performs)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    config_dir = (root / CONFIG_DIR_NAME).resolve()
    if not config_dir.is_dir():
        raise ConfigError(f"no {CONFIG_DIR_NAME}/ under {root}: run from the project root")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            composed = compose(config_name=CONFIG_NAME, overrides=list(overrides or []))
        return OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        unknown = UNKNOWN_OVERRIDE.match(str(error))
        if unknown:  # Hydra's hint (`+key=`) would only meet the schema's "unknown key"
            key = unknown.group(1)
            family = (
                " (each model family has only its own keys)" if key.startswith("model.") else ""
            )
            raise ConfigError(
                f"{key} is not a key of this config{family}; remove the override or fix its "
                "spelling (see configs/)"
            ) from None
        raise ConfigError(f"cannot compose {CONFIG_DIR_NAME}/ with {overrides}: {error}") from None
    except YAMLError as error:  # a configs/ file OmegaConf cannot read (a duplicate key)
        raise ConfigError(
            f"a {CONFIG_DIR_NAME}/ file cannot be read: {' '.join(str(error).split())}; fix it "
            "or restore it with git"
        ) from None
    except ValueError as error:  # Hydra's own check of a group override (`model=1.5`, `train=`)
        raise ConfigError(
            f"cannot compose {CONFIG_DIR_NAME}/ with {overrides}: {error}; a group takes the name "
            f"of a file in {CONFIG_DIR_NAME}/<group>/ (e.g. model=efficientnet_lite1)"
        ) from None


def load_config(root: Path, overrides: list[str] | None = None) -> Config:
    """The config a stage runs with: params.yaml, or configs/ + overrides when there are any."""
    if overrides:
        return validate(compose_raw(root, overrides))
    params = root / PARAMS_FILE
    if not params.is_file() and not (root / CONFIG_DIR_NAME).is_dir():
        raise ConfigError(
            f"{root} is not a flower-model project (no {PARAMS_FILE} or {CONFIG_DIR_NAME}/): run "
            "flower-model from the project root, the folder with dvc.yaml"
        )
    if not params.is_file():
        raise ConfigError(
            f"{params} is missing: run `flower-model compose` to write it from configs/"
        )
    try:
        raw = strict_yaml.load(params)
    except strict_yaml.StrictYamlError as error:
        raise ConfigError(
            f"{params} cannot be read ({error}); fix it, or rewrite it from configs/ with "
            "`flower-model compose`"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{params} must hold a mapping; run `flower-model compose`")
    return validate(raw)


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (MLflow params, run names)."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
