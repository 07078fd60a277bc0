"""`flower-model client`: classify photos through a running Triton server (HTTP or gRPC)."""

import numpy as np

from flower_model.data.images import load_image
from flower_model.serving.infer import Prediction, classify, expand_paths

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
        self.class_names = class_names  # from classes.json, to name the top-k

    def load(self, path) -> np.ndarray:
        settings = self.preprocess
        return load_image(
            path,
            self.image_size,
            settings["resize_mode"],
            settings["pad_value"],
            settings["max_image_pixels"],
        )

    def probs(self, images: np.ndarray) -> np.ndarray:
        request = self.module.InferInput("images", list(images.shape), "UINT8")
        request.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        result = self.client.infer(
            self.model_name, [request], outputs=[self.module.InferRequestedOutput("probs")]
        )
        probs = result.as_numpy("probs")
        if not self.class_names:  # no classes.json here: name classes by index
            self.class_names = [str(k) for k in range(probs.shape[1])]
        return probs

    def close(self) -> None:
        self.client.close()


def classify_remote(
    items: list[str], classifier: TritonClassifier, top_k: int, batch: int
) -> list[Prediction]:
    return classify(expand_paths(items), classifier, top_k, batch)
