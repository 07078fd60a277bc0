"""params.yaml <- configs/: written with DVC's own Hydra composition, so `dvc exp run -S` and
`flower-model compose` produce the same bytes and the sync check never flags a DVC-written file.
"""

import difflib
import tempfile
from pathlib import Path

from flower_model.config import ConfigError, load_config
from flower_model.constants import CONFIG_DIR_NAME, CONFIG_NAME, PARAMS_FILE
from flower_model.io_utils import write_text


def compose_params(root: Path, overrides: list[str] | None = None) -> str:
    """The params.yaml text DVC's Hydra mode would write for configs/ + overrides."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = (root / CONFIG_DIR_NAME).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / PARAMS_FILE.name
        try:
            compose_and_dump(
                output, str(config_dir), None, CONFIG_NAME, str(root), list(overrides or [])
            )
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(
                f"cannot compose {CONFIG_DIR_NAME}/ with {overrides}: {error}"
            ) from None
        return output.read_text(encoding="utf-8")


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
