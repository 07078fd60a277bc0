"""Triton python-backend model `flower_classifier`: uint8 photos in, `probs` and `labels` out.

Copied as `<repository>/flower_classifier/1/model.py` by `flower_model.serving.model_repository`
and run by Triton's python-backend stub with this project's environment; the library never
imports it. Dynamic batching hands `execute` several requests: they run as one concatenated
batch in ONNX Runtime (or in the TensorRT engine when the repository was written for one).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from flower_model.serving.contract import INPUT, LABELS, PROBS, config_parameters


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        settings = config_parameters(json.loads(args["model_config"]))
        folder = Path(args["model_repository"]) / args["model_version"]
        model = folder / settings["model_file"]
        if settings["engine"] == "tensorrt":
            from flower_model.serving.tensorrt_backend import TensorRTClassifier

            self.classifier = TensorRTClassifier(model, folder / settings["plan_file"])
        else:
            from flower_model.serving.infer import OnnxClassifier

            # serve.ort_spinning (off by default): ORT's threads busy-wait between operators,
            # faster on a dedicated server, but they take the cores from everything else on a
            # shared one (figures: README, Serving).
            spinning = settings.get("ort_spinning", "false") == "true"
            threads = int(settings.get("ort_threads", "0"))
            self.classifier = OnnxClassifier(model, spinning=spinning, threads=threads)
        self.names = np.array([name.encode() for name in self.classifier.class_names], object)

    def execute(self, requests: list) -> list:
        batches = [pb_utils.get_input_tensor_by_name(item, INPUT).as_numpy() for item in requests]
        probs = self.classifier.probs(np.ascontiguousarray(np.concatenate(batches), np.uint8))
        probs = probs.astype(np.float32)
        # Only the outputs a request asked for are built (Triton asks for all when a client
        # names none): the BYTES `labels` tensor is serialised by this stub and copied back,
        # which a client reading `probs` alone should not pay for.
        requested = [set(item.requested_output_names()) for item in requests]
        labels = None
        if any(LABELS in names for names in requested):
            labels = self.names[probs.argmax(axis=1)].reshape(-1, 1)
        responses, start = [], 0
        for names, batch in zip(requested, batches):
            stop = start + len(batch)
            outputs = [pb_utils.Tensor(PROBS, probs[start:stop])] if PROBS in names else []
            if LABELS in names:
                outputs.append(pb_utils.Tensor(LABELS, labels[start:stop]))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start = stop
        return responses
