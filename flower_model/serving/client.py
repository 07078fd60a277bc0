"""`flower-model client`: classify photos through a running Triton server (HTTP or gRPC)."""

import numpy as np

from flower_model.data.images import ImageDecodeError, load_image
from flower_model.serving.infer import Prediction, expand_paths

PROTOCOLS = ("http", "grpc")


class TritonClassifier:
    """The infer module's classifier interface, backed by tritonclient."""

    def __init__(
        self, url: str, protocol: str, model_name: str, preprocess: dict, class_names: list[str]
    ):
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol == "http":
            import tritonclient.http as module
        else:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.module = module
        self.client = module.InferenceServerClient(url=url)
        self.model_name = model_name
        self.preprocess = preprocess
        self.image_size = int(preprocess["image_size"])
        self.class_names = class_names  # for naming the top-k; the server sends the top-1 label

    def load(self, path) -> np.ndarray:
        settings = self.preprocess
        return load_image(
            path,
            self.image_size,
            settings["resize_mode"],
            settings["pad_value"],
            settings["max_image_pixels"],
        )

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = self.module.InferInput("images", list(images.shape), "UINT8")
        request.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        outputs = [self.module.InferRequestedOutput(name) for name in ("probs", "labels")]
        result = self.client.infer(self.model_name, [request], outputs=outputs)
        return result.as_numpy("probs"), result.as_numpy("labels")

    def close(self) -> None:
        self.client.close()


def classify_remote(
    items: list[str], classifier: TritonClassifier, top_k: int, batch: int
) -> list[Prediction]:
    paths = expand_paths(items)
    results = [Prediction(str(path)) for path in paths]
    ready = []
    for index, path in enumerate(paths):
        try:
            if not path.is_file():
                raise ImageDecodeError("missing", "no such file")
            ready.append((index, classifier.load(path)))
        except ImageDecodeError as error:
            results[index].error = f"{error.reason}: {error.detail}"
    for start in range(0, len(ready), batch):
        chunk = ready[start : start + batch]
        probs, labels = classifier.infer(np.stack([image for _, image in chunk]))
        for (index, _), row, label in zip(chunk, probs, labels):
            order = np.argsort(-row, kind="stable")[:top_k]
            results[index].predicted = label[0].decode()
            results[index].probability = round(float(row.max()), 6)
            names = classifier.class_names or [str(k) for k in range(len(row))]
            results[index].top_k = [(names[k], round(float(row[k]), 6)) for k in order]
    return results
