"""Benchmark: in-process ONNX Runtime vs the same model served by `flower-model serve`.

    python benchmarks/serving.py [--model models/model.onnx] [--requests 300] [--photo F.jpg]
                                 [--spinning]   (serve.ort_spinning, on both sides)
                                 [--threads N]  (serve.ort_threads, on both sides)
                                 [--instances N]  (serve.instances)

Starts `flower-model serve` (tritonserver on the python-flavour repository) on free loopback
ports, then prints, side by side from this one run:
- batch 1 p50/p99 in-process and over HTTP and gRPC (the difference is the serving overhead);
- in-process throughput at each batch size, and served throughput with 8 concurrent clients
  (dynamic batching), as a fraction of the best in-process figure;
- the encoded-photo model (`flower_classifier_image`: JPEG bytes in) beside the raw uint8 path,
  and what decoding + resizing costs in-process.
Stops the server by PID. Goals: overhead <= 0.5 ms; concurrent throughput >= 90% of in-process.
"""

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flower_model.data.images import load_image
from flower_model.serving.infer import OnnxClassifier

CLIENTS = 8
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
    name, dtype = ("files", "BYTES") if data.dtype == object else ("images", "UINT8")
    request = module.InferInput(name, list(data.shape), dtype)
    request.set_data_from_numpy(data)
    outputs = [module.InferRequestedOutput("probs")]
    return lambda: client.infer(model, [request], outputs=outputs).as_numpy("probs")


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


def _server_counters(metrics_url: str, model: str) -> dict[str, float]:
    """Triton's cumulative per-model counters (`nv_inference_*`) from the metrics endpoint."""
    counters = {}
    for line in _open(metrics_url).read().decode().splitlines():
        if line.startswith("nv_inference_") and f'model="{model}"' in line:
            counters[line.split("{")[0].removeprefix("nv_inference_")] = float(line.split()[-1])
    return counters


def _server_split(before: dict[str, float], after: dict[str, float]) -> str:
    """Where a served request's time went inside tritonserver, mean ms per request."""
    count = after["request_success"] - before["request_success"]
    parts = ("queue", "compute_input", "compute_infer", "compute_output")
    return ", ".join(
        f"{part} {(after[f'{part}_duration_us'] - before[f'{part}_duration_us']) / count / MS:.3f}"
        for part in parts
    )


def _rows(timings: dict[str, np.ndarray], base: str | None = None) -> None:
    for name, values in timings.items():
        p50, p99 = np.percentile(values, PERCENTILES)
        extra = ""
        if base is not None and name != base:
            extra = f"  overhead (paired median) {np.median(values - timings[base]):+7.3f} ms"
        print(f"  {name:30s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms{extra}")


def _parallel_sessions(sessions: list, batch: np.ndarray, requests: int) -> float:
    """images/s of several in-process sessions, one Python thread each (ORT releases the GIL):
    what `serve.instances` sessions could do without the server around them."""

    def worker(session) -> tuple[int, float]:
        for _ in range(WARMUP):
            session.probs(batch)
        started = time.perf_counter()
        for _ in range(requests):
            session.probs(batch)
        return requests * len(batch), time.perf_counter() - started

    with ThreadPoolExecutor(len(sessions)) as pool:
        return sum(images / seconds for images, seconds in pool.map(worker, sessions))


def _concurrent(call_factory, requests: int) -> tuple[float, np.ndarray]:
    """images/s and per-request latencies (ms) of CLIENTS threads, each with its own client."""

    def worker(_: int) -> np.ndarray:
        call = call_factory()
        call()
        timings = np.empty(requests)
        for i in range(requests):
            started = time.perf_counter()
            call()
            timings[i] = time.perf_counter() - started
        return timings

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        timings = np.concatenate(list(pool.map(worker, range(CLIENTS))))
    return len(timings) / (time.perf_counter() - started), timings * MS


def main(
    model: str = "models/model.onnx",
    requests: int = 300,
    photo: str | None = None,
    spinning: bool = False,
    threads: int = 0,
    instances: int = 1,
) -> None:
    # The baseline uses the server's session settings (`--spinning`, `--threads`), so the
    # difference to the served figures is the serving path alone; ORT's own defaults (spinning,
    # a thread per core; or no spinning where those are the server's) get their own row, timed
    # while the server is idle (on Lite0 and the AVX-512 EPYC host, spinning 3.8-4.4 ms p50
    # against 5.4-6.7 ms without).
    served = {"ort_spinning": spinning, "ort_threads": threads, "instances": instances}
    classifier = OnnxClassifier(Path(model), spinning=spinning, threads=threads)
    other_spinning = not (spinning and threads == 0)  # ORT's defaults, unless the server's
    other = OnnxClassifier(Path(model), spinning=other_spinning)
    other_name = f"in-process ORT, spinning={other_spinning}, threads=0"
    photo_path = Path(photo) if photo else next(Path("data/raw/flower_photos").rglob("*.jpg"))
    settings = (classifier.image_size, classifier.resize_mode, classifier.pad_value)
    image = load_image(photo_path, *settings, classifier.max_pixels)[None]
    encoded = np.array([[photo_path.read_bytes()]], dtype=object)
    ports = {name: _port() for name in ("http_port", "grpc_port", "metrics_port")}
    http, grpc = f"127.0.0.1:{ports['http_port']}", f"127.0.0.1:{ports['grpc_port']}"
    metrics = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
    name = "flower_classifier"
    print(
        f"host: {cpu_flags()}; model {model}, photo {photo_path.name}, {requests} requests/row, "
        + ", ".join(f"serve.{key}={value}" for key, value in served.items())
    )
    server = _start(model, ports, served)
    try:
        print("batch 1 latency, uint8 arrays")
        raw = {"in-process ONNX Runtime": lambda: classifier.probs(image)}
        for protocol, url in (("http", http), ("grpc", grpc)):
            raw[f"served {protocol}"] = _remote_call(protocol, url, name, image)
        before = _server_counters(metrics, name)
        _rows(_interleaved(raw, requests), "in-process ONNX Runtime")
        # compute_infer is the stub's share (IPC + ORT); what the paired overhead has beyond
        # queue + input + output + (compute_infer - in-process) is the wire and the client.
        split = _server_split(before, _server_counters(metrics, name))
        print(f"  inside tritonserver, mean ms per served request: {split}")
        _rows({other_name: _timed(lambda: other.probs(image), requests)})
        print("batch 1 latency, one JPEG file")

        def local_file() -> np.ndarray:
            return classifier.probs(load_image(photo_path, *settings, classifier.max_pixels)[None])

        files = {"in-process decode + ORT": local_file}
        for protocol, url in (("http", http), ("grpc", grpc)):
            files[f"served {protocol} (image model)"] = _remote_call(
                protocol, url, name + "_image", encoded
            )
        _rows(_interleaved(files, requests), "in-process decode + ORT")
        print("throughput")
        best = 0.0
        sessions = [classifier] + [
            OnnxClassifier(Path(model), spinning=spinning, threads=threads)
            for _ in range(instances - 1)
        ]
        for size in BATCH_SIZES:
            batch = np.repeat(image, size, axis=0)
            rates = []
            for session in (classifier, other):  # the best of either setting is the bar
                timings = _timed(lambda: session.probs(batch), max(10, requests // size))
                rates.append(size * MS / float(np.median(timings)))
            best = max(best, *rates)
            print(
                f"  in-process batch {size:3d}             {rates[0]:7.1f} images/s "
                f"({other_name}: {rates[1]:.1f})"
            )
            if instances > 1:  # the bar includes what the server's sessions do side by side
                rate = _parallel_sessions(sessions, batch, max(10, requests // size))
                best = max(best, rate)
                print(f"  in-process batch {size:3d}, {instances} sessions {rate:7.1f} images/s")
        for protocol, url in (("http", http), ("grpc", grpc)):
            rate, timings = _concurrent(
                lambda: _remote_call(protocol, url, name, image), requests // 2
            )
            p50, p99 = np.percentile(timings, PERCENTILES)
            print(
                f"  served {protocol}, {CLIENTS} clients, batch 1  {rate:7.1f} images/s "
                f"({rate / best:.0%} of in-process best)  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
