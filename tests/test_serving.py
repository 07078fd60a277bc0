"""The real tritonserver (from the nvidia-pytriton wheel, on CPU) on the repository that ships:
parity, encoded photos, bad requests, load and metrics, start-up failures, SIGTERM, repository."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from flower_model.data.layout import images_path
from flower_model.serving.infer import OnnxClassifier, classify, expand_paths
from flower_model.serving.watchdog import PROBE_REPEATS
from tests.conftest import REPO_ROOT, TINY_SIZE, free_port, make_config, stop_process, wait_for_http

MODEL = "flower_classifier"
IMAGE_MODEL = "flower_classifier_image"
START_TIMEOUT_S = 180
FAILURE_TIMEOUT_S = 60  # a start-up failure must end the command well within this
RESTART_BOUND_S = 60  # a crashed server is ready again (or serve has given up) within this
LOAD_REQUESTS = 2000
LOAD_CLIENTS = 8
MAX_BATCH = make_config().serve.max_batch_size
CLIENT_ERROR_CODES = range(400, 500)
FLAVOURS = ("container", "python")
FALLBACK_LINE = "serving the python flavour instead"


def _serve_command(project: Path, ports: dict[str, int], *extra: str) -> list[str]:
    overrides = [f"serve.{name}={port}" for name, port in ports.items()]
    return [sys.executable, "-m", "flower_model.commands", "serve", *overrides, *extra]


def _project(path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "configs", path / "configs", dirs_exist_ok=True)
    return path


def _ports() -> dict[str, int]:
    return {name: free_port() for name in ("http_port", "grpc_port", "metrics_port")}


def start_server(
    project: Path, model: Path, log, *extra: str
) -> tuple[subprocess.Popen, dict[str, int]]:
    """`flower-model serve` on free loopback ports in its own process group; wait until ready."""
    ports = _ports()
    process = subprocess.Popen(
        _serve_command(_project(project), ports, f"--model={model}", *extra),
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for name in (MODEL, IMAGE_MODEL):
            wait_for_http(
                f"http://127.0.0.1:{ports['http_port']}/v2/models/{name}/ready",
                process,
                START_TIMEOUT_S,
            )
    except RuntimeError:
        stop_process(process)
        raise
    return process, ports


def need_flavour(flavour: str) -> None:
    """Skip (naming the command) where the flavour cannot be served here."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver carrier) is absent")
    if flavour == "container":
        from flower_model.serving.bundle import native_backend_missing

        missing = native_backend_missing()
        if missing:
            pytest.skip(f"{missing}: run `make triton-build-deps` (root) and `make triton-backend`")


@pytest.fixture(scope="module", params=FLAVOURS)
def triton_server(request, tmp_path_factory, tiny_onnx):
    """The server for this module's tests, in each flavour, stopped by PID (SIGTERM) at the end."""
    need_flavour(request.param)
    project = tmp_path_factory.mktemp(f"serve_{request.param}")
    with (project / "serve.log").open("w") as log:
        process, ports = start_server(project, tiny_onnx, log, f"serve.flavour={request.param}")
        try:
            yield {
                "http": f"127.0.0.1:{ports['http_port']}",
                "grpc": f"127.0.0.1:{ports['grpc_port']}",
                "metrics": f"http://127.0.0.1:{ports['metrics_port']}/metrics",
                "project": project,
                "flavour": request.param,
            }
        finally:
            stop_process(process)


@pytest.fixture(scope="module")
def photos(tiny_processed) -> np.ndarray:
    return np.load(images_path(tiny_processed / "data" / "processed", "test"))


@pytest.fixture(scope="module")
def photo_files(mini_dataset, tmp_path_factory) -> Path:
    """A folder of real encoded photos (JPEG, PNG, WebP, CMYK, EXIF-rotated...) and a broken one."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted(mini_dataset.rglob("*")):
        if path.is_file() and path.suffix.lower() != ".txt":
            shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    (folder / "broken.jpg").write_text("not a photo")
    return folder


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url=url)


def _infer(protocol: str, url: str, data: np.ndarray, model: str = MODEL, dtype: str = "UINT8"):
    """(probs, labels): labels from the model's `labels` output, or (the container flavour's
    flower_classifier has none) through Triton's classification extension, top 1."""
    module, client = _client(protocol, url)
    name = "files" if dtype == "BYTES" else "images"
    request = module.InferInput(name, list(data.shape), dtype)
    request.set_data_from_numpy(data)
    try:
        result = client.infer(model, [request])
        labels = result.as_numpy("labels")
        if labels is None:
            top1 = [module.InferRequestedOutput("probs", class_count=1)]
            ranked = client.infer(model, [request], outputs=top1).as_numpy("probs")
            # "score:index:label" per row
            labels = np.array([[item[0].split(b":", 2)[2]] for item in ranked], dtype=object)
        return result.as_numpy("probs"), labels
    finally:
        client.close()


def _files(*paths: Path) -> np.ndarray:
    return np.array([[path.read_bytes()] for path in paths], dtype=object)


def _open(request, timeout: float):
    """urlopen without proxies, read now: the global opener caches the proxy settings of the
    first test that used it (some set a dead proxy), and loopback must never go through one."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        request, timeout=timeout
    )


def _first_jpeg(folder: Path) -> Path:
    return next(path for path in sorted(folder.glob("*.jpg")) if path.name != "broken.jpg")


def _assert_ready(url: str, server: dict | None = None, case: str = "") -> None:
    try:
        with _open(f"http://{url}/v2/health/ready", timeout=5) as response:
            assert response.status == 200, "the server must stay ready after a bad request"
    except OSError as error:
        log = (server["project"] / "serve.log").read_text()[-4000:] if server else ""
        raise AssertionError(f"not ready after {case!r}: {error}; serve.log ends:\n{log}")


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
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_model_decodes_like_infer(triton_server, photo_files, tiny_onnx, protocol):
    """Encoded files in, the same probabilities as local decode + ONNX Runtime."""
    local = OnnxClassifier(tiny_onnx)
    good = [path for path in sorted(photo_files.iterdir()) if path.name != "broken.jpg"]
    good = good[:MAX_BATCH]  # whole classes, so every kind of file, in one request
    probs, labels = _infer(protocol, triton_server[protocol], _files(*good), IMAGE_MODEL, "BYTES")
    expected = local.probs(np.stack([local.load(path) for path in good]))
    assert np.allclose(probs, expected, atol=1e-6)
    assert [label[0].decode() for label in labels] == [
        local.class_names[k] for k in expected.argmax(1)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("wanted", [["probs"], ["labels"]])
def test_only_the_requested_outputs_come_back(triton_server, photos, tiny_onnx, protocol, wanted):
    """A request naming outputs gets those (the stub skips the rest); naming none gets both."""
    if triton_server["flavour"] != "python":
        pytest.skip("the python flavour's stub builds outputs; the native backend has no labels")
    module, client = _client(protocol, triton_server[protocol])
    request = module.InferInput("images", list(photos[:3].shape), "UINT8")
    request.set_data_from_numpy(photos[:3])
    outputs = [module.InferRequestedOutput(name) for name in wanted]
    try:
        result = client.infer(MODEL, [request], outputs=outputs)
    finally:
        client.close()
    local = OnnxClassifier(tiny_onnx)
    expected = local.probs(photos[:3])
    returned = {name: result.as_numpy(name) for name in ("probs", "labels")}
    assert [name for name, value in returned.items() if value is not None] == wanted
    if "probs" in wanted:
        assert np.allclose(returned["probs"], expected, atol=1e-6)
    else:
        assert [label[0].decode() for label in returned["labels"]] == [
            local.class_names[k] for k in expected.argmax(1)
        ]


def _status(error) -> int:
    """The HTTP status of a tritonclient.http error."""
    return int(error.status())


@pytest.mark.slow
def test_bad_requests_get_4xx_and_the_server_keeps_serving(triton_server, photos, photo_files):
    from tritonclient.utils import InferenceServerException

    url = triton_server["http"]
    truncated = photo_files / "truncated.jpg"
    whole = _first_jpeg(photo_files)
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    size = TINY_SIZE
    bad_requests = {
        "wrong dtype": (photos[:2].astype(np.float32), MODEL, "FP32"),
        "wrong rank": (photos[0], MODEL, "UINT8"),
        "wrong image size": (np.zeros((2, size + 1, size, 3), np.uint8), MODEL, "UINT8"),
        "batch above max": (np.zeros((MAX_BATCH + 1, size, size, 3), np.uint8), MODEL, "UINT8"),
        "empty batch": (np.zeros((0, size, size, 3), np.uint8), MODEL, "UINT8"),
        "unknown model": (photos[:1], "no_such_model", "UINT8"),
        "truncated JPEG": (_files(whole, truncated), IMAGE_MODEL, "BYTES"),
        "not an image": (_files(photo_files / "broken.jpg"), IMAGE_MODEL, "BYTES"),
        "uint8 to the image model": (photos[:1], IMAGE_MODEL, "UINT8"),
    }
    for case, (data, model, dtype) in bad_requests.items():
        with pytest.raises(InferenceServerException) as caught:
            _infer("http", url, data, model, dtype)
        assert _status(caught.value) in CLIENT_ERROR_CODES, f"{case}: {caught.value}"
        _assert_ready(url, triton_server, case)
    with pytest.raises(InferenceServerException, match="file 1 of the request: truncated"):
        _infer("http", url, _files(whole, truncated), IMAGE_MODEL, "BYTES")
    # Bodies that parse as JSON but are not valid requests get 400. tritonserver 2.51 answers a
    # body that is not JSON at all with 500 "failed to parse the request JSON buffer" (its own
    # choice, kept: no proxy sits in front of it); either way it keeps serving.
    for body in (b'{"inputs": [{"name": "images"}]}', b"", b'{"inputs": []}', b"garbage"):
        request = urllib.request.Request(
            f"http://{url}/v2/models/{MODEL}/infer", data=body, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as caught_http:
            _open(request, timeout=10)
        answer = caught_http.value.read().decode()
        unparsable = caught_http.value.code == 500 and "failed to parse the request JSON" in answer
        assert caught_http.value.code in CLIENT_ERROR_CODES or unparsable, (body, answer)
        _assert_ready(url, triton_server, str(body))
    probs, _ = _infer("http", url, photos[:1])
    assert probs.shape == (1, 5), "the server must keep serving after bad requests"


@pytest.mark.slow
def test_a_bad_file_fails_only_its_own_request(triton_server, photo_files):
    """Concurrent requests share dynamic batches; only the one with the broken file fails."""
    from tritonclient.utils import InferenceServerException

    url = triton_server["grpc"]
    good = _files(_first_jpeg(photo_files))
    bad = _files(photo_files / "broken.jpg")

    def send(index: int) -> str:
        try:
            _infer("grpc", url, bad if index % 4 == 0 else good, IMAGE_MODEL, "BYTES")
            return "ok"
        except InferenceServerException as error:
            return str(error)

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        outcomes = list(pool.map(send, range(32)))
    for index, outcome in enumerate(outcomes):
        if index % 4 == 0:
            assert "not_an_image" in outcome, outcome
        else:
            assert outcome == "ok", f"request {index} failed with a neighbour's file: {outcome}"


def _success_count(metrics_url: str) -> float:
    with _open(metrics_url, timeout=10) as response:
        text = response.read().decode()
    prefix = f'nv_inference_request_success{{model="{MODEL}",version="1"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.slow
def test_a_healthy_cpu_server_logs_no_errors(triton_server):
    """Its start-up log has no `E`/`W` lines (tritonserver logged CUDA pool errors on CPU) but
    the two a driverless host always gets, which serve keeps off the console."""
    from flower_model.serving.triton import CPU_ONLY_NOISE, NVIDIA_DEVICE

    if NVIDIA_DEVICE.exists():
        pytest.skip("a GPU host: the CUDA pools are in use there")
    log = (triton_server["project"] / ".triton" / "tritonserver.log").read_text().splitlines()
    console = (triton_server["project"] / "serve.log").read_text().splitlines()
    assert any("Started HTTPService" in line for line in log), "the server started"
    flagged = [
        line
        for line in log
        if re.match(r"[EW]\d{4} ", line) and not any(noise in line for noise in CPU_ONLY_NOISE)
    ]
    assert not flagged, flagged
    assert not [line for line in console if re.match(r"[EW]\d{4} ", line)], console


@pytest.mark.slow
def test_the_console_gets_short_lines_and_the_server_log_its_tables(triton_server):
    """tritonserver's start-up tables (344 columns) go to its log file, not to serve's console."""
    from flower_model.constants import CONSOLE_WIDTH

    console = (triton_server["project"] / "serve.log").read_text().splitlines()
    log = (triton_server["project"] / ".triton" / "tritonserver.log").read_text()
    assert "serve: tritonserver's own log: .triton/tritonserver.log" in console
    assert "+----" in log and not any(line.startswith("+----") for line in console), console
    wide = [line for line in console if len(line) > CONSOLE_WIDTH]
    assert not wide, wide


@pytest.mark.slow
def test_bounded_load_has_no_errors_and_metrics_count_it(triton_server, photos):
    url = triton_server["http"]
    per_client = LOAD_REQUESTS // LOAD_CLIENTS
    before = _success_count(triton_server["metrics"])

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
    # serve's watchdog probes an idle server (flower_model/serving/watchdog.py): one round may
    # fall between `before` and the first request (direct and through the image model's BLS).
    probes = 2 * PROBE_REPEATS * make_config().serve.instances
    assert 0 <= _success_count(triton_server["metrics"]) - before - LOAD_REQUESTS <= probes


def _group_members(pgid: int) -> str:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_sigterm_stops_tritonserver_and_its_stubs(tmp_path, tiny_onnx):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver carrier) is absent")
    process, _ = start_server(tmp_path, tiny_onnx, subprocess.DEVNULL)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1, f"serve should run exactly one tritonserver: {children}"
        server = int(children[0])  # tritonserver leads its own group, with the stubs in it
        assert (
            "triton_python_backend_stub"
            in subprocess.run(
                ["ps", "-ww", "-o", "cmd=", "-g", str(server)], capture_output=True, text=True
            ).stdout
        )
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert _group_members(server).strip() == "", "tritonserver or a stub outlived serve"
        assert _group_members(process.pid).strip() == ""
    finally:
        stop_process(process)


GIGANTIC_SHAPE_BODY = json.dumps(
    {
        "inputs": [
            {"name": "images", "shape": [1, 100000, 100000, 3], "datatype": "UINT8", "data": [1]}
        ]
    }
).encode()
CRASH_BUDGET = 2  # serve.max_restarts in the crash tests
RESET_S = 8  # serve.restart_reset_s in the crash tests: short, so the stream test stays short


def _crash(url: str) -> None:
    """Send the ~100-byte body that makes tritonserver 2.51 abort (std::bad_alloc): no answer."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{MODEL}/infer", data=GIGANTIC_SHAPE_BODY, method="POST"
    )
    with pytest.raises((urllib.error.URLError, ConnectionError)) as caught:
        _open(request, timeout=30)
    assert not isinstance(caught.value, urllib.error.HTTPError), "no answer: it crashed"


def _crash_server(tmp_path, tiny_onnx, flavour: str):
    need_flavour(flavour)
    log = (tmp_path / "serve.log").open("w")
    budget = [f"serve.max_restarts={CRASH_BUDGET}", f"serve.restart_reset_s={RESET_S}"]
    process, ports = start_server(tmp_path, tiny_onnx, log, f"serve.flavour={flavour}", *budget)
    return process, f"127.0.0.1:{ports['http_port']}", log


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_stream_of_crashing_requests_never_ends_the_service(tmp_path, tiny_onnx, photos, flavour):
    """An upstream bug aborts tritonserver on a tiny body declaring a huge shape. A dense stream
    of them, more than twice serve.max_restarts, each sent as soon as the server is ready again:
    serve restarts it every time and still serves (it gave up after 5 such crashes before)."""
    process, url, log = _crash_server(tmp_path, tiny_onnx, flavour)
    ready = f"http://{url}/v2/models/{MODEL}/ready"
    try:
        for crash in range(2 * CRASH_BUDGET + 1):
            _crash(url)
            wait_for_http(ready, process, RESTART_BOUND_S)
            assert process.poll() is None, f"serve must still run after crash {crash + 1}"
        assert _infer("http", url, photos[:1])[0].shape == (1, 5)
        _assert_ready(url)
    finally:
        stop_process(process)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert text.count("tritonserver crashed after") == 2 * CRASH_BUDGET + 1
    assert "restarting in 1 s" in text and "restarting in 4 s" in text, "backoff, capped"
    assert "giving up" not in text


@pytest.mark.slow
def test_a_server_that_cannot_come_back_is_given_up(tmp_path, tiny_onnx):
    """After a crash, restarts that never become ready (here the repository breaks while the
    server runs): serve gives up after serve.max_restarts of them and exits non-zero."""
    need_flavour("python")
    from flower_model.serving.model_repository import write_repository

    repository = tmp_path / "repository"
    write_repository(repository, tiny_onnx, make_config().serve, "python", "onnx")
    log = (tmp_path / "serve.log").open("w")
    process, ports = start_server(
        tmp_path, tiny_onnx, log, f"--repository={repository}", f"serve.max_restarts={CRASH_BUDGET}"
    )
    url = f"127.0.0.1:{ports['http_port']}"
    try:
        for config in repository.glob("*/config.pbtxt"):
            config.write_text("this is not a model config\n")
        _crash(url)
        assert process.wait(timeout=RESTART_BOUND_S * CRASH_BUDGET) != 0
    finally:
        stop_process(process)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "tritonserver crashed after" in text and "(exit 134: terminate called" in text
    assert f"did not come back after {CRASH_BUDGET} restarts in a row" in text
    assert f"serve.max_restarts={CRASH_BUDGET}); giving up" in text


def _serve_fails(project: Path, *extra: str, ports: dict[str, int] | None = None):
    started = time.monotonic()
    result = subprocess.run(
        _serve_command(_project(project), ports or _ports(), *extra),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=FAILURE_TIMEOUT_S,
    )
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1], time.monotonic() - started


@pytest.mark.slow
def test_start_up_failures_are_one_line_errors(tmp_path, tiny_onnx):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver carrier) is absent")
    ports = _ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["grpc_port"]))
        taken.listen()
        line, _ = _serve_fails(tmp_path, f"--model={tiny_onnx}", ports=ports)
    assert line.startswith(f"error: serve.grpc_port={ports['grpc_port']}") and "not free" in line
    line, _ = _serve_fails(tmp_path, "--model=missing.onnx")
    assert "missing.onnx does not exist" in line
    empty = tmp_path / "empty_repository"
    empty.mkdir()
    line, _ = _serve_fails(tmp_path, f"--repository={empty}")
    assert "holds no model" in line and "triton-repo" in line
    # A repository Triton refuses: the model file is not ONNX. Triton exits; so does serve.
    from flower_model.serving.model_repository import write_repository

    broken = tmp_path / "broken_repository"
    write_repository(broken, tiny_onnx, make_config().serve, "python")
    (broken / MODEL / "1" / tiny_onnx.name).write_text("not a model")
    line, seconds = _serve_fails(tmp_path, f"--repository={broken}")
    assert f"failed to load '{MODEL}'" in line and "during start-up" in line
    print(f"a refused repository ended serve in {seconds:.1f} s")


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tmp_path, tiny_onnx):
    # TensorRT cannot be installed here: this checks the refusal, not an engine.
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver carrier) is absent")
    from flower_model.export.tensorrt import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the real engine path applies")
    line, _ = _serve_fails(tmp_path, f"--model={tiny_onnx}", "--backend=tensorrt")
    assert "--backend tensorrt cannot run here" in line and "--backend onnx" in line


@pytest.mark.parametrize("flavour", ["container", "python"])
def test_repository_parses_with_triton_protobuf(tmp_path, tiny_onnx, flavour):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from flower_model.serving.model_repository import write_repository

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_onnx, models / "model.onnx")
    config = make_config().serve
    written = write_repository(tmp_path / "repo", models / "model.onnx", config, flavour)
    assert [path.parent.name for path in written] == [MODEL, IMAGE_MODEL]
    parsed = {
        path.parent.name: text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        for path in written
    }
    classifier, image = parsed[MODEL], parsed[IMAGE_MODEL]
    names = OnnxClassifier(tiny_onnx).class_names
    for model in (classifier, image):
        assert model.max_batch_size == config.max_batch_size
        assert model.dynamic_batching.max_queue_delay_microseconds == config.max_queue_delay_us
        assert model.instance_group[0].count == config.instances
        assert json.loads(model.parameters["class_names"].string_value) == names
        assert int(model.parameters["image_size"].string_value) == TINY_SIZE
        assert [output.name for output in model.output][-2:] in (
            ["logits", "probs"],
            ["probs", "labels"],
        )
    assert list(classifier.input[0].dims) == [TINY_SIZE, TINY_SIZE, 3]
    assert classifier.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert (
        image.input[0].name == "files" and image.input[0].data_type == model_config_pb2.TYPE_STRING
    )
    assert image.backend == "python" and image.parameters["classifier"].string_value == MODEL
    if flavour == "container":
        assert classifier.platform == "onnxruntime_onnx"
        assert classifier.default_model_filename == "model.onnx"
    else:
        assert classifier.backend == "python"
        assert [output.name for output in classifier.output] == ["probs", "labels"]
        assert classifier.parameters["ort_spinning"].string_value == "false"  # serve's default
        assert classifier.parameters["ort_threads"].string_value == str(config.ort_threads)
    # Every file a config names exists.
    for name, model in parsed.items():
        folder = tmp_path / "repo" / name
        assert (folder / "labels.txt").read_text().split() == names
        model_file = model.default_model_filename or "model.py"
        assert (folder / "1" / model_file).is_file()
        for key in ("model_file", "plan_file"):
            if key in model.parameters:
                assert (folder / "1" / model.parameters[key].string_value).is_file()
    assert (tmp_path / "repo" / MODEL / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    # With an engine present the container flavour adds a tensorrt_plan model beside it.
    (models / "trt").mkdir()
    (models / "trt" / "model.plan").write_bytes(b"engine bytes, never loaded here")
    written = write_repository(tmp_path / "repo", models / "model.onnx", config, flavour)
    trt = [path for path in written if path.parent.name == f"{MODEL}_trt"]
    if flavour == "container":
        plan = text_format.Parse(trt[0].read_text(), model_config_pb2.ModelConfig())
        assert plan.platform == "tensorrt_plan" and plan.instance_group[0].kind == 1  # KIND_GPU
    else:
        assert trt == [], "the python flavour serves the engine inside flower_classifier"


def test_repository_refuses_bad_arguments(tmp_path, tiny_onnx):
    from flower_model.errors import FlowerModelError
    from flower_model.serving.model_repository import write_repository

    config = make_config().serve
    for kwargs, message in (
        ({"flavour": "docker"}, "--flavour must be one of"),
        ({"engine": "openvino"}, "--backend must be one of"),
        ({"flavour": "python", "engine": "tensorrt"}, "run `dvc repro build_trt`"),
    ):
        with pytest.raises(FlowerModelError, match=message):
            write_repository(tmp_path / "repo", tiny_onnx, config, **kwargs)
        assert not (tmp_path / "repo").exists(), "nothing half-written"
    with pytest.raises(FlowerModelError, match="does not exist"):
        write_repository(tmp_path / "repo", tmp_path / "none.onnx", config)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("protocol", "raw"), [("http", False), ("grpc", False), ("http", True), ("grpc", True)]
)
def test_client_command_matches_local_infer(
    triton_server, tiny_onnx, photo_files, tmp_path, protocol, raw
):
    """Run from a folder with no project files: the client asks the server for what it needs."""
    output = tmp_path / "remote.json"
    flags = [f"--url={triton_server[protocol]}", f"--output={output}", "--protocol", protocol]
    result = subprocess.run(
        [sys.executable, "-m", "flower_model.commands", "client", *flags, str(photo_files)]
        + (["--raw"] if raw else []),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, f"the broken file must show in the exit code: {result.stderr}"
    assert f"cannot classify {photo_files / 'broken.jpg'}: not_an_image" in result.stderr
    remote = {Path(item["path"]).name: item for item in json.loads(output.read_text())}
    local = classify(expand_paths([str(photo_files)]), OnnxClassifier(tiny_onnx), 3)
    assert sorted(remote) == sorted(Path(item.path).name for item in local)
    for item in local:
        served = remote[Path(item.path).name]
        assert served["error"].split(":")[0] == item.error.split(":")[0]
        assert served["predicted"] == item.predicted
        assert served["probability"] == pytest.approx(item.probability, abs=1e-5)


def test_client_without_a_server_is_a_one_line_error(tmp_path, photo_files):
    port = free_port()
    for protocol in ("http", "grpc"):
        result = subprocess.run(
            [sys.executable, "-m", "flower_model.commands", "client", str(photo_files)]
            + [f"--url=127.0.0.1:{port}", f"--protocol={protocol}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            line for line in result.stderr.strip().splitlines() if line.startswith("error: ")
        ]
        assert f"no Triton server answers at 127.0.0.1:{port} ({protocol})" in result.stderr


@pytest.mark.slow
def test_dynamic_batching_forms_batches(triton_server, photos):
    """Concurrent batch-1 requests are run as larger batches (Triton's own statistics)."""
    module, client = _client("grpc", triton_server["grpc"])
    before = client.get_inference_statistics(MODEL).model_stats[0]

    def send(index: int) -> None:
        _infer("grpc", triton_server["grpc"], photos[index % len(photos)][None])

    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        list(pool.map(send, range(LOAD_CLIENTS * 25)))
    after = client.get_inference_statistics(MODEL).model_stats[0]
    client.close()
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    sizes = {stat.batch_size for stat in after.batch_stats}
    assert inferences >= LOAD_CLIENTS * 25
    assert executions < inferences and max(sizes) > 1, (inferences, executions, sizes)


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory, tiny_onnx, tiny_processed) -> Path:
    """model.onnx and model.int8.onnx side by side, as export_onnx leaves them."""
    from flower_model.export.onnx import quantize_int8
    from flower_model.serving.model_repository import int8_model

    folder = tmp_path_factory.mktemp("int8_models")
    shutil.copy(tiny_onnx, folder / "model.onnx")
    calibration = np.load(images_path(tiny_processed / "data" / "processed", "val"))[:32]
    quantize_int8(folder / "model.onnx", int8_model(folder / "model.onnx"), calibration)
    return folder / "model.onnx"


@pytest.mark.slow
def test_container_flavour_serves_int8_like_in_process(tmp_path, int8_models, photos):
    need_flavour("container")
    from flower_model.serving.model_repository import int8_model

    with (tmp_path / "serve.log").open("w") as log:
        process, ports = start_server(tmp_path, int8_models, log, "serve.int8=true")
    try:
        for protocol in ("http", "grpc"):
            url = f"127.0.0.1:{ports[f'{protocol}_port']}"
            probs, labels = _infer(protocol, url, photos[:8])
            local = OnnxClassifier(int8_model(int8_models))
            expected = local.probs(photos[:8])
            assert np.allclose(probs, expected, atol=1e-6)
            assert [label[0].decode() for label in labels] == [
                local.class_names[k] for k in expected.argmax(1)
            ]
        _, client = _client("http", f"127.0.0.1:{ports['http_port']}")
        assert client.get_model_config(MODEL)["default_model_filename"] == "model.int8.onnx"
        client.close()
    finally:
        stop_process(process)
    assert FALLBACK_LINE not in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_serve_falls_back_to_python_when_the_backend_is_not_built(tmp_path, tiny_onnx, photos):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver carrier) is absent")
    env = {**os.environ, "TRITON_BACKEND_DIR": str(tmp_path / "never_built")}
    ports = _ports()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            _serve_command(_project(tmp_path), ports, f"--model={tiny_onnx}"),
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"127.0.0.1:{ports['http_port']}"
        wait_for_http(f"http://{url}/v2/models/{MODEL}/ready", process, START_TIMEOUT_S)
        probs, labels = _infer("http", url, photos[:2])  # the python flavour's `labels` output
        assert probs.shape == (2, 5) and labels.shape == (2, 1)
    finally:
        stop_process(process)
    lines = [line for line in log_path.read_text().splitlines() if FALLBACK_LINE in line]
    assert len(lines) == 1 and "make triton-backend" in lines[0], lines


@pytest.mark.slow
def test_backend_builds_from_vendored_sources_and_a_second_run_does_nothing(tmp_path):
    """The build script in a clean folder, then again. The served runtime is the very library
    of the Python onnxruntime wheel, so served and in-process figures compare one runtime."""
    script = REPO_ROOT / "scripts" / "build_triton_backend.sh"
    vendor = REPO_ROOT.parent / "shared" / "vendor" / "triton-r24.10"
    if not vendor.is_dir():
        pytest.skip(f"{vendor} is absent: this test builds from the vendored sources")
    if not all(shutil.which(tool) for tool in ("cmake", "g++", "patchelf")):
        pytest.skip("the build tools are missing: run `make triton-build-deps` (root)")
    env = {**os.environ, "TRITON_BACKEND_DIR": str(tmp_path / "backend")}
    first = subprocess.run([script], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    built = tmp_path / "backend" / "backends" / "onnxruntime"
    assert sorted(path.name for path in built.iterdir()) == [
        "libonnxruntime.so.1",
        "libtriton_onnxruntime.so",
    ]
    needed = subprocess.run(
        ["readelf", "-d", str(built / "libtriton_onnxruntime.so")], capture_output=True, text=True
    ).stdout
    assert "libtritonserver-" in needed and "[libtritonserver.so]" not in needed
    import onnxruntime

    wheel_library = (
        Path(onnxruntime.__file__).parent / "capi" / f"libonnxruntime.so.{onnxruntime.__version__}"
    )
    assert (built / "libonnxruntime.so.1").read_bytes() == wheel_library.read_bytes()
    assert f"(ONNX Runtime {onnxruntime.__version__})" in first.stdout
    mtime = (built / "libtriton_onnxruntime.so").stat().st_mtime_ns
    second = subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "up to date" in second.stdout, second.stderr
    assert (built / "libtriton_onnxruntime.so").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_backend_build_without_its_tools_is_a_one_line_error(tmp_path):
    script = REPO_ROOT / "scripts" / "build_triton_backend.sh"
    bare = tmp_path / "bin"  # a PATH with bash and coreutils only: no cmake
    bare.mkdir()
    for tool in ("bash", "dirname", "realpath"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    result = subprocess.run(
        [str(bare / "bash"), str(script)],
        env={"PATH": str(bare), "TRITON_BACKEND_DIR": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: build_triton_backend: cmake is not installed; run `make triton-build-deps` "
        "(as root: apt-get install cmake g++ rapidjson-dev patchelf)"
    ]
    assert not (tmp_path / "out").exists(), "nothing half-written"


@pytest.mark.slow
def test_perf_analyzer_measures_the_served_model(triton_server):
    """A smoke test of benchmarks/serving.py's driver: a few hundred requests, output parsed."""
    from benchmarks.serving import PERF_ANALYZER, perf_analyzer

    if not PERF_ANALYZER.is_file():
        pytest.skip(f"{PERF_ANALYZER} is absent: run `make perf-analyzer`")
    for protocol in ("http", "grpc"):
        result = perf_analyzer(
            triton_server[protocol], protocol, MODEL, concurrency=2, requests=300, shape=None
        )
        assert result["count"] >= 300
        # every request perf_analyzer sent (its profile export): the measured windows and any
        # unstable ones before them, so at least the measured count, and its p50 among them
        latencies = result["latencies_ms"]
        assert len(latencies) >= result["count"] and np.all(latencies > 0)
        assert np.percentile(latencies, 1) <= result["p50_ms"] <= np.percentile(latencies, 99)
        assert result["throughput"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
        assert set(result["server"]) == {
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
            "overhead",
        }
        assert all(value >= 0 for value in result["server"].values())
