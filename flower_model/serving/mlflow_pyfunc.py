"""The registered MLflow model: a pyfunc that takes whole photo files (encoded bytes, any size,
any format Pillow reads) and returns their class names.

A photo is decoded and resized by flower_model.data.images exactly as `infer` does, with the
size, resize mode and class names read from the ONNX model's metadata, and the exported model
runs on ONNX Runtime's CPU provider (MLflow's onnx flavour asked for CUDA first and warned on
every load where there is none). Usage, in three lines:

    import mlflow
    model = mlflow.pyfunc.load_model("models:/flower_classifier@best")
    model.predict([Path("photo.jpg").read_bytes()])  # -> ["roses"]

The model is logged "from code" (MLflow's recommended form: ENTRY_FILE names this class) with
the flower_model package beside it, so it loads wherever numpy, Pillow, onnxruntime and mlflow
are installed, not only in this project's environment.
"""

import hashlib
import io
import logging
import os
from pathlib import Path

import mlflow
import numpy as np

ONNX_ARTIFACT = "onnx_model"  # the key of models/model.onnx among the model's artifacts
ENTRY_FILE = Path(__file__).with_name("mlflow_entry.py")
PACKAGE_DIR = Path(__file__).parents[1]  # flower_model/, copied into the model as its code
REQUIREMENTS = ["onnxruntime", "numpy", "pillow"]  # explicit: inferring them probes everything
BATCH = 32  # photos per ONNX Runtime call
EXAMPLE_FORMAT = "JPEG"  # the input example: a test photo as the files users send
QUIET_LOGGERS = ("mlflow.models.signature", "mlflow.store.model_registry.abstract_store")


class FlowerPyfunc(mlflow.pyfunc.PythonModel):
    """Photo file bytes in, class names out (the top-1 class of each photo)."""

    def load_context(self, context) -> None:
        from flower_model.serving.contract import ModelInfo, session, session_metadata

        self.session = session(Path(context.artifacts[ONNX_ARTIFACT]))
        self.info = ModelInfo.parse(session_metadata(self.session))

    def predict(self, model_input: list[bytes], params: dict | None = None) -> list[str]:
        """One class name per photo, in order; a file that is not a readable photo raises a
        ValueError naming its position (from 1) and why."""
        from flower_model.data.images import ImageDecodeError, load_image
        from flower_model.serving.contract import run_probs

        images = []
        for index, data in enumerate(model_input):
            try:
                images.append(load_image(data, *self.info.image_settings))
            except ImageDecodeError as error:
                raise ValueError(f"photo {index + 1} of {len(model_input)}: {error}") from None
        names = []
        for start in range(0, len(images), BATCH):
            probs = run_probs(self.session, np.stack(images[start : start + BATCH]))
            names += [self.info.class_names[int(k)] for k in probs.argmax(axis=1)]
        return names


def quiet_logging() -> None:
    """MLflow's informational lines while it logs and registers the model ("Running the predict
    function...", "Waiting up to 300 seconds...") go; its warnings still show. Its artifact
    download bar, redrawn in place, is a line of noise in a log."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def encoded_example(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] array as the bytes of a photo file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=EXAMPLE_FORMAT)
    return buffer.getvalue()


def log_pyfunc_model(onnx_path: Path, example: np.ndarray, registered_name: str):
    """Log FlowerPyfunc around `onnx_path` to the active run and register it under
    `registered_name`; MLflow's ModelInfo. The signature (list of bytes in, list of
    class names out) comes from predict's type hints; the input example is `example` encoded as a
    photo file (MLflow runs predict on it); the class names are in the MLmodel metadata."""
    from flower_model.serving.contract import ModelInfo, read_metadata

    quiet_logging()
    class_names = ModelInfo.parse(read_metadata(onnx_path)).class_names
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=ENTRY_FILE,
        artifacts={ONNX_ARTIFACT: str(onnx_path)},
        code_paths=[str(PACKAGE_DIR)],
        input_example=[encoded_example(example)],
        pip_requirements=REQUIREMENTS,
        metadata={"class_names": class_names},
        registered_model_name=registered_name,
    )
