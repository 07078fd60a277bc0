"""Running a shipped ONNX model with ONNX Runtime, and comparing two backends' outputs: what
export's parity gate, build_trt's engine check and evaluate share, without torch. The names and
the session come from the serving contract."""

from pathlib import Path

import numpy as np

from flower_model.serving.contract import run_probs, session


def onnx_probs(model_path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    runner = session(model_path)
    outputs = [
        run_probs(runner, np.ascontiguousarray(images[start : start + batch]))
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(outputs)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "images": int(len(reference)),
    }
