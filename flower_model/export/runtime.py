"""Running a shipped ONNX model with ONNX Runtime, and comparing two backends' outputs: what
export's parity gate, build_trt's engine check and evaluate share, without torch."""

from pathlib import Path

import numpy as np

INPUT_NAME = "images"  # the ONNX contract (design.md): uint8 [N, H, W, 3] RGB in
OUTPUT_NAMES = ("logits", "probs")


def session(model_path: Path, threads: int = 0):
    """An ONNX Runtime CPU session with full graph optimisation and no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def onnx_probs(model_path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    runner = session(model_path)
    outputs = [
        runner.run(["probs"], {INPUT_NAME: np.ascontiguousarray(images[start : start + batch])})[0]
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(outputs)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "images": int(len(reference)),
    }
