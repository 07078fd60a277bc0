"""Latency and throughput of a batch predictor: warm-up, then a fixed number of timed runs."""

import os
import time
from collections.abc import Callable

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]
MS = 1000.0
PERCENTILES = (50, 95)


def measure(
    predict: Predictor, images: np.ndarray, batch_size: int, warmup: int, iterations: int
) -> dict:
    """p50/p95 milliseconds per batch, p50 per image, and images/s at `batch_size` (images repeat
    if too few)."""
    reps = -(-batch_size // len(images))
    batch = np.ascontiguousarray(np.concatenate([images] * reps)[:batch_size])
    for _ in range(warmup):
        predict(batch)
    timings = np.empty(iterations)
    for i in range(iterations):
        started = time.perf_counter()
        predict(batch)
        timings[i] = time.perf_counter() - started
    p50, p95 = np.percentile(timings, PERCENTILES) * MS
    return {
        "batch_size": batch_size,
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p50_ms_per_image": round(float(p50) / batch_size, 3),
        "images_per_s": round(float(batch_size / np.median(timings)), 1),
        "iterations": iterations,
    }


def thread_info() -> dict[str, int]:
    import torch

    return {"cpu_cores": os.cpu_count() or 1, "torch_threads": torch.get_num_threads()}
