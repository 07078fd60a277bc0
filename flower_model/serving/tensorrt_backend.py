"""`flower-model infer --backend tensorrt`: ONNX model metadata, TensorRT engine math."""

import importlib
from pathlib import Path

import numpy as np

from flower_model.errors import FlowerModelError
from flower_model.export.tensorrt import PLAN_FILE, EngineRunner, unavailable_reason
from flower_model.serving.infer import OnnxClassifier


class TensorRTClassifier(OnnxClassifier):
    """Reads sizes and class names from the ONNX model; runs models/trt/model.plan on the GPU."""

    def __init__(self, model: Path, plan: Path | None = None):
        super().__init__(model)
        plan = plan or model.parent / "trt" / PLAN_FILE
        reason = unavailable_reason()
        if reason or not plan.is_file():
            raise FlowerModelError(
                f"--backend tensorrt needs {plan} and a TensorRT GPU: "
                f"{reason or 'no engine was built (see models/trt/build.json)'}; use --backend onnx"
            )
        self.runner = EngineRunner(plan.read_bytes(), importlib.import_module("tensorrt"))

    def probs(self, images: np.ndarray) -> np.ndarray:
        return self.runner(images)
