"""Shared fixtures: configs built from configs/, and small photo sets built at test time."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flower_model.config import Config, compose_raw, validate
from tests.helpers.photos import write_photo_set

REPO_ROOT = Path(__file__).resolve().parents[1]
REVIEWS_README = REPO_ROOT / "reviews" / "README.md"
IMAGES_PER_CLASS = 16
TINY_SIZE = 32
STOP_GRACE_S = 20.0  # seconds a server a fixture started gets to exit after SIGTERM, then SIGKILL
# A complete small_cnn model section (the default model is the pretrained EfficientNet-Lite0).
TINY_MODEL = {
    "family": "small_cnn",
    "name": "small_cnn",
    "widths": [8, 16, 16, 32],
    "blocks": [1, 1, 1, 1],
    "stem_stride": 2,
    "stem_pool": True,
    "dropout": 0.2,
    "input_mean": [123.675, 116.28, 103.53],
    "input_std": [58.395, 57.12, 57.375],
}


def tiny_ddp_overrides(
    tracking_uri: str, devices: int = 2, batch_size: int = 8, accelerator: str = "cpu"
) -> list[str]:
    """Stage overrides for a 1-epoch run of the tiny model on `devices` DDP processes
    (`batch_size` per process)."""
    return [
        f"trainer.devices={devices}",
        f"trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"trainer.accelerator={accelerator}",
        "train.max_epochs=1",
        "train.warmup_epochs=0",
        f"train.batch_size={batch_size}",
        f"mlflow.tracking_uri={tracking_uri}",
        "model=small_cnn",
        f"model.widths={TINY_MODEL['widths']}".replace(" ", ""),
    ]


def make_config(overrides: list[str] | None = None, **sections: dict) -> Config:
    """The composed default config plus Hydra overrides, with whole-section replacements merged
    (a model section of another family replaces the composed one: families share no keys)."""
    raw = compose_raw(REPO_ROOT, overrides or [])
    for name, values in sections.items():
        other_family = values.get("family", raw[name].get("family")) != raw[name].get("family")
        raw[name] = dict(values) if other_family else {**raw[name], **values}
    return validate(raw)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory) -> Path:
    """`flower_photos/<class>/*` with IMAGES_PER_CLASS synthetic photos per class, and LICENSE."""
    return write_photo_set(tmp_path_factory.mktemp("mini") / "flower_photos", IMAGES_PER_CLASS)


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


def copy_pipeline(project: Path, *stages: str) -> None:
    """The project's dvc.yaml (the declaration stages read their params and outs from) into
    `project`, with only `stages` when named (and then without the top-level plots), and the
    reviews folder preprocess depends on."""
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    if stages:
        pipeline = {"stages": {name: pipeline["stages"][name] for name in stages}}
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    copy_reviews_folder(project)


def copy_reviews_folder(project: Path) -> None:
    """reviews (a preprocess dep) with its README only: the committed reviews name real
    tf_flowers photos, which the tests' small photo sets do not have (no reviews apply)."""
    folder = project / REVIEWS_README.parent.relative_to(REPO_ROOT)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REVIEWS_README, folder / REVIEWS_README.name)


def train_stage_project(project: Path, tiny_processed: Path) -> Path:
    """`project` with the tiny data, configs/ and dvc.yaml: what `python pipeline_stages/train.py`
    needs to run there."""
    shutil.copytree(tiny_processed / "data", project / "data")
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    copy_pipeline(project)
    return project


def tiny_console_overrides(tracking_uri: str, epochs: int) -> list[str]:
    """Train-stage overrides for the console tests: the tiny model for `epochs` epochs on CPU."""
    return [
        f"train.max_epochs={epochs}",
        "train.batch_size=8",
        "trainer.accelerator=cpu",
        f"mlflow.tracking_uri={tracking_uri}",
        "model=small_cnn",
        f"model.widths={TINY_MODEL['widths']}".replace(" ", ""),
    ]


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project root with configs/, params.yaml and dvc.yaml, for CLI runs."""
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    copy_pipeline(tmp_path)
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


def stop_process(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group a fixture started, then SIGKILL what is left after `grace_s`."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# `weed mini` holding data takes 20 s to exit after SIGTERM (measured: the S3 tests' teardowns
# were 20.0 s each); its data is throwaway, so it gets this long before SIGKILL.
S3_STOP_GRACE_S = 2.0

# MLflow client settings a training run sets for its process; tests that train in-process put
# them back so later tests see the defaults.
MLFLOW_REQUEST_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)
MLFLOW_START_TIMEOUT_S = 120


def start_mlflow(state: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free loopback port, sqlite-backed, logging to state/server.log;
    (process, URI) once it answers. Stop it with stop_process."""
    state.mkdir(parents=True, exist_ok=True)
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
    with (state / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, MLFLOW_START_TIMEOUT_S)
    except RuntimeError:
        stop_process(process)
        raise
    return process, uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The session's MLflow server; yields its URI."""
    process, uri = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    try:
        yield uri
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def tiny_processed(tmp_path_factory, mini_dataset):
    """Preprocess outputs of the mini dataset at 32 px: a project root later stages can use."""
    from flower_model.data.preprocess import preprocess_dataset

    root = tmp_path_factory.mktemp("project")
    config = make_config(preprocess={"image_size": TINY_SIZE, "num_workers": 0})
    paths = config.paths
    preprocess_dataset(
        mini_dataset,
        root / paths.processed_dir,
        root / paths.reports_dir,
        root / paths.plots_dir,
        config.preprocess,
        {},
    )
    return root


CLASS_NAMES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny model saved in the train stage's checkpoint format."""
    import torch

    from flower_model.training.module import FlowerClassifier

    torch.manual_seed(0)
    # A random head, so photos get different answers (the default's zero head, untrained, gives
    # every photo the same uniform probabilities and nothing for parity or top-k to tell apart).
    config = make_config(["train.zero_head=false"], model=TINY_MODEL)
    module = FlowerClassifier(config.model.model_dump(), config.train.model_dump(), CLASS_NAMES, 1)
    with torch.no_grad():  # move BatchNorm statistics off their defaults
        module.train()
        module(torch.randint(0, 256, (16, 3, TINY_SIZE, TINY_SIZE), dtype=torch.uint8))
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    state = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, tiny_processed):
    """models/model.onnx exported like the export_onnx stage does, with its full metadata."""
    import json

    import numpy as np

    from flower_model.data.layout import images_path
    from flower_model.export.onnx import export_model

    config = make_config(preprocess={"image_size": TINY_SIZE})
    val = np.load(images_path(tiny_processed / "data" / "processed", "val"))
    metadata = {
        "class_names": json.dumps(CLASS_NAMES),
        "image_size": str(TINY_SIZE),
        "resize_mode": config.preprocess.resize_mode,
        "pad_value": str(config.preprocess.pad_value),
        "max_image_pixels": str(config.preprocess.max_image_pixels),
    }
    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(tiny_checkpoint, output, config.export, val, metadata)
    return output


S3_START_TIMEOUT_S = 60
# `weed mini` listens on a dozen ports (master, volume, filer, s3, admin, each with gRPC, plus
# iceberg/lance); every one is chosen free so parallel runs and other services never collide.
WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


@pytest.fixture
def s3_server(tmp_path):
    """A real S3 server (SeaweedFS `weed mini`) on loopback with a bucket `flower-model`.

    Credentials are made up per test and handed over like a user would: a dict of the AWS
    environment variables. Yields (endpoint URL, credentials, stop function).
    """
    import json
    import secrets

    state = tmp_path / "s3"
    (state / "data").mkdir(parents=True)
    credentials = {
        "AWS_ACCESS_KEY_ID": "test" + secrets.token_hex(4),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
    }
    identity = {
        "name": "tester",
        "credentials": [
            {
                "accessKey": credentials["AWS_ACCESS_KEY_ID"],
                "secretKey": credentials["AWS_SECRET_ACCESS_KEY"],
            }
        ],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (state / "s3.json").write_text(json.dumps({"identities": [identity]}))
    s3_port = free_port()
    command = [
        str(Path(sys.executable).with_name("weed")),
        "mini",
        f"-dir={state / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={state / 's3.json'}",
        "-bucket=flower-model",
        f"-s3.port={s3_port}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        *(f"-{flag}={free_port()}" for flag in WEED_PORT_FLAGS),
    ]
    log = (state / "server.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=state, start_new_session=True
    )
    endpoint = f"http://127.0.0.1:{s3_port}"
    try:
        wait_for_s3_bucket(endpoint, "flower-model", process, S3_START_TIMEOUT_S)
        yield endpoint, credentials, lambda: stop_process(process, S3_STOP_GRACE_S)
    finally:
        stop_process(process, S3_STOP_GRACE_S)
        log.close()


@pytest.fixture
def silent_endpoint():
    """A loopback TCP server that accepts every connection and never answers; yields
    (endpoint URL, the connections it accepted)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for connection in [*accepted, server]:
            connection.close()


def wait_for_s3_bucket(endpoint: str, bucket: str, process: subprocess.Popen, timeout_s: float):
    """Poll until the S3 port answers for `bucket` (any HTTP status counts: 403 means up)."""
    import urllib.error

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode} before {endpoint}")
        try:
            urllib.request.build_opener().open(f"{endpoint}/{bucket}", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{endpoint} did not answer within {timeout_s} s")


SLURM_SCRIPT = REPO_ROOT / "scripts" / "slurm_cluster.sh"
SLURM_UP_TIMEOUT_S = 120  # every daemon answers within 60 s, or the script gives up
# What scripts/slurm_cluster.sh runs; `make test` installs none of them (`make ci-deps` does).
SLURM_PROGRAMS = ("sbatch", "sacct", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
SLURM_INSTALL = "`sudo make ci-deps` installs it (`make test` installs nothing)"


def slurm_command(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SLURM_SCRIPT), command],
        capture_output=True,
        text=True,
        timeout=SLURM_UP_TIMEOUT_S,
    )


def _slurm_missing() -> str | None:
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}): {SLURM_INSTALL}"
    if os.geteuid() != 0:
        return "scripts/slurm_cluster.sh needs root (daemons, /etc/slurm): run the tests as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster, brought up once; stopped at the end unless it was already running. Skips
    without Slurm, except in CI (CI=true), which installs it first and must run these tests."""
    reason = _slurm_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    was_up = slurm_command("status").stdout.startswith("up")
    started = slurm_command("up")
    assert started.returncode == 0, started.stdout + started.stderr
    yield started.stdout.strip().splitlines()[-1]
    if not was_up:
        stopped = slurm_command("down")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


SLURM_GROUP = "slurm"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `pytest -n 2 --dist loadgroup` (`make test`): a test file runs on one worker,
    so its module-scoped servers start once; every test on the one Slurm cluster runs on the
    same worker (its session fixture brings the cluster up and down)."""
    for item in items:
        group = SLURM_GROUP if "slurm_cluster" in item.fixturenames else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))
