"""`flower-model <stage> --help`: usage, flags, and the config groups the stage reads with their
options, from dvc.yaml (the keys it reads) and configs/ (the options of each group)."""

from pathlib import Path

from flower_model.config import ConfigError, dvc_yaml
from flower_model.constants import CONFIG_DIR_NAME

FLAGS = (
    ("--dry-run", "check the config, the inputs and the services it needs; do nothing"),
    ("--show-config", "print the values of every key the stage reads, and exit"),
    ("--help", "this text"),
)


def _groups(keys: tuple[str, ...], root: Path) -> list[str]:
    """`model: efficientnet_lite0 | resnet18 | ...` for each config group behind `keys`."""
    lines, seen = [], []
    for key in keys:
        group = key.split(".")[0]
        if group in seen:
            continue
        seen.append(group)
        folder = root / CONFIG_DIR_NAME / group
        options = sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []
        shown = " | ".join(options) if options else "(a key, not a group)"
        lines.append(f"  {group:<11} {shown}")
    return lines


def stage_help(name: str, summary: str, root: Path) -> str:
    lines = [
        summary,
        "",
        f"usage: flower-model {name} [KEY=VALUE | GROUP=OPTION ...] [--dry-run] [--show-config]",
        f"       python pipeline_stages/{name}.py [same arguments]   (what `dvc repro` runs)",
        "",
        "Without overrides the stage reads params.yaml (what DVC tracks); overrides compose",
        "configs/ with Hydra on top, e.g. `train.max_epochs=2` or `model=efficientnet_lite1`.",
        "",
        "flags:",
        *(f"  {flag:<15} {text}" for flag, text in FLAGS),
    ]
    try:
        keys = dvc_yaml.stage(name, root).params
    except ConfigError:
        return "\n".join([*lines, "", "(run from the project root to see the keys it reads)"])
    lines += [
        "",
        f"reads (dvc.yaml params): {', '.join(keys)}",
        "config groups it reads, with their options (configs/<group>/<option>.yaml):",
        *_groups(keys, root),
        "",
        f"`flower-model {name} --show-config` prints every key's value.",
    ]
    return "\n".join(lines)
