"""The serving contract (design.md): what an exported model, its Triton models and every client
agree on. Tensor names, the ONNX metadata that makes a model self-describing, the reader of that
metadata (from an ONNX file, an ONNX Runtime session or a Triton model config) and the one ONNX
Runtime session factory that export, evaluate, infer, the Triton models and the benchmarks share.

Imports numpy only at module level: the Triton python-backend models import it too.
"""

import json
from dataclasses import dataclass
from pathlib import Path

INPUT = "images"  # uint8 [N, H, W, 3] RGB, decoded and resized by flower_model.data.images
LOGITS = "logits"  # float32 [N, C]
PROBS = "probs"  # float32 [N, C], softmax of logits
OUTPUTS = (LOGITS, PROBS)  # the ONNX graph's outputs, in order
LABELS = "labels"  # BYTES [N, 1], the top-1 class name (python-backend models)
FILES = "files"  # BYTES [N, 1], whole encoded photo files (the image model's input)

CLASS_NAMES = "class_names"  # JSON list of class names, in output order
IMAGE_SIZE, RESIZE_MODE, PAD_VALUE, MAX_PIXELS = (
    "image_size",
    "resize_mode",
    "pad_value",
    "max_image_pixels",
)
IMAGE_KEYS = (IMAGE_SIZE, RESIZE_MODE, PAD_VALUE, MAX_PIXELS)  # how a photo is prepared
REQUIRED_METADATA = (CLASS_NAMES, *IMAGE_KEYS)


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to prepare a photo and name the answer, read from the metadata."""

    class_names: list[str]
    image_size: int
    resize_mode: str
    pad_value: int
    max_pixels: int

    @classmethod
    def parse(cls, metadata: dict[str, str]) -> "ModelInfo":
        """From the metadata strings; KeyError names a missing key (see `missing_metadata`)."""
        return cls(
            class_names=json.loads(metadata[CLASS_NAMES]),
            image_size=int(metadata[IMAGE_SIZE]),
            resize_mode=metadata[RESIZE_MODE],
            pad_value=int(metadata[PAD_VALUE]),
            max_pixels=int(metadata[MAX_PIXELS]),
        )

    @property
    def image_settings(self) -> tuple[int, str, int, int]:
        """The arguments `flower_model.data.images.load_image` takes after the path."""
        return self.image_size, self.resize_mode, self.pad_value, self.max_pixels


def missing_metadata(metadata: dict[str, str]) -> list[str]:
    return [key for key in REQUIRED_METADATA if key not in metadata]


def read_metadata(model_path: Path) -> dict[str, str]:
    """An ONNX file's metadata properties, without loading its weights into a session."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}


def session_metadata(session) -> dict[str, str]:
    """The metadata properties of a model already open in ONNX Runtime."""
    return dict(session.get_modelmeta().custom_metadata_map)


def config_parameters(model_config: dict) -> dict[str, str]:
    """A Triton model config's `parameters` (JSON, as Triton hands it to a model or a client)."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def session(model_path: Path, threads: int = 0, spinning: bool = False):
    """An ONNX Runtime CPU session with full graph optimisation.

    `threads` caps the intra-op threads of one run (0: ORT's default, one per core);
    `spinning=False` stops idle ORT threads from busy-waiting for the next run, which on a shared
    host takes the cores from everything else (ORT's own default is to spin).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_probs(runner, images):
    """`probs` for a uint8 batch from an ONNX Runtime session."""
    return runner.run([PROBS], {INPUT: images})[0]
