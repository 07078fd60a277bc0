"""Benchmark: in-process ONNX Runtime vs the same model served by `flower-model serve`, in both
flavours (container: Triton's native onnxruntime backend; python: the python-backend stub).

    python benchmarks/serving.py [--model models/model.onnx] [--requests 1000] [--photo F.jpg]
                                 [--threads N]  (serve.ort_threads, on both sides)
                                 [--instances N]  (serve.instances)
(threads and instances default to configs/serve/, what `flower-model serve` runs)

Needs `make triton-backend` (the container flavour) and `make perf-analyzer` (NVIDIA's client).
Starts `flower-model serve` on free loopback ports once per flavour and prints, from this one run:
- the best in-process throughput over batch sizes, with the
  server's thread settings (spinning as each flavour's server does it);
- batch-1 latency at concurrency 1 in alternating blocks: ROUNDS rounds, each an in-process block
  and one perf_analyzer run per protocol (rotating order, so drift on the host hits every path
  alike); p50/p99 over every request of the blocks (perf_analyzer's per-request profile export),
  served p50 minus in-process p50, and perf_analyzer's server-side split (queue, compute
  input/infer/output, overhead), mean us per request;
- perf_analyzer at concurrency 8 over HTTP and gRPC: throughput as a fraction of the best
  in-process figure, p50/p99 and the split;
- the encoded-photo model (JPEG bytes in) beside in-process decode + ORT (own client: perf_analyzer
  sends synthetic tensors, not real photo files).
Stops each server by PID. Goals (issue 27): native p50 overhead <= 0.5 ms gRPC / 0.7 ms HTTP;
8 clients >= 95% of in-process throughput.
"""

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from flower_model.config import load_config
from flower_model.serving.contract import FILES, INPUT, PROBS
from flower_model.serving.infer import OnnxClassifier

REPO = Path(__file__).resolve().parents[1]
PERF_ANALYZER = REPO / "build" / "perf_analyzer" / "bin" / "perf_analyzer"
PERF_LIBS = REPO / "build" / "perf_analyzer" / "lib"  # libb64/libcudart links (make perf-analyzer)
CONCURRENCY = 8  # the throughput rows; latency rows run at concurrency 1
ROUNDS = 4  # alternating blocks per latency row (each perf_analyzer run has >= requests/ROUNDS)
NS = 1e6  # profile export timestamps are nanoseconds
PERF_TIMEOUT_S = 600
US = 1000.0  # perf_analyzer reports microseconds
# perf_analyzer accepts a measurement once 3 windows agree within this many percent (its default,
# 10, never settles on a shared, noisy host; the p50 over all requests is what is compared).
STABILITY_PERCENT = 50
# "Avg request latency: 512 usec (overhead 20 usec + queue 11 usec + compute input 6 usec + ...)"
SERVER_SPLIT = re.compile(
    r"Avg request latency: \d+ usec \(overhead (?P<overhead>\d+) usec \+ queue (?P<queue>\d+) "
    r"usec \+ compute input (?P<compute_input>\d+) usec \+ compute infer (?P<compute_infer>\d+) "
    r"usec \+ compute output (?P<compute_output>\d+) usec\)"
)

WARMUP = 20
BLOCK = 25  # calls per path in a row in the latency comparison
BLOCK_WARMUP = 3  # untimed calls at the start of each block
BATCH_SIZES = (1, 8, 16, 32, 64)
START_TIMEOUT_S = 180
MS = 1000.0
PERCENTILES = (50, 99)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":")[1].split() for line in text.splitlines() if "flags" in line), [])
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " + (
        " ".join(present) or "none of " + " ".join(CPU_FLAGS)
    )


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _timed(call, count: int) -> np.ndarray:
    for _ in range(WARMUP):
        call()
    timings = np.empty(count)
    for i in range(count):
        started = time.perf_counter()
        call()
        timings[i] = time.perf_counter() - started
    return timings * MS


def _interleaved(calls: dict, count: int) -> dict[str, np.ndarray]:
    """Latencies (ms) of each call, in blocks of BLOCK calls per path, rotating the order, so
    that drift on a shared, noisy host hits every path alike; paired differences then give the
    overhead. Blocks, not single calls: ORT threads that spin after a call (in this process
    or in the server's stub) would otherwise take the 2 cores from the path timed next."""
    names = list(calls)
    timings = {name: np.empty(count) for name in names}
    for round_index, start in enumerate(range(0, count, BLOCK)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(BLOCK_WARMUP):
                calls[name]()
            for i in range(start, min(start + BLOCK, count)):
                started = time.perf_counter()
                calls[name]()
                timings[name][i] = (time.perf_counter() - started) * MS
    return timings


def _remote_call(protocol: str, url: str, model: str, data: np.ndarray):
    """A zero-argument call sending `data` (uint8 images or BYTES files) to `model`."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    client = module.InferenceServerClient(url=url)
    name, dtype = (FILES, "BYTES") if data.dtype == object else (INPUT, "UINT8")
    request = module.InferInput(name, list(data.shape), dtype)
    request.set_data_from_numpy(data)
    outputs = [module.InferRequestedOutput(PROBS)]
    return lambda: client.infer(model, [request], outputs=outputs).as_numpy(PROBS)


def _open(url: str, timeout: float = 10):
    """GET `url` on loopback, ignoring any proxy settings."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=timeout)


def _start(model: str, ports: dict[str, int], settings: dict[str, object]) -> subprocess.Popen:
    overrides = [f"serve.{name}={port}" for name, port in ports.items()]
    overrides += [f"serve.{name}={str(value).lower()}" for name, value in settings.items()]
    server = subprocess.Popen(
        [sys.executable, "-m", "flower_model.commands", "serve", *overrides, f"--model={model}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"http://127.0.0.1:{ports['http_port']}/v2/health/ready"
    while True:
        try:
            _open(url, timeout=2)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                os.killpg(server.pid, signal.SIGTERM)
                raise SystemExit("the server did not become ready") from None
            time.sleep(0.5)


def perf_analyzer(url: str, protocol: str, model: str, concurrency: int, requests: int, shape):
    """Run NVIDIA's perf_analyzer (batch 1, random uint8 input, `requests` measured requests);
    returns the count, throughput (infer/s), p50/p99 (ms), the server-side split (us) and the
    latency (ms) of every request it sent (its profile export, stable windows or not)."""
    with tempfile.TemporaryDirectory() as work:
        csv_path = Path(work) / "result.csv"
        export_path = Path(work) / "profile.json"
        command = [
            str(PERF_ANALYZER),
            f"-m{model}",
            f"-u{url}",
            f"-i{protocol}",
            f"--concurrency-range={concurrency}",
            "--measurement-mode=count_windows",
            f"--measurement-request-count={requests}",
            "--percentile=50",
            f"--stability-percentage={STABILITY_PERCENT}",
            f"-f{csv_path}",
            f"--profile-export-file={export_path}",
        ] + ([f"--shape={INPUT}:{','.join(map(str, shape))}"] if shape else [])
        env = {**os.environ, "LD_LIBRARY_PATH": str(PERF_LIBS)}
        run = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=PERF_TIMEOUT_S
        )
        if run.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed: {(run.stderr or run.stdout).strip()[-500:]}")
        header, values = csv_path.read_text().splitlines()[:2]
        row = dict(zip(header.split(","), values.split(",")))
        sent = [
            request
            for experiment in json.loads(export_path.read_text())["experiments"]
            for request in experiment["requests"]
            if request.get("response_timestamps")
        ]
    latencies = [(item["response_timestamps"][-1] - item["timestamp"]) / NS for item in sent]
    split = SERVER_SPLIT.search(run.stdout)
    count = re.search(r"Request count: (\d+)", run.stdout)
    return {
        "count": int(count.group(1)) if count else 0,
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / US,
        "p99_ms": float(row["p99 latency"]) / US,
        "server": {key: float(value) for key, value in split.groupdict().items()} if split else {},
        "latencies_ms": np.array(latencies),
    }


def _rows(timings: dict[str, np.ndarray], base: str | None = None) -> None:
    for name, values in timings.items():
        p50, p99 = np.percentile(values, PERCENTILES)
        extra = ""
        if base is not None and name != base:
            extra = f"  overhead (paired median) {np.median(values - timings[base]):+7.3f} ms"
        print(f"  {name:30s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms{extra}")


def _best_throughput(classifier: OnnxClassifier, image: np.ndarray, requests: int) -> float:
    """Best images/s over BATCH_SIZES of one in-process session (the batch-1 latency is timed in
    the alternating rounds of _latency_rows)."""
    best = 0.0
    for size in BATCH_SIZES:
        batch = np.repeat(image, size, axis=0)
        timings = _timed(lambda: classifier.probs(batch), max(10, requests // size))
        best = max(best, size * MS / float(np.median(timings)))
    return best


def _split(results: list[dict]) -> str:
    keys = results[0]["server"]
    return ", ".join(
        f"{key} {np.mean([result['server'][key] for result in results]):.0f}" for key in keys
    )


def _latency_rows(ports: dict, name: str, classifier, image, requests: int) -> None:
    """Concurrency 1: in-process blocks and perf_analyzer runs over HTTP and gRPC, alternating
    (ROUNDS rounds, the order rotating), so the served-minus-in-process p50 compares requests
    timed under the same conditions."""
    per_block = max(1, requests // ROUNDS)
    paths = ("in-process", "http", "grpc")
    latencies: dict[str, list[np.ndarray]] = {path: [] for path in paths}
    splits: dict[str, list[dict]] = {"http": [], "grpc": []}
    for round_index in range(ROUNDS):
        shift = round_index % len(paths)
        for path in paths[shift:] + paths[:shift]:
            if path == "in-process":
                latencies[path].append(_timed(lambda: classifier.probs(image), per_block))
                continue
            url = f"127.0.0.1:{ports[f'{path}_port']}"
            result = perf_analyzer(url, path, name, 1, per_block, None)
            latencies[path].append(result["latencies_ms"])
            splits[path].append(result)
    local = np.concatenate(latencies["in-process"])
    local_p50 = float(np.median(local))
    print(
        f"  in-process c=1  p50 {local_p50:7.3f} ms  p99 {np.percentile(local, 99):7.3f} ms"
        f"  ({local.size} calls)"
    )
    for protocol in ("http", "grpc"):
        served = np.concatenate(latencies[protocol])
        p50, p99 = np.percentile(served, PERCENTILES)
        print(
            f"  {protocol:4s} c=1  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  ({served.size} requests)"
            f"  p50 - in-process {p50 - local_p50:+.3f} ms; server us: {_split(splits[protocol])}"
        )


def _throughput_rows(ports: dict, name: str, requests: int, best: float) -> None:
    for protocol in ("http", "grpc"):
        url = f"127.0.0.1:{ports[f'{protocol}_port']}"
        result = perf_analyzer(url, protocol, name, CONCURRENCY, requests, None)
        print(
            f"  {protocol:4s} c={CONCURRENCY}  p50 {result['p50_ms']:7.3f} ms  p99 "
            f"{result['p99_ms']:7.3f} ms  {result['throughput']:8.1f}/s "
            f"({result['throughput'] / best:4.0%} of in-process); server us: {_split([result])}"
        )


def _image_rows(ports: dict, name: str, classifier, photo_path: Path, requests: int) -> None:
    """The encoded-photo model with a real file: our own client, as perf_analyzer sends
    synthetic tensors only."""
    encoded = np.array([[photo_path.read_bytes()]], dtype=object)

    def local_file() -> np.ndarray:
        return classifier.probs(classifier.load(photo_path)[None])

    files = {"in-process decode + ORT": local_file}
    for protocol in ("http", "grpc"):
        url = f"127.0.0.1:{ports[f'{protocol}_port']}"
        files[f"served {protocol} (image model)"] = _remote_call(protocol, url, name, encoded)
    _rows(_interleaved(files, requests), "in-process decode + ORT")


def main(
    model: str = "models/model.onnx",
    requests: int = 1000,
    photo: str | None = None,
    threads: int | None = None,
    instances: int | None = None,
) -> None:
    serve = load_config(REPO).serve
    threads = serve.ort_threads if threads is None else threads
    instances = serve.instances if instances is None else instances
    if not PERF_ANALYZER.is_file():
        raise SystemExit(f"{PERF_ANALYZER} is missing: run `make perf-analyzer`")
    photo_path = Path(photo) if photo else next(Path("data/raw/flower_photos").rglob("*.jpg"))
    name = "flower_classifier"
    print(
        f"host: {cpu_flags()}; model {model}, photo {photo_path.name}, {requests} requests/row, "
        f"serve.ort_threads={threads}, serve.instances={instances}"
    )
    # The native backend (r24.10) cannot turn ORT's spinning off; the python flavour's stub
    # runs serve.ort_spinning=false: each baseline spins as its server does.
    for flavour, spinning in (("container", True), ("python", False)):
        classifier = OnnxClassifier(Path(model), spinning=spinning, threads=threads)
        image = classifier.load(photo_path)[None]
        best = _best_throughput(classifier, image, requests)
        if threads:  # the bar is the best the same cores do in-process, whatever the threads
            all_cores = OnnxClassifier(Path(model), spinning=spinning)
            best = max(best, _best_throughput(all_cores, image, requests))
        print(
            f"{flavour} flavour; in-process ORT (spinning={spinning}, threads={threads}): "
            f"best {best:.1f} images/s"
        )
        ports = {key: _port() for key in ("http_port", "grpc_port", "metrics_port")}
        settings = {"flavour": flavour, "ort_threads": threads, "instances": instances}
        server = _start(model, ports, settings)
        try:
            _latency_rows(ports, name, classifier, image, requests)
            _throughput_rows(ports, name, requests, best)
            _image_rows(ports, name + "_image", classifier, photo_path, max(100, requests // 4))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
