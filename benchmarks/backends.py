"""Benchmark: torch eager vs ONNX Runtime fp32 vs INT8 on CPU, side by side in one run.

    python benchmarks/backends.py [--models models] [--processed data/processed] [--iterations 50]

Needs the pipeline's outputs (`dvc repro`). Prints p50/p95 latency at batch 1 and 32, throughput,
the speed-up of each ONNX variant over torch eager, and test accuracy from reports/metrics.json.
Goals: ONNX Runtime fp32 >= 2.5x torch eager at both batch sizes; INT8 faster again with at most
1 point of accuracy lost.
"""

import json
import os
from pathlib import Path

import numpy as np

from flower_model.data.preprocess import images_path
from flower_model.evaluation.evaluate import _onnx_predictor, _torch_predictor
from flower_model.evaluation.latency import measure, thread_info

BATCH_SIZES = (1, 32)
WARMUP = 10


def main(models: str = "models", processed: str = "data/processed", iterations: int = 50) -> None:
    models_dir, processed_dir = Path(models), Path(processed)
    images = np.load(images_path(processed_dir, "test"))
    predictors = {
        "torch_eager": _torch_predictor(models_dir / "model.ckpt"),
        "onnx_fp32": _onnx_predictor(models_dir / "model.onnx"),
        "onnx_int8": _onnx_predictor(models_dir / "model.int8.onnx"),
    }
    print(f"threads: {thread_info()}, cpu: {os.cpu_count()} cores, {iterations} timed iterations")
    print(
        f"{'backend':12s} {'batch':>5s} {'p50 ms':>9s} {'p95 ms':>9s} "
        f"{'img/s':>8s} {'vs torch':>9s}"
    )
    for size in BATCH_SIZES:
        results = {
            name: measure(predict, images, size, WARMUP, iterations)
            for name, predict in predictors.items()
        }
        base = results["torch_eager"]["p50_ms"]
        for name, row in results.items():
            ratio = base / row["p50_ms"]
            print(
                f"{name:12s} {size:5d} {row['p50_ms']:9.2f} {row['p95_ms']:9.2f} "
                f"{row['images_per_s']:8.1f} {ratio:8.2f}x"
            )
    metrics_file = Path("reports/metrics.json")
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        fp32, int8 = metrics["onnx_fp32"]["accuracy"], metrics["onnx_int8"]["accuracy"]
        print(
            f"test accuracy: onnx_fp32 {fp32:.4f}, onnx_int8 {int8:.4f} "
            f"({(int8 - fp32) * 100:+.2f} points)"
        )


if __name__ == "__main__":
    import fire

    fire.Fire(main)
