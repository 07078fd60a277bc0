"""`flower-model compose` writes params.yaml byte for byte as `dvc exp run -S` (DVC's Hydra mode)
does, so neither flags the other's file as drift."""

import tempfile
from pathlib import Path

import pytest

from flower_model.constants import CONFIG_DIR_NAME, CONFIG_NAME, PARAMS_FILE
from flower_model.pipeline.compose import compose_params
from tests.conftest import REPO_ROOT


def _dvc_writes(root: Path, overrides: list[str]) -> str:
    """What DVC's Hydra mode writes to params.yaml: DVC's own function, used as the oracle, so
    this test fails if a DVC release changes how it dumps."""
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / PARAMS_FILE.name
        config_dir = str((root / CONFIG_DIR_NAME).resolve())
        compose_and_dump(output, config_dir, None, CONFIG_NAME, str(root), overrides)
        return output.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=small_cnn", "train.lr=0.0012"],
        ["train=scratch", "data.sources=[]", "preprocess.max_images_per_class=null"],
        ["+mlflow.extra='a: b # not a comment'"],
    ],
)
def test_compose_writes_the_bytes_dvc_writes(overrides):
    assert compose_params(REPO_ROOT, overrides) == _dvc_writes(REPO_ROOT, overrides)
