"""`flower-model serve`: a real Triton Inference Server (pytriton's bundled tritonserver).

Model `flower_classifier`: input `images` uint8 [N, H, W, 3]; outputs `probs` float32 [N, C] and
`labels` bytes [N, 1]. Dynamic batching merges concurrent requests. The work runs in ONNX Runtime
on CPU, or in the TensorRT engine when one was built and a GPU is present.
"""

import logging
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np

from flower_model.config import ServeConfig

log = logging.getLogger(__name__)
MONITOR_PERIOD_S = 1.0  # how often the main thread checks for a stop signal or a dead server


def library_path_fix() -> dict[str, str] | None:
    """tritonserver needs Python's libpython on LD_LIBRARY_PATH; return the env to re-exec with."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if not libdir or libdir in current.split(os.pathsep):
        return None
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, current]))}


def make_infer_function(classifier):
    from pytriton.decorators import batch

    names = np.array([name.encode() for name in classifier.class_names], dtype=object)

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        probs = classifier.probs(np.ascontiguousarray(images, dtype=np.uint8))
        return {
            "probs": probs.astype(np.float32),
            "labels": names[probs.argmax(axis=1)].reshape(-1, 1),
        }

    return infer


def serve(model: Path, config: ServeConfig, backend: str = "onnx") -> None:
    """Start Triton on config.host and block until SIGTERM/SIGINT, then shut it down cleanly."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    if backend == "tensorrt":
        from flower_model.serving.tensorrt_backend import TensorRTClassifier

        classifier = TensorRTClassifier(model)
    else:
        from flower_model.serving.infer import OnnxClassifier

        classifier = OnnxClassifier(model)
    size, classes = classifier.image_size, len(classifier.class_names)
    triton_config = TritonConfig(
        http_address=config.host,
        http_port=config.http_port,
        grpc_address=config.host,
        grpc_port=config.grpc_port,
        metrics_port=config.metrics_port,
        allow_metrics=True,
    )
    # Handlers go in before the server starts: a SIGTERM during start-up must also stop it cleanly.
    stopping = threading.Event()

    def stop(signum, frame) -> None:
        # Only flag it: stopping pytriton from inside a signal handler, while its serve() loop
        # holds the same condition, hung for over 60 s in one CI run. The main thread stops it.
        log.warning("signal %s: stopping Triton", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=config.model_name,
            infer_func=[make_infer_function(classifier) for _ in range(config.instances)],
            inputs=[Tensor(name="images", dtype=np.uint8, shape=(size, size, 3))],
            outputs=[
                Tensor(name="probs", dtype=np.float32, shape=(classes,)),
                Tensor(name="labels", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=config.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us),
            ),
            strict=True,
        )
        print(
            f"serving {config.model_name} ({backend}) on http://{config.host}:{config.http_port} "
            f"and grpc {config.host}:{config.grpc_port}",
            flush=True,
        )
        if not stopping.is_set():
            triton.run()
            while not stopping.wait(timeout=MONITOR_PERIOD_S) and triton.is_alive():
                pass
    print("triton stopped", flush=True)
    sys.stdout.flush()
