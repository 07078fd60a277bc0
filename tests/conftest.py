"""Shared fixtures: configs built from configs/, and small datasets cut from the real mirror."""

import io
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from flower_model.config import Config, compose_raw, validate

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR = REPO_ROOT.parent / "shared" / "data" / "flower_photos" / "flower_photos.tgz"
IMAGES_PER_CLASS = 16


def make_config(overrides: list[str] | None = None, **sections: dict) -> Config:
    """The composed default config plus Hydra overrides, with whole-section replacements merged."""
    raw = compose_raw(REPO_ROOT, overrides or [])
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return validate(raw)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mirror_archive() -> Path:
    if not MIRROR.is_file():
        pytest.fail(f"the dataset mirror {MIRROR} is missing: tests need ../shared beside the repo")
    return MIRROR


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory, mirror_archive) -> Path:
    """`flower_photos/<class>/*.jpg`: the first IMAGES_PER_CLASS photos of each class, plus LICENSE."""
    root = tmp_path_factory.mktemp("mini") / "flower_photos"
    taken: dict[str, int] = defaultdict(int)
    with tarfile.open(mirror_archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or taken[parts[1]] >= IMAGES_PER_CLASS:
                continue
            target = root / parts[1] / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            taken[parts[1]] += 1
    (root / "LICENSE.txt").write_text("CC BY 2.0, see ../shared/data/flower_photos/SOURCE.md\n")
    return root


def tar_gz_bytes(folder: Path, arcname: str) -> bytes:
    """A reproducible .tar.gz of `folder` stored under `arcname`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname, filter=_normalise)
    return buffer.getvalue()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


@pytest.fixture(scope="session")
def mini_tarball(tmp_path_factory, mini_dataset) -> Path:
    path = tmp_path_factory.mktemp("archives") / "mini_flowers.tgz"
    path.write_bytes(tar_gz_bytes(mini_dataset, "flower_photos"))
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project root with configs/ and params.yaml, for CLI runs."""
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path
