"""A real Triton server (pytriton's tritonserver on CPU): parity, bad requests, load, repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from flower_model.data.preprocess import images_path
from flower_model.serving.infer import OnnxClassifier
from tests.conftest import (
    REPO_ROOT,
    TINY_SIZE,
    free_port,
    make_config,
    stop_process,
    wait_for_http,
)

MODEL = "flower_classifier"
START_TIMEOUT_S = 180
LOAD_REQUESTS = 2000
LOAD_CLIENTS = 8


def start_server(project: Path, model: Path, log) -> tuple[subprocess.Popen, dict[str, int]]:
    """`flower-model serve` on free loopback ports in its own process group; wait until ready."""
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    ports = {name: free_port() for name in ("http_port", "grpc_port", "metrics_port")}
    overrides = [f"serve.{name}={port}" for name, port in ports.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "flower_model.commands", "serve", *overrides, f"--model={model}"],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(
            f"http://127.0.0.1:{ports['http_port']}/v2/models/{MODEL}/ready",
            process,
            START_TIMEOUT_S,
        )
    except RuntimeError:
        stop_process(process)
        raise
    return process, ports


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory, tiny_onnx):
    """The server for this module's tests, stopped by PID (SIGTERM) at the end."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    project = tmp_path_factory.mktemp("serve")
    with (project / "serve.log").open("w") as log:
        process, ports = start_server(project, tiny_onnx, log)
        try:
            yield {
                "http": f"127.0.0.1:{ports['http_port']}",
                "grpc": f"127.0.0.1:{ports['grpc_port']}",
                "project": project,
            }
        finally:
            stop_process(process)


@pytest.fixture(scope="module")
def photos(tiny_processed) -> np.ndarray:
    return np.load(images_path(tiny_processed / "data" / "processed", "test"))


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url=url)


def _infer(protocol: str, url: str, images: np.ndarray, dtype: str = "UINT8"):
    module, client = _client(protocol, url)
    request = module.InferInput("images", list(images.shape), dtype)
    request.set_data_from_numpy(images)
    try:
        result = client.infer(MODEL, [request])
        return result.as_numpy("probs"), result.as_numpy("labels")
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictions_equal_local_onnx_runtime(triton_server, photos, tiny_onnx, protocol):
    local = OnnxClassifier(tiny_onnx)
    probs, labels = _infer(protocol, triton_server[protocol], photos[:8])
    expected = local.probs(photos[:8])
    assert np.allclose(probs, expected, atol=1e-6)
    assert [label[0].decode() for label in labels] == [
        local.class_names[k] for k in expected.argmax(1)
    ]


@pytest.mark.slow
def test_malformed_requests_get_errors_and_server_keeps_serving(triton_server, photos):
    from tritonclient.utils import InferenceServerException

    url = triton_server["http"]
    bad_requests = [
        (photos[:2].astype(np.float32), "FP32"),  # wrong dtype
        (photos[0], "UINT8"),  # wrong rank
        (np.zeros((2, TINY_SIZE + 1, TINY_SIZE, 3), np.uint8), "UINT8"),  # wrong image size
        (np.zeros((0, TINY_SIZE, TINY_SIZE, 3), np.uint8), "UINT8"),  # empty batch
    ]
    for images, dtype in bad_requests:
        with pytest.raises(InferenceServerException):
            _infer("http", url, images, dtype)
    probs, _ = _infer("http", url, photos[:1])
    assert probs.shape == (1, 5), "the server must keep serving after bad requests"


@pytest.mark.slow
def test_bounded_load_has_no_errors(triton_server, photos):
    url = triton_server["http"]
    per_client = LOAD_REQUESTS // LOAD_CLIENTS

    def worker(offset: int) -> int:
        module, client = _client("http", url)
        errors = 0
        try:
            for i in range(per_client):
                image = photos[(offset + i) % len(photos)][None]
                request = module.InferInput("images", list(image.shape), "UINT8")
                request.set_data_from_numpy(image)
                try:
                    client.infer(MODEL, [request]).as_numpy("probs")
                except Exception:  # any failure counts; the assertion reports the total
                    errors += 1
        finally:
            client.close()
        return errors

    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        errors = sum(pool.map(worker, range(LOAD_CLIENTS)))
    elapsed = time.monotonic() - started
    print(f"{LOAD_REQUESTS} requests from {LOAD_CLIENTS} clients in {elapsed:.1f} s")
    assert errors == 0


@pytest.mark.slow
def test_sigterm_stops_server_without_orphans(tmp_path, tiny_onnx):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")
    process, _ = start_server(tmp_path, tiny_onnx, subprocess.DEVNULL)
    try:
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        time.sleep(1)
        leftover = subprocess.run(
            ["pgrep", "-g", str(process.pid)], capture_output=True, text=True
        ).stdout
        assert leftover.strip() == "", f"orphan processes in the server's group: {leftover}"
    finally:
        stop_process(process)


def test_triton_repository_parses_with_triton_protobuf(tmp_path, tiny_onnx):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from flower_model.serving.model_repository import write_repository
    from tests.conftest import make_config

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_onnx, models / "model.onnx")
    written = write_repository(tmp_path / "repo", models / "model.onnx", make_config().serve)
    assert [path.parent.name for path in written] == [MODEL]
    parsed = text_format.Parse(written[0].read_text(), model_config_pb2.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 64
    assert list(parsed.input[0].dims) == [TINY_SIZE, TINY_SIZE, 3]
    assert parsed.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert [output.name for output in parsed.output] == ["logits", "probs"]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert (tmp_path / "repo" / MODEL / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    labels = (tmp_path / "repo" / MODEL / "labels.txt").read_text().split()
    assert labels == OnnxClassifier(tiny_onnx).class_names
    # With an engine present, a tensorrt_plan model is added beside it.
    (models / "trt").mkdir()
    (models / "trt" / "model.plan").write_bytes(b"engine bytes")
    written = write_repository(tmp_path / "repo", models / "model.onnx", make_config().serve)
    plan_config = text_format.Parse(written[1].read_text(), model_config_pb2.ModelConfig())
    assert (
        plan_config.platform == "tensorrt_plan" and Path(written[1]).parent.name == f"{MODEL}_trt"
    )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_command_matches_local_infer(
    triton_server, tiny_onnx, mini_dataset, tmp_path, protocol
):
    from flower_model.serving.infer import classify, expand_paths

    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    for photo in sorted((mini_dataset / "tulips").glob("*.jpg"))[:4]:
        shutil.copy(photo, photos_dir / photo.name)
    (photos_dir / "broken.jpg").write_text("not a photo")
    project = triton_server["project"]
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    # The client prepares photos with params.yaml's preprocess settings: match the tiny model.
    params = (
        (project / "params.yaml")
        .read_text()
        .replace(f"image_size: {make_config().preprocess.image_size}", f"image_size: {TINY_SIZE}")
    )
    (project / "params.yaml").write_text(params)
    output = tmp_path / "remote.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flower_model.commands",
            "client",
            str(photos_dir),
            f"--url={triton_server[protocol]}",
            f"--protocol={protocol}",
            f"--output={output}",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, "the broken file must show in the exit code"
    remote = {Path(item["path"]).name: item for item in json.loads(output.read_text())}
    local = classify(expand_paths([str(photos_dir)]), OnnxClassifier(tiny_onnx), 3)
    for item in local:
        name = Path(item.path).name
        assert bool(remote[name]["error"]) == bool(item.error)
        if not item.error:
            assert remote[name]["probability"] == pytest.approx(item.probability, abs=1e-5)
            assert [rank[1] for rank in remote[name]["top_k"]] == pytest.approx(
                [p for _, p in item.top_k], abs=1e-5
            )
