"""serve under signals and a server that stops answering (issue 38): SIGHUP stops it cleanly like
SIGTERM; a paused tritonserver (SIGSTOP) or a dead python stub (health still 200) is noticed by
a request through each model and restarted with one line, within a bound."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flower_model.serving.bundle import SHARED_MEMORY, shm_prefix
from flower_model.serving.watchdog import (
    PROBE_FAILURES,
    PROBE_INTERVAL_S,
    PROBE_TIMEOUT_S,
    probe_request,
)
from tests.conftest import stop_process, wait_for_http
from tests.helpers.serve import tritonserver_pid
from tests.test_serving import IMAGE_MODEL, MODEL, need_flavour, start_server

IMAGES_INPUT = {"name": "images", "data_type": "TYPE_UINT8", "dims": ["8", "8", "3"]}
FILES_INPUT = {"name": "files", "data_type": "TYPE_STRING", "dims": ["1"]}
# A round that times out costs the interval, the metrics read and one probe's timeout.
DETECTION_BOUND_S = PROBE_FAILURES * (PROBE_INTERVAL_S + 2 * PROBE_TIMEOUT_S) + 10
RESTART_BOUND_S = 120
STOP_BOUND_S = 60
# serve's own (ONNX Runtime in the stubs leaves a `.ses` file in TMPDIR, not serve's to remove)
WORK_FOLDERS = "flower-model-serve-*"


def _stubs(server: int) -> list[int]:
    listed = subprocess.run(
        ["ps", "-ww", "-o", "pid=,cmd=", "-g", str(server)], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in listed.splitlines() if "python_backend_stub" in line]


def _wait_for_line(log: Path, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in log.read_text().splitlines() if text in line]
        if found:
            return found[-1]
        time.sleep(1)
    raise AssertionError(f"no {text!r} in serve's log within {timeout_s} s:\n{log.read_text()}")


@pytest.fixture
def served(tmp_path, tiny_onnx, monkeypatch):
    """serve (python flavour) with its work folder under a test-owned TMPDIR."""
    need_flavour("python")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process, ports = start_server(tmp_path / "project", tiny_onnx, log, "serve.flavour=python")
    try:
        yield {"process": process, "ports": ports, "log": log_path, "temp": temp}
    finally:
        stop_process(process)
        for region in SHARED_MEMORY.glob(shm_prefix(process.pid) + "*"):
            region.unlink()  # only if the test failed before serve could remove them


def _ready(served: dict) -> None:
    for name in (MODEL, IMAGE_MODEL):
        url = f"http://127.0.0.1:{served['ports']['http_port']}/v2/models/{name}/ready"
        wait_for_http(url, served["process"], RESTART_BOUND_S)


class TestProbeRequests:
    def test_each_contract_input_gets_a_request(self):
        photos = {"max_batch_size": 64, "input": [IMAGES_INPUT]}
        length, body = probe_request(photos)
        header = json.loads(body[:length])["inputs"][0]
        assert header["shape"] == [1, 8, 8, 3] and len(body) - length == 8 * 8 * 3
        files = {"max_batch_size": 64, "input": [{**FILES_INPUT}]}
        length, body = probe_request(files)
        size = int.from_bytes(body[length : length + 4], "little")
        assert body[length + 4 :].startswith(b"\x89PNG") and len(body) == length + 4 + size

    @pytest.mark.parametrize(
        "inputs",
        [
            [{**IMAGES_INPUT, "dims": [-1, -1, 3]}],  # a variable size: no request fits all
            [{**IMAGES_INPUT, "data_type": "TYPE_FP32"}],  # not the project's contract
            [IMAGES_INPUT, FILES_INPUT],
        ],
    )
    def test_other_models_are_not_probed(self, inputs):
        assert probe_request({"max_batch_size": 64, "input": inputs}) is None


@pytest.mark.slow
class TestStopSignals:
    def test_sighup_stops_like_sigterm_and_leaves_nothing(self, served):
        process = served["process"]
        server = tritonserver_pid(process)
        assert list(served["temp"].glob(WORK_FOLDERS)), "the work folder exists while serving"
        os.kill(process.pid, signal.SIGHUP)
        assert process.wait(timeout=STOP_BOUND_S) == 0
        assert "tritonserver exited with 0" in served["log"].read_text()
        assert list(served["temp"].glob(WORK_FOLDERS)) == [], "no temp folder left"
        assert subprocess.run(["pgrep", "-g", str(server)], capture_output=True).stdout == b""
        assert list(SHARED_MEMORY.glob(shm_prefix(process.pid) + "*")) == []


@pytest.mark.slow
class TestStoppedAnswering:
    def test_a_paused_server_is_restarted(self, served):
        server = tritonserver_pid(served["process"])
        os.kill(server, signal.SIGSTOP)
        line = _wait_for_line(served["log"], "tritonserver stopped answering", DETECTION_BOUND_S)
        assert "probe rounds in a row failed (no answer" in line and "restarting in" in line
        _ready(served)
        assert tritonserver_pid(served["process"]) != server

    def test_a_dead_python_stub_is_restarted(self, served):
        server = tritonserver_pid(served["process"])
        stubs = _stubs(server)
        assert stubs, "the python flavour runs stubs"
        os.kill(stubs[0], signal.SIGKILL)
        line = _wait_for_line(served["log"], "tritonserver stopped answering", DETECTION_BOUND_S)
        assert "is not healthy" in line, line
        _ready(served)
        regions = list(SHARED_MEMORY.glob(shm_prefix(served["process"].pid) + "*"))
        assert len(regions) <= len(stubs), "the killed server's shared memory was removed"
