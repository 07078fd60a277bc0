"""Shared fixtures: configs built from configs/, and small datasets cut from the real mirror."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll `url` until it answers; fail early if `process` died. Bounded by `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            urllib.request.build_opener().open(url, timeout=2)  # fresh: reads proxy env now
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM the process group a fixture started, then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


MLFLOW_START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port, sqlite-backed; yields its URI."""
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--artifacts-destination",
        str(state / "artifacts"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (state / "server.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, MLFLOW_START_TIMEOUT_S)
        yield uri
    finally:
        stop_process(process)
        log.close()
