"""Triton python-backend model `flower_classifier_image`: encoded photo files in, the same outputs.

Copied as `<repository>/flower_classifier_image/1/model.py`. Each request carries a BYTES tensor
of whole JPEG/PNG/WebP/... files. They are decoded and resized by `flower_model.data.images`,
the code preprocess and `flower-model infer` use, so the arrays are identical; the decoded
requests of one dynamic batch then go to `flower_classifier` as one BLS call. A file that cannot
be decoded fails its own request (naming the file's position and the reason); the other
requests of the batch are answered.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from flower_model.serving.contract import FILES, INPUT, LABELS, PROBS, ModelInfo, config_parameters


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        settings = config_parameters(json.loads(args["model_config"]))
        self.classifier = settings["classifier"]
        self.info = ModelInfo.parse(settings)
        self.names = np.array([name.encode() for name in self.info.class_names], dtype=object)

    def decode(self, request) -> np.ndarray:
        from flower_model.data.images import ImageDecodeError, load_image

        files = pb_utils.get_input_tensor_by_name(request, FILES).as_numpy().reshape(-1)
        arrays = []
        for index, encoded in enumerate(files):
            try:
                arrays.append(load_image(bytes(encoded), *self.info.image_settings))
            except ImageDecodeError as error:
                raise ValueError(f"file {index} of the request: {error}") from None
        return np.stack(arrays)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """One BLS call to the classifier for the whole dynamic batch; returns its probs."""
        request = pb_utils.InferenceRequest(
            model_name=self.classifier,
            requested_output_names=[PROBS],
            inputs=[pb_utils.Tensor(INPUT, images)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.classifier}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, PROBS).as_numpy()

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        decoded: list[tuple[int, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                decoded.append((index, self.decode(request)))
            except ValueError as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                )
        if not decoded:
            return responses
        try:
            probs = self.classify(np.concatenate([images for _, images in decoded]))
        except RuntimeError as error:
            for index, _ in decoded:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error))
                )
            return responses
        start = 0
        for index, images in decoded:
            rows = probs[start : start + len(images)]
            start += len(images)
            outputs = [
                pb_utils.Tensor(PROBS, rows),
                pb_utils.Tensor(LABELS, self.names[rows.argmax(axis=1)].reshape(-1, 1)),
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
        return responses
