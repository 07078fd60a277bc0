"""Reading dvc.yaml, the one declaration of the pipeline: stage names and order, the params keys
each stage reads, its inputs (the deps that are not code) and its outs. The stage runner, the CLI
and the MLflow git-dirty check read them from here, so adding an out or a params key is one edit
in dvc.yaml.

Paths in dvc.yaml are templated from `paths` (and `data.name`), e.g.
`${paths.models_dir}/model.ckpt`: DVC fills them from params.yaml, and `resolve` fills them from
the config the stage was given (the same values, or a hand-run stage's overrides).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from flower_model.config import strict_yaml
from flower_model.config.loading import flatten
from flower_model.config.schema import Config, ConfigError

DVC_FILE = "dvc.yaml"
CODE_DEPS = ("flower_model/", "pipeline_stages/")  # deps that are code, not data
OUT_KINDS = ("outs", "metrics", "plots")
TEMPLATE = re.compile(r"\$\{\s*([\w.]+)\s*\}")


@dataclass(frozen=True)
class Declared:
    """One stage as dvc.yaml declares it; paths still templated."""

    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outs: tuple[str, ...]


def _path(entry: str | dict) -> str:
    """An out is `path` or `{path: {options}}`."""
    return entry if isinstance(entry, str) else next(iter(entry))


def _entries(path: Path, name: str, stage: object, field: str) -> list:
    """A stage's list field (`params`, `deps`, outs); absent is empty, anything else (`null`
    included) an error."""
    value = stage.get(field, []) if isinstance(stage, dict) else None
    if not isinstance(value, list):
        raise ConfigError(
            f"{path}: stage {name}'s {field} must be a list, got {type(value).__name__}; "
            "restore it with `git checkout dvc.yaml`"
        )
    return value


def stages(root: Path) -> dict[str, Declared]:
    """Every stage of `root`/dvc.yaml, in file (DAG) order."""
    path = root / DVC_FILE
    try:
        declared = strict_yaml.load(path)["stages"]
    except FileNotFoundError:
        raise ConfigError(f"no {DVC_FILE} under {root}: run flower-model from the project root")
    except (strict_yaml.StrictYamlError, KeyError, TypeError) as error:
        raise ConfigError(f"{path} is not a DVC pipeline file ({error}): restore it with git")
    if not isinstance(declared, dict):
        raise ConfigError(f"{path}: `stages` must be a mapping; restore it with git")
    return {
        name: Declared(
            params=tuple(str(key) for key in _entries(path, name, stage, "params")),
            inputs=tuple(
                dep
                for dep in _entries(path, name, stage, "deps")
                if not str(dep).startswith(CODE_DEPS)
            ),
            outs=tuple(
                _path(entry) for kind in OUT_KINDS for entry in _entries(path, name, stage, kind)
            ),
        )
        for name, stage in declared.items()
    }


def stage(name: str, root: Path) -> Declared:
    declared = stages(root)
    if name not in declared:
        raise ConfigError(f"stage {name} is not in {root / DVC_FILE}: restore it with git")
    return declared[name]


def resolve(path: str, config: Config) -> Path:
    """`${paths.models_dir}/model.ckpt` -> models/model.ckpt, with this config's values."""
    return fill(path, flatten(config.model_dump(mode="json")))


def fill(path: str, values: dict[str, object]) -> Path:
    """`path` with each `${dotted.key}` replaced from `values` (flattened params)."""

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(f"{DVC_FILE} refers to ${{{key}}}, which the config does not have")
        return str(values[key])

    return Path(TEMPLATE.sub(value, path))
