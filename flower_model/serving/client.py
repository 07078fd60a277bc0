"""`flower-model client`: classify photos through a running Triton server (HTTP or gRPC).

By default the encoded files go over the wire to `flower_classifier_image`, which decodes them on
the server; `--raw` decodes here and sends uint8 arrays to `flower_classifier`. Class names and
the image settings come from the server's model config, so no project files are needed.
"""

import numpy as np

from flower_model.data.images import ImageDecodeError, load_image
from flower_model.errors import FlowerModelError
from flower_model.serving.contract import (
    FILES,
    INPUT,
    PROBS,
    MetadataError,
    ModelInfo,
    config_parameters,
)
from flower_model.serving.infer import Prediction, classify, expand_paths
from flower_model.serving.model_repository import IMAGE_SUFFIX

PROTOCOLS = ("http", "grpc")
REJECTED_PREFIX = "of the request: "  # the image model's message names the file's position


class TritonClassifier:
    """The infer module's classifier interface, backed by tritonclient."""

    def __init__(self, url: str, protocol: str, model_name: str, raw: bool):
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol == "http":
            import tritonclient.http as module
        else:
            raise FlowerModelError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
        from tritonclient.utils import InferenceServerException

        self.module, self.rejected = module, InferenceServerException
        self.raw = raw
        self.model_name = model_name if raw else model_name + IMAGE_SUFFIX
        self.url = url
        self.client = module.InferenceServerClient(url=url)
        try:
            self.client.is_server_live()
        except Exception as error:  # refused/unreachable: socket errors (HTTP), UNAVAILABLE (gRPC)
            raise FlowerModelError(
                f"no Triton server answers at {url} ({protocol}): {error}; start one with "
                "`flower-model serve` or fix --url/--protocol"
            ) from None
        try:
            as_json = {"as_json": True} if protocol == "grpc" else {}
            config = self.client.get_model_config(model_name, **as_json)
        except InferenceServerException as error:
            raise FlowerModelError(
                f"the Triton server at {url} ({protocol}) does not serve {model_name}: "
                f"{error.message()}; fix --model-name, or serve it with `flower-model serve`"
            ) from None
        config = config.get("config", config)  # gRPC's JSON wraps it, HTTP's does not
        try:
            info = ModelInfo.parse(config_parameters(config))
        except (MetadataError, KeyError) as error:
            raise FlowerModelError(
                f"the Triton server at {url} serves {model_name} with unusable settings "
                f"({error}); serve a model exported by `flower-model export_onnx`"
            ) from None
        self.class_names: list[str] = info.class_names
        self.settings = info.image_settings

    def load(self, path) -> np.ndarray:
        if self.raw:
            return load_image(path, *self.settings)
        return np.array(path.read_bytes(), dtype=object)

    def probs(self, items: np.ndarray) -> np.ndarray:
        if self.raw:
            request = self.module.InferInput(INPUT, list(items.shape), "UINT8")
            request.set_data_from_numpy(np.ascontiguousarray(items, dtype=np.uint8))
        else:
            files = items.reshape(-1, 1)
            request = self.module.InferInput(FILES, list(files.shape), "BYTES")
            request.set_data_from_numpy(files)
        outputs = [self.module.InferRequestedOutput(PROBS)]
        try:
            result = self.client.infer(self.model_name, [request], outputs=outputs)
        except self.rejected as error:
            message = error.message() or str(error)
            if self.raw or REJECTED_PREFIX not in message:
                raise FlowerModelError(f"{self.url}: {message}") from None
            reason, _, detail = message.split(REJECTED_PREFIX, 1)[1].partition(": ")
            raise ImageDecodeError(reason, detail) from None
        return result.as_numpy(PROBS)

    def close(self) -> None:
        self.client.close()


def classify_remote(
    items: list[str], classifier: TritonClassifier, top_k: int, batch: int
) -> list[Prediction]:
    return classify(expand_paths(items), classifier, top_k, batch)
