"""`flower-model serve`: the real `tritonserver` in the foreground, on a model repository.

The binary, its python backend and the per-Python stubs come from the `nvidia-pytriton` wheel,
which is only their carrier here: pytriton's Python proxy is not in the request path. At start
the tree is copied to a work folder with the stub for the running Python (what pytriton itself
does) and Triton's native onnxruntime backend (built from its r24.10 sources by `make
triton-backend`), the repository is written (`model_repository.py`, serve.flavour: `container` on
the native backend, else or when it is not built `python`) unless one is given, and
`tritonserver` runs on it: its output goes to .triton/tritonserver.log (its warnings, errors and
crashes to the console too), SIGTERM/SIGINT/SIGHUP stop it (forwarded as SIGTERM/SIGINT) and
remove the work folder, its exit code is ours.

Restarts: a server that crashes after it was ready (tritonserver 2.51 aborts on some requests),
or that stops answering requests through a model (paused, a dead python stub: `watchdog.py`), is
always restarted, after 1, 2, 4, 4... s (the backoff starts again once a server stayed ready for
serve.restart_reset_s), so no stream of requests ends the service. serve gives up only when the
server cannot come back: serve.max_restarts restarts in a row that never became ready.
"""

import collections
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flower_model.config import ServeConfig
from flower_model.constants import CONSOLE_WIDTH
from flower_model.serving.bundle import (
    NVIDIA_DEVICE,
    STOP_TIMEOUT_S,
    ServeError,
    native_backend_missing,
    prepare_server,
    remove_shared_memory,
    server_command,
    server_env,
)
from flower_model.serving.watchdog import PROBES_FAILED, is_ready, watch

START_TIMEOUT_S = 120  # a CPU start with two python-backend models takes ~5 s here
POLL_S = 0.2
LOG_TAIL_LINES = 200  # kept to name the reason when start-up fails
LOAD_FAILURE = "failed to load '"  # how tritonserver logs a model it could not load
BACKOFF_S, BACKOFF_MAX_S = 1.0, 4.0  # wait before restart k: 1, 2, 4, 4... s (restarts stay fast)
CRASH_MARKERS = re.compile(r"^terminate called|^Signal \(\d+\) received|Segmentation fault")
SERVER_LOG = Path(".triton") / "tritonserver.log"  # beside where serve runs; appended per start
# What of tritonserver's output the console shows: its warning and error lines ("W1207 ...",
# "E1207 ...") and crash lines; the rest (start-up tables, model loading) is in SERVER_LOG.
CONSOLE_LINE = re.compile(rf"^[EW]\d{{4}} |{CRASH_MARKERS.pattern}")
PR_SET_PDEATHSIG = 1  # prctl option: the child gets a signal when its parent dies
SIGNAL_EXIT_BASE = 128  # shell convention: killed by signal N exits 128 + N
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each stops serve cleanly


def check_ports(config: ServeConfig) -> None:
    """Fail before anything starts when a port is taken (Triton would fail later, less clearly)."""
    for key in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(config, key)
        with socket.socket() as probe:
            # As servers do: a port left in TIME_WAIT by a server that just stopped is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, port))
            except OSError as error:
                raise ServeError(
                    f"serve.{key}={port}: {config.host}:{port} is not free ({error.strerror}); "
                    f"stop what uses it or pick another port, e.g. serve.{key}={port + 10}"
                ) from None


# What tritonserver 2.51 still logs on a host without a driver once the pools are off (an `E`
# line on every healthy start); dropped from the console there, kept for failure reasons.
CPU_ONLY_NOISE = ('"CudaDriverHelper has not been initialized."', '"CUDA memory pool disabled"')


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if `flower-model serve` itself is killed."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _forward(stream, target, tail: collections.deque, log) -> None:
    """Every line of tritonserver's `stream` into `log` (its start-up tables were 344 columns
    wide on the console); only its warnings, errors and crash lines also to `target`, cut to
    CONSOLE_WIDTH (the whole line is in the log)."""
    quiet = CPU_ONLY_NOISE if not NVIDIA_DEVICE.exists() else ()
    for line in iter(stream.readline, ""):
        tail.append(line.rstrip())
        log.write(line)
        log.flush()
        if any(noise in line for noise in quiet):
            continue  # a CPU host has no CUDA to initialise: not an error here
        if not CONSOLE_LINE.search(line):
            continue
        text = line.rstrip()
        cut = text if len(text) <= CONSOLE_WIDTH else text[: CONSOLE_WIDTH - 1] + "…"
        target.write(cut + "\n")
        target.flush()


def _failure_reason(tail: collections.deque) -> str:
    """The model Triton failed to load and why, else the last line naming an error or crash."""
    for line in tail:  # the first such line has the reason; a shorter one follows it
        if LOAD_FAILURE in line:
            return line[line.index(LOAD_FAILURE) :].split("\\n", 1)[0].rstrip('"')
    crash = [line.strip() for line in tail if CRASH_MARKERS.search(line)]
    if crash:  # e.g. "terminate called after throwing ... 'std::bad_alloc'; Signal (6) received."
        return "; ".join(crash[-3:])
    errors = [line for line in tail if line.startswith("error")]
    return (errors or [line for line in tail if line.strip()] or ["no output"])[-1].strip()


def _exit_code(returncode: int) -> int:
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def run_server(server: Path, repository: Path, config: ServeConfig) -> int:
    """Run tritonserver until stopped; restart it when it crashes; return the exit code.

    A crash after it was ready is always restarted after a short backoff; serve gives up after
    serve.max_restarts restarts in a row that never became ready. A failure of the first start
    is not retried (a retry would fail the same way).
    """
    stopping = threading.Event()
    running: list[subprocess.Popen] = []

    def forward_signal(signum, frame) -> None:
        stopping.set()
        if running and running[-1].poll() is None:  # a hang-up stops it as SIGTERM does
            running[-1].send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for stop in STOP_SIGNALS:
        signal.signal(stop, forward_signal)
    burst, failed_restarts = 0, 0  # crashes close together (backoff); restarts that never came up
    while True:
        code, ready_s, reason = _run_once(server, repository, config, stopping, running)
        if stopping.is_set() or (ready_s is None and not burst):
            return code  # stopped, or the first start failed
        if ready_s is None:
            failed_restarts += 1
            if failed_restarts >= config.max_restarts:
                print(
                    f"error: tritonserver did not come back after {failed_restarts} restarts in "
                    f"a row (exit {code}: {reason}; serve.max_restarts={config.max_restarts}); "
                    "giving up",
                    file=sys.stderr,
                )
                return code or 1
            what = f"restart {failed_restarts} of {config.max_restarts} failed (exit {code})"
        else:
            failed_restarts = 0
            if ready_s >= config.restart_reset_s:
                burst = 0  # it served for a while: the backoff starts short again
            verb = "stopped answering" if reason.startswith(PROBES_FAILED) else "crashed"
            what = f"tritonserver {verb} after {ready_s:.0f} s ready (exit {code}: {reason})"
        burst += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (burst - 1))
        print(f"{what}; restarting in {delay:.0f} s", file=sys.stderr, flush=True)
        if stopping.wait(delay):
            return code


def _run_once(server, repository, config, stopping, running) -> tuple[int, float | None, str]:
    """One tritonserver process: (exit code, seconds it was ready before it crashed, or None
    when it was stopped or failed during start-up; reason)."""
    tail: collections.deque = collections.deque(maxlen=LOG_TAIL_LINES)
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    log = SERVER_LOG.open("a")
    print(f"serve: tritonserver's own log: {SERVER_LOG}", flush=True)
    process = subprocess.Popen(
        server_command(server, repository, config),
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its own group: the stubs it starts are stopped with it
        preexec_fn=_die_with_parent,
    )
    running.append(process)
    forwarders = [
        threading.Thread(target=_forward, args=(stream, target, tail, log), daemon=True)
        for stream, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))
    ]
    for thread in forwarders:
        thread.start()
    try:
        code, ready_s, hung = _supervise(process, config, stopping, tail)
    finally:
        if process.poll() is None:  # an exception on our side: never leave the server behind
            process.terminate()
            process.wait(timeout=STOP_TIMEOUT_S + 10)
        for thread in forwarders:
            thread.join(timeout=5)
        log.close()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any stub the server left behind
        except ProcessLookupError:
            pass
        remove_shared_memory()
        running.clear()
    return code, None if stopping.is_set() else ready_s, hung or _failure_reason(tail)


def _supervise(process, config: ServeConfig, stopping, tail) -> tuple[int, float | None, str]:
    """Wait for ready (bounded), then for the exit, probing each model meanwhile: (exit code,
    seconds ready or None, why the watchdog killed it or "")."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not stopping.is_set() and not is_ready(config):
        if process.poll() is not None:
            code = _exit_code(process.returncode)
            print(
                f"error: tritonserver exited with {code} during start-up: {_failure_reason(tail)}",
                file=sys.stderr,
            )
            return code or 1, None, ""
        if time.monotonic() > deadline:
            print(
                f"error: tritonserver was not ready within {START_TIMEOUT_S} s: "
                f"{_failure_reason(tail)}; stopping it",
                file=sys.stderr,
            )
            process.terminate()
            process.wait(timeout=STOP_TIMEOUT_S + 10)
            return 1, None, ""
        time.sleep(POLL_S)
    if not stopping.is_set():
        print(
            f"serving {config.model_name} on http://{config.host}:{config.http_port} and "
            f"grpc {config.host}:{config.grpc_port} (metrics :{config.metrics_port})",
            flush=True,
        )
    ready_at = time.monotonic()
    hung = watch(process, config, stopping) or ""
    code = _exit_code(process.returncode)
    if stopping.is_set():
        print(f"tritonserver exited with {code}", flush=True)
    return code, time.monotonic() - ready_at, hung


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def served_flavour(config: ServeConfig, engine: str) -> str:
    """serve.flavour, or python (with one line saying why) when the native backend cannot run."""
    if config.flavour == "python":
        return "python"
    if engine == "tensorrt":  # the python flavour's stub runs the engine; no tensorrt backend here
        return "python"
    missing = native_backend_missing()
    if missing:
        print(f"serve: {missing}; serving the python flavour instead", file=sys.stderr, flush=True)
        return "python"
    return "container"


def served_model(model: Path, config: ServeConfig) -> Path:
    """--model, or its INT8 variant with serve.int8=true (refused when it was not exported)."""
    from flower_model.serving.model_repository import int8_model

    if not config.int8:
        return model
    quantized = int8_model(model)
    if not quantized.is_file():
        raise ServeError(
            f"serve.int8=true needs {quantized}: run `dvc repro export_onnx`, or serve fp32 "
            "(serve.int8=false)"
        )
    return quantized


def serve(
    model: Path, config: ServeConfig, engine: str = "onnx", repository: Path | None = None
) -> int:
    """Serve `repository` (or one written from `model` in serve.flavour) until stopped; return
    the exit code. The CLI's `--flavour F` and `--int8` are serve.flavour / serve.int8."""
    from flower_model.pipeline.model_check import verify_out
    from flower_model.serving.model_repository import model_metadata, write_repository

    if repository is not None and not sorted(repository.glob("*/config.pbtxt")):
        raise ServeError(
            f"--repository {repository} holds no model (no */config.pbtxt): write one with "
            "`flower-model triton-repo DIR --flavour python`"
        )
    if engine == "tensorrt":
        from flower_model.export.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise ServeError(f"--backend tensorrt cannot run here: {reason}; use --backend onnx")
    check_ports(config)
    for stop in STOP_SIGNALS:  # until the server runs: unwind, so the work folder is removed
        signal.signal(stop, _interrupt)
    served = served_model(model, config) if repository is None else model
    if repository is None:
        verify_out(served, Path.cwd())  # bytes dvc.lock does not record: one line, nothing else
        model_metadata(served)  # a model that cannot serve: its error, nothing else
    with tempfile.TemporaryDirectory(prefix="flower-model-serve-") as work:
        if repository is None:
            repository = Path(work) / "models"
            write_repository(
                repository,
                served,
                config,
                served_flavour(config, engine),
                engine,
            )
        return run_server(prepare_server(Path(work)), repository.resolve(), config)
