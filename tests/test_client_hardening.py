"""`flower-model client` and `infer` as a hostile user drives them (issue 38): a scheme in --url,
the metrics port, full disks, odd file names, `--batch` over the server's limit, `-- -file`, and a
server that dies mid-run (restarted by serve, or gone for good)."""

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flower_model.errors import FlowerModelError
from flower_model.serving import client as client_module
from flower_model.serving.bundle import SHARED_MEMORY, shm_prefix
from flower_model.serving.client import server_address
from tests.conftest import stop_process
from tests.helpers.cli import run_in_process
from tests.helpers.serve import tritonserver_pid
from tests.test_serving import MAX_BATCH, need_flavour, start_server

PHOTO_COPIES = 3  # each mini-dataset photo this many times: a run of a few dozen batches
KILL_AFTER_BATCHES = 3


def _command(*words: str, stdout=subprocess.PIPE, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "flower_model.commands", *words],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def many_photos(mini_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for index, path in enumerate(sorted(mini_dataset.rglob("*.jpg"))):
        for copy in range(PHOTO_COPIES):
            shutil.copy(path, folder / f"{index:03d}_{copy}.jpg")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_onnx):
    need_flavour("python")
    project = tmp_path_factory.mktemp("client_serve")
    with (project / "serve.log").open("w") as log:
        process, ports = start_server(project, tiny_onnx, log, "serve.flavour=python")
        try:
            yield {"process": process, "project": project, **ports}
        finally:
            stop_process(process)


class TestUrl:
    @pytest.mark.parametrize(
        ("url", "protocol", "address"),
        [
            ("http://127.0.0.1:8000", "http", "127.0.0.1:8000"),
            ("http://127.0.0.1:8000/", "http", "127.0.0.1:8000"),
            ("grpc://localhost:8001", "grpc", "localhost:8001"),
            ("127.0.0.1:8000", "http", "127.0.0.1:8000"),
        ],
    )
    def test_a_scheme_matching_the_protocol_is_accepted(self, url, protocol, address):
        assert server_address(url, protocol) == address

    @pytest.mark.parametrize(
        ("url", "protocol", "reason"),
        [
            ("https://h:8000", "http", "https:// is not --protocol http"),
            ("grpc://h:8001", "http", "give --protocol grpc"),
            ("http://h", "http", "is not HOST:PORT"),
            ("h:8000/v2", "http", "is not HOST:PORT"),
        ],
    )
    def test_a_wrong_url_is_one_line(self, url, protocol, reason):
        with pytest.raises(FlowerModelError, match=reason):
            server_address(url, protocol)

    @pytest.mark.slow
    def test_scheme_urls_reach_the_server(self, server, many_photos, tmp_path):
        photo = sorted(many_photos.iterdir())[0]
        for protocol, port in (("http", "http_port"), ("grpc", "grpc_port")):
            url = f"{protocol}://127.0.0.1:{server[port]}"
            result = _command("client", str(photo), "--url", url, "--protocol", protocol)
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("path,predicted")

    @pytest.mark.slow
    @pytest.mark.parametrize("protocol", ["http", "grpc"])
    def test_the_metrics_port_is_one_line(self, server, many_photos, protocol):
        photo = sorted(many_photos.iterdir())[0]
        url = f"127.0.0.1:{server['metrics_port']}"
        result = _command("client", str(photo), "--url", url, "--protocol", protocol)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ") and url in lines[0]


@pytest.mark.slow
class TestOutput:
    def test_stdout_to_a_full_disk_is_one_line(self, server, many_photos):
        url = f"127.0.0.1:{server['http_port']}"
        with open("/dev/full", "w") as full:
            result = _command("client", str(many_photos), "--url", url, stdout=full)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "error: no space left on /dev/full; free space or choose another path"
        ]

    def test_a_non_utf8_output_name_works(self, server, many_photos, tmp_path):
        url = f"127.0.0.1:{server['http_port']}"
        name = os.fsdecode(b"pr\xe9dictions.csv")  # Latin-1 bytes: not UTF-8
        result = _command("client", str(many_photos), "--url", url, "--output", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        written = tmp_path / name
        assert len(list(csv.DictReader(written.open()))) == len(list(many_photos.iterdir()))

    def test_batch_above_the_server_limit_is_capped_with_a_line(self, server, many_photos):
        url = f"127.0.0.1:{server['http_port']}"
        result = _command("client", str(many_photos), "--url", url, "--batch", "100")
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"--batch 100 is above the server's max_batch_size {MAX_BATCH} for "
            f"flower_classifier_image; sending {MAX_BATCH} photos per request"
        ]


def _kill_after(monkeypatch, batches: int, kill) -> None:
    """Instrument the real client: after `batches` answered requests, `kill()` the server."""
    real_probs = client_module.TritonClassifier.probs
    answered = []

    def probs(self, items):
        result = real_probs(self, items)
        answered.append(len(items))
        if len(answered) == batches:
            kill()
        return result

    monkeypatch.setattr(client_module.TritonClassifier, "probs", probs)


def _kill_all(serve: subprocess.Popen, tritonserver: int) -> None:
    """serve and its server gone at once (a host that went away): nothing restarts it."""
    os.killpg(serve.pid, signal.SIGKILL)
    os.killpg(tritonserver, signal.SIGKILL)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.mark.slow
class TestServerGoesAway:
    @pytest.mark.parametrize("protocol", ["http", "grpc"])
    def test_a_restarted_server_is_waited_for(
        self, server, many_photos, tmp_path, monkeypatch, protocol
    ):
        tritonserver = tritonserver_pid(server["process"])
        _kill_after(monkeypatch, KILL_AFTER_BATCHES, lambda: os.kill(tritonserver, signal.SIGKILL))
        output = tmp_path / "out.csv"
        port = server["http_port" if protocol == "http" else "grpc_port"]
        flags = ["--url", f"127.0.0.1:{port}", "--protocol", protocol, "--batch", "2"]
        code, _, err = run_in_process(
            tmp_path, "client", str(many_photos), *flags, "--output", str(output)
        )
        assert code == 0, err
        assert "stopped answering" in err and "answers again" in err
        rows = _rows(output)
        assert len(rows) == len(list(many_photos.iterdir())) and all(r["predicted"] for r in rows)

    def test_a_server_gone_for_good_keeps_the_results_so_far(
        self, tiny_onnx, many_photos, tmp_path, monkeypatch
    ):
        need_flavour("python")
        with (tmp_path / "serve.log").open("w") as log:
            process, ports = start_server(tmp_path / "p", tiny_onnx, log, "serve.flavour=python")
        try:
            monkeypatch.setattr(client_module, "RETRY_WINDOW_S", 3.0)
            server = tritonserver_pid(process)
            _kill_after(monkeypatch, KILL_AFTER_BATCHES, lambda: _kill_all(process, server))
            output = tmp_path / "out.csv"
            flags = ["--url", f"127.0.0.1:{ports['http_port']}", "--batch", "2"]
            code, _, err = run_in_process(
                tmp_path, "client", str(many_photos), *flags, "--output", str(output)
            )
        finally:
            stop_process(process)
            for region in SHARED_MEMORY.glob(shm_prefix(process.pid) + "*"):
                region.unlink()  # a SIGKILLed serve cannot remove its server's regions
        assert code == 1
        rows = _rows(output)
        done = [row for row in rows if row["predicted"]]
        assert len(done) == 2 * KILL_AFTER_BATCHES, "the answered batches are kept"
        left = [row for row in rows if row["error"].startswith("not_classified")]
        assert len(left) == len(rows) - len(done)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"{len(left)} of {len(rows)} photos" in errors[0]
        assert "did not come back within 3 s" in errors[0]
        assert "Traceback" not in err


class TestInferCommandLine:
    def test_stdout_to_a_full_disk_is_one_line(self, tiny_onnx, many_photos):
        with open("/dev/full", "w") as full:
            result = _command("infer", str(many_photos), "--model", str(tiny_onnx), stdout=full)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "error: no space left on /dev/full; free space or choose another path"
        ]

    def test_a_leading_dash_file_after_the_separator(self, tiny_onnx, many_photos, tmp_path):
        photo = tmp_path / "-leading.jpg"
        shutil.copy(sorted(many_photos.iterdir())[0], photo)
        code, out, err = run_in_process(
            tmp_path, "infer", "--model", str(tiny_onnx), "--", "-leading.jpg"
        )
        assert code == 0, err
        assert out.splitlines()[1].startswith("-leading.jpg,")
        code, _, err = run_in_process(tmp_path, "infer", "-leading.jpg", "--model", "x.onnx")
        assert code == 2 and "unknown flag -leading.jpg" in err, "without --: a flag, as before"


class TestSpecialOutputs:
    @pytest.mark.parametrize("command", ["infer", "client"])
    def test_output_to_a_device_is_one_line(self, command, many_photos, tmp_path):
        code, _, err = run_in_process(tmp_path, command, str(many_photos), "--output", "/dev/full")
        assert code == 2
        assert err.strip().splitlines() == [
            "error: --output must end in .csv or .json, got /dev/full"
        ]

    def test_a_special_file_is_written_in_place_never_replaced(self, tmp_path):
        from flower_model.errors import OutputError
        from flower_model.io_utils import write_text

        full = Path("/dev/full")
        with pytest.raises(OutputError, match="no space left on /dev/full"):
            write_text(full, "predictions\n")
        assert full.is_char_device(), "the device is still a device"
        fifo = tmp_path / "pipe.csv"
        os.mkfifo(fifo)
        reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
        write_text(fifo, "a,b\n")
        assert reader.communicate(timeout=30)[0] == b"a,b\n"
        assert fifo.is_fifo() and [path.name for path in tmp_path.iterdir()] == ["pipe.csv"]
