"""Benchmark: in-process ONNX Runtime vs the same model through Triton (HTTP and gRPC).

    python benchmarks/serving.py [--model models/model.onnx] [--requests 300]

Starts `flower-model serve` on free loopback ports, prints p50/p95 at batch 1 in-process and over
each protocol (the difference is the serving overhead), then throughput with dynamic batching under
8 concurrent HTTP clients, and stops the server by PID. Goal: served p50 overhead <= 1 ms.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flower_model.serving.infer import OnnxClassifier

CLIENTS = 8
WARMUP = 20
START_TIMEOUT_S = 180
MS = 1000.0


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


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url=url)


def _remote_call(protocol: str, url: str, image: np.ndarray):
    module, client = _client(protocol, url)
    request = module.InferInput("images", list(image.shape), "UINT8")
    request.set_data_from_numpy(image)
    return lambda: client.infer("flower_classifier", [request]).as_numpy("probs")


def main(model: str = "models/model.onnx", requests: int = 300) -> None:
    classifier = OnnxClassifier(Path(model))
    image = np.random.default_rng(0).integers(
        0, 256, (1, classifier.image_size, classifier.image_size, 3), np.uint8
    )
    ports = [_port() for _ in range(3)]
    overrides = [
        f"serve.{name}={port}"
        for name, port in zip(("http_port", "grpc_port", "metrics_port"), ports)
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "flower_model.commands", "serve", *overrides, f"--model={model}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{ports[0]}/v2/models/flower_classifier/ready", timeout=2
                )
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.5)
        local = _timed(lambda: classifier.probs(image), requests)
        rows = {"in-process": local}
        rows["triton http"] = _timed(_remote_call("http", f"127.0.0.1:{ports[0]}", image), requests)
        rows["triton grpc"] = _timed(_remote_call("grpc", f"127.0.0.1:{ports[1]}", image), requests)
        base = np.percentile(local, 50)
        print(f"batch 1, {requests} requests each, {os.cpu_count()} cores")
        for name, timings in rows.items():
            p50, p95 = np.percentile(timings, (50, 95))
            print(
                f"  {name:12s} p50 {p50:7.3f} ms  p95 {p95:7.3f} ms  "
                f"overhead p50 {p50 - base:+7.3f} ms"
            )

        def worker(_: int) -> int:
            call = _remote_call("http", f"127.0.0.1:{ports[0]}", image)
            for _ in range(requests):
                call()
            return requests

        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            done = sum(pool.map(worker, range(CLIENTS)))
        elapsed = time.perf_counter() - started
        print(
            f"dynamic batching, {CLIENTS} concurrent HTTP clients: "
            f"{done / elapsed:.0f} images/s ({done} requests)"
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
