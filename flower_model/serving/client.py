"""`flower-model client`: classify photos through a running Triton server (HTTP or gRPC).

By default the encoded files go over the wire to `flower_classifier_image`, which decodes them on
the server; `--raw` decodes here and sends uint8 arrays to `flower_classifier`. Class names and
the image settings come from the server's model config, so no project files are needed.

A server that stops answering mid-run (killed, restarting under `flower-model serve`) is waited
for: each request is retried for up to RETRY_WINDOW_S, saying so in one line; if the server does
not come back, the photos already classified are kept and the rest are marked `not_classified`.
"""

import sys
import time
from http.client import HTTPException

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
from flower_model.serving.infer import ClassifierGone, Prediction, classify, expand_paths
from flower_model.serving.model_repository import IMAGE_SUFFIX

PROTOCOLS = ("http", "grpc")
REJECTED_PREFIX = "of the request: "  # the image model's message names the file's position
REQUEST_TIMEOUT_S = 60.0  # one request (a batch of photos on a busy CPU server) ends within this
PROBE_TIMEOUT_S = 5.0  # a readiness probe while the server is away
RETRY_WINDOW_S = 60.0  # how long a request is retried while the server is away
RETRY_PAUSE_S = 1.0
GRPC_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
# What a connection that breaks or never opens raises: socket errors, a reply that stops halfway.
TRANSPORT_ERRORS = (OSError, HTTPException)


def server_address(url: str, protocol: str) -> str:
    """--url as tritonclient takes it (HOST:PORT); `PROTOCOL://HOST:PORT[/]` is accepted."""
    scheme, separator, rest = url.partition("://")
    address = (rest if separator else url).rstrip("/")
    if separator and scheme != protocol:
        raise FlowerModelError(
            f"--url {url}: {scheme}:// is not --protocol {protocol}; write HOST:PORT, or give "
            f"--protocol {scheme}" + ("" if scheme in PROTOCOLS else f" (one of {PROTOCOLS})")
        )
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or "/" in address:
        raise FlowerModelError(f"--url {url} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return address


def _first_line(error: Exception) -> str:
    message = error.message() if hasattr(error, "message") else str(error)
    return (str(message or type(error).__name__).strip().splitlines() or ["no message"])[0]


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

        self.module, self.rejected, self.protocol = module, InferenceServerException, protocol
        self.raw = raw
        self.model_name = model_name if raw else model_name + IMAGE_SUFFIX
        self.url, self.address = url, server_address(url, protocol)
        self.client = self._connect(REQUEST_TIMEOUT_S)
        self._check_endpoint()
        config = self._model_config(model_name)
        try:
            info = ModelInfo.parse(config_parameters(config))
        except (MetadataError, KeyError) as error:
            raise FlowerModelError(
                f"the Triton server at {url} serves {model_name} with unusable settings "
                f"({error}); serve a model exported by `flower-model export_onnx`"
            ) from None
        self.class_names: list[str] = info.class_names
        self.settings = info.image_settings
        self.max_batch = int(config.get("max_batch_size", 0) or 0)

    def _connect(self, timeout_s: float):
        if self.protocol == "http":
            return self.module.InferenceServerClient(
                url=self.address, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        return self.module.InferenceServerClient(url=self.address)

    def _check_endpoint(self) -> None:
        """A Triton server at --url: it is live and describes itself in Triton's JSON."""
        as_json = {"as_json": True} if self.protocol == "grpc" else {}
        try:
            live = self.client.is_server_live()
            described = live and "version" in self.client.get_server_metadata(**as_json)
        except ValueError:  # a reply that is not JSON: the metrics port answers 200, empty
            described = False
        except (*TRANSPORT_ERRORS, self.rejected) as error:
            raise FlowerModelError(
                f"no Triton server answers at {self.url} ({self.protocol}): "
                f"{_first_line(error)}; start one with `flower-model serve` or fix "
                "--url/--protocol"
            ) from None
        if not described:
            raise FlowerModelError(
                f"{self.url} answers HTTP but is not Triton's {self.protocol} endpoint (the "
                "metrics port?); use the http or grpc port that `flower-model serve` prints"
            )

    def _model_config(self, model_name: str) -> dict:
        try:
            as_json = {"as_json": True} if self.protocol == "grpc" else {}
            config = self.client.get_model_config(model_name, **as_json)
        except self.rejected as error:
            raise FlowerModelError(
                f"the Triton server at {self.url} ({self.protocol}) does not serve "
                f"{model_name}: {_first_line(error)}; fix --model-name, or serve it with "
                "`flower-model serve`"
            ) from None
        return config.get("config", config)  # gRPC's JSON wraps it, HTTP's does not

    def batch_size(self, requested: int) -> int:
        """`requested`, or the server's max_batch_size (saying so) when it is larger."""
        if self.max_batch and requested > self.max_batch:
            print(
                f"--batch {requested} is above the server's max_batch_size {self.max_batch} "
                f"for {self.model_name}; sending {self.max_batch} photos per request",
                file=sys.stderr,
            )
            return self.max_batch
        return requested

    def load(self, path) -> np.ndarray:
        if self.raw:
            return load_image(path, *self.settings)
        return np.array(path.read_bytes(), dtype=object)

    def _request(self, items: np.ndarray):
        if self.raw:
            request = self.module.InferInput(INPUT, list(items.shape), "UINT8")
            request.set_data_from_numpy(np.ascontiguousarray(items, dtype=np.uint8))
        else:
            files = items.reshape(-1, 1)
            request = self.module.InferInput(FILES, list(files.shape), "BYTES")
            request.set_data_from_numpy(files)
        return request

    def _infer(self, request) -> np.ndarray:
        outputs = [self.module.InferRequestedOutput(PROBS)]
        timeout = {"client_timeout": REQUEST_TIMEOUT_S} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model_name, [request], outputs=outputs, **timeout)
        return result.as_numpy(PROBS)

    def probs(self, items: np.ndarray) -> np.ndarray:
        request = self._request(items)
        deadline = None
        while True:
            try:
                probs = self._infer(request)
            except self.rejected as error:
                if self._answering(error):
                    self._refuse(error)
                reason = _first_line(error)
            except TRANSPORT_ERRORS as error:
                reason = _first_line(error)
            else:
                if deadline is not None:
                    print(f"the server at {self.url} answers again", file=sys.stderr)
                return probs
            deadline = deadline or self._announce(reason)
            if time.monotonic() > deadline:
                raise ClassifierGone(
                    f"the server at {self.url} stopped answering ({reason}) and did not come "
                    f"back within {RETRY_WINDOW_S:.0f} s"
                )
            time.sleep(RETRY_PAUSE_S)
            self.client = self._connect(REQUEST_TIMEOUT_S)

    def _announce(self, reason: str) -> float:
        print(
            f"the server at {self.url} stopped answering ({reason}); retrying for up to "
            f"{RETRY_WINDOW_S:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        return time.monotonic() + RETRY_WINDOW_S

    def _answering(self, error) -> bool:
        """Whether the server that rejected a request is up with the model ready (the
        rejection is then about the request), or away / restarting (worth a retry)."""
        if error.status() in GRPC_UNAVAILABLE:
            return False
        probe = self._connect(PROBE_TIMEOUT_S)
        try:
            timeout = {"client_timeout": PROBE_TIMEOUT_S} if self.protocol == "grpc" else {}
            return bool(probe.is_model_ready(self.model_name, **timeout))
        except (*TRANSPORT_ERRORS, self.rejected):
            return False
        finally:
            probe.close()

    def _refuse(self, error) -> None:
        message = _first_line(error)
        if self.raw or REJECTED_PREFIX not in message:
            raise FlowerModelError(f"{self.url}: {message}") from None
        reason, _, detail = message.split(REJECTED_PREFIX, 1)[1].partition(": ")
        raise ImageDecodeError(reason, detail) from None

    def close(self) -> None:
        self.client.close()


def classify_remote(
    items: list[str], classifier: TritonClassifier, top_k: int, batch: int
) -> list[Prediction]:
    return classify(expand_paths(items), classifier, top_k, classifier.batch_size(batch))
