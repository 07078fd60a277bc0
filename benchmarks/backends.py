"""Benchmark: torch eager vs ONNX Runtime fp32 vs INT8 on CPU, side by side in one run.

    python benchmarks/backends.py [--models models] [--processed data/processed] [--iterations 50]

Needs the pipeline's outputs (`dvc repro`). Prints p50/p95 latency at batch 1 and 32, throughput,
the speed-up of each ONNX variant over torch eager, and test accuracy from reports/evaluation.json.
Goals: ONNX Runtime fp32 >= 2.5x torch eager at both batch sizes; INT8 faster again with at most
1 point of accuracy lost.

It also prints a roofline: the model's multiply-accumulates per image (torch's FLOP counter), the
GMAC/s each backend reaches, and this CPU's measured fp32 GEMM rate (a large `torch.mm`), so a
missed speed-up goal can be told apart from one the hardware cannot give.
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from flower_model.data.layout import images_path
from flower_model.evaluation.evaluate import _onnx_predictor, _torch_predictor
from flower_model.evaluation.latency import measure, thread_info
from flower_model.models.classifier import load_classifier

BATCH_SIZES = (1, 32)
WARMUP = 10
GEMM_SIDE = 2048  # big enough that sgemm runs at the CPU's practical fp32 peak
GEMM_REPEATS = 10
SPEEDUP_GOAL = 2.5
GIGA = 1e9
MS_PER_S = 1e3
FLOPS_PER_MAC = 2


def model_macs(checkpoint: Path, image_size: int) -> int:
    """Multiply-accumulates of one image's forward pass (torch's FlopCounterMode: every conv and
    matrix product; it counts a multiply-accumulate as two FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = load_classifier(checkpoint)[0].net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // FLOPS_PER_MAC


def gemm_gmacs() -> float:
    """This CPU's fp32 multiply-accumulate rate on a large square matrix product, all threads."""
    import torch

    left, right = torch.randn(GEMM_SIDE, GEMM_SIDE), torch.randn(GEMM_SIDE, GEMM_SIDE)
    torch.mm(left, right)
    started = time.perf_counter()
    for _ in range(GEMM_REPEATS):
        torch.mm(left, right)
    return GEMM_SIDE**3 * GEMM_REPEATS / (time.perf_counter() - started) / GIGA


def main(models: str = "models", processed: str = "data/processed", iterations: int = 50) -> None:
    models_dir, processed_dir = Path(models), Path(processed)
    images = np.load(images_path(processed_dir, "test"))
    macs = model_macs(models_dir / "model.ckpt", images.shape[1])
    predictors = {
        "torch_eager": _torch_predictor(models_dir / "model.ckpt"),
        "onnx_fp32": _onnx_predictor(models_dir / "model.onnx"),
        "onnx_int8": _onnx_predictor(models_dir / "model.int8.onnx"),
    }
    print(f"threads: {thread_info()}, cpu: {os.cpu_count()} cores, {iterations} timed iterations")
    print(
        f"{'backend':12s} {'batch':>5s} {'p50 ms':>9s} {'p95 ms':>9s} "
        f"{'img/s':>8s} {'vs torch':>9s} {'GMAC/s':>7s}"
    )
    torch_rate = {}
    for size in BATCH_SIZES:
        results = {
            name: measure(predict, images, size, WARMUP, iterations)
            for name, predict in predictors.items()
        }
        base = results["torch_eager"]["p50_ms"]
        torch_rate[size] = macs * size / (base / MS_PER_S) / GIGA
        for name, row in results.items():
            ratio = base / row["p50_ms"]
            rate = macs * size / (row["p50_ms"] / MS_PER_S) / GIGA
            print(
                f"{name:12s} {size:5d} {row['p50_ms']:9.2f} {row['p95_ms']:9.2f} "
                f"{row['images_per_s']:8.1f} {ratio:8.2f}x {rate:7.1f}"
            )
    peak = gemm_gmacs()
    print(f"model: {macs / 1e6:.1f} M multiply-accumulates per image")
    print(f"fp32 GEMM rate of this CPU ({GEMM_SIDE}^2 torch.mm): {peak:.1f} GMAC/s")
    for size, rate in torch_rate.items():
        needed = SPEEDUP_GOAL * rate
        print(
            f"batch {size}: {SPEEDUP_GOAL}x torch eager needs fp32 at {needed:.1f} GMAC/s "
            f"= {needed / peak:.0%} of the GEMM rate"
        )
    detail_file = Path("reports/evaluation.json")
    if detail_file.is_file():
        metrics = json.loads(detail_file.read_text())
        fp32, int8 = metrics["onnx_fp32"]["accuracy"], metrics["onnx_int8"]["accuracy"]
        print(
            f"test accuracy: onnx_fp32 {fp32:.4f}, onnx_int8 {int8:.4f} "
            f"({(int8 - fp32) * 100:+.2f} points)"
        )


if __name__ == "__main__":
    import fire

    fire.Fire(main)
