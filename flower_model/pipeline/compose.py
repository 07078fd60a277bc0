"""params.yaml <- configs/: written exactly as DVC's Hydra mode writes it, so `dvc exp run -S`
and `flower-model compose` produce the same bytes and the sync check never flags a DVC-written file.
"""

import difflib
from pathlib import Path

from flower_model.config import ConfigError, compose_raw, load_config
from flower_model.constants import PARAMS_FILE
from flower_model.io_utils import write_text


def compose_params(root: Path, overrides: list[str] | None = None) -> str:
    """The params.yaml text DVC's Hydra mode would write for configs/ + overrides: it composes
    with Hydra's compose API, resolves, and writes `OmegaConf.to_yaml` of the result for a
    .yaml params file (dvc/utils/hydra.py); so does this, from the same composition."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(compose_raw(root, overrides)))


def write_params(root: Path, overrides: list[str] | None = None) -> bool:
    """Compose, validate, then write params.yaml; return whether it changed."""
    text = compose_params(root, overrides)
    target = root / PARAMS_FILE
    old = target.read_text(encoding="utf-8") if target.exists() else None
    if old == text:
        load_config(root)
        return False
    write_text(target, text)
    try:
        load_config(root)
    except ConfigError:
        if old is None:
            target.unlink()
        else:
            write_text(target, old)  # never leave an invalid params.yaml behind
        raise
    return True


def check_params(root: Path) -> str:
    """'' when params.yaml equals the composition of configs/, else a diff and the fix."""
    expected = compose_params(root)
    target = root / PARAMS_FILE
    actual = target.read_text(encoding="utf-8") if target.exists() else ""
    if actual == expected:
        return ""
    diff = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        fromfile="params.yaml",
        tofile="compose(configs/)",
    )
    return (
        "params.yaml and configs/ disagree:\n"
        + "".join(diff)
        + "fix: edit configs/ (the source) and run `flower-model compose`, or, after "
        "`dvc exp run -S ...`, port the change into configs/ (see README)\n"
    )
