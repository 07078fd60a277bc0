"""The serving contract (design.md): what an exported model, its Triton models and every client
agree on. Tensor names, the ONNX metadata that makes a model self-describing, the reader of that
metadata (from an ONNX file, an ONNX Runtime session or a Triton model config) and the one ONNX
Runtime session factory that export, evaluate, infer, the Triton models and the benchmarks share.

Imports the standard library and the project's constants only at module level: the Triton
python-backend models import it too.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from flower_model.constants import RESIZE_MODES

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
# What a model's metadata may say, checked before any of it sizes an allocation: the image
# size range of the preprocess schema, the resize modes flower_model.data.images knows, a grey
# level, and at most Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS).
IMAGE_SIZE_RANGE = (16, 1024)
PAD_VALUE_RANGE = (0, 255)
MAX_PIXELS_RANGE = (1, 178_956_970)


class MetadataError(ValueError):
    """A metadata value a model cannot be used with; the message names the key and the value."""


def _whole_number(key: str, text: str, bounds: tuple[int, int]) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise MetadataError(f"metadata {key}={text!r} is not a whole number") from None
    if not bounds[0] <= value <= bounds[1]:
        raise MetadataError(f"metadata {key}={value} is outside {bounds[0]}..{bounds[1]}")
    return value


def _class_names(text: str) -> list[str]:
    try:
        names = json.loads(text)
    except (TypeError, ValueError):
        raise MetadataError(f"metadata {CLASS_NAMES} is not JSON: {str(text)[:40]!r}") from None
    valid = isinstance(names, list) and all(isinstance(name, str) and name for name in names)
    if not valid or len(set(names)) != len(names) or not names:
        raise MetadataError(f"metadata {CLASS_NAMES} is not a list of distinct class names")
    return names


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
        """From the metadata strings, range-checked: MetadataError names a bad value, KeyError
        a missing key (see `missing_metadata`)."""
        mode = metadata[RESIZE_MODE]
        if mode not in RESIZE_MODES:
            raise MetadataError(f"metadata {RESIZE_MODE}={mode!r} is not one of {RESIZE_MODES}")
        return cls(
            class_names=_class_names(metadata[CLASS_NAMES]),
            image_size=_whole_number(IMAGE_SIZE, metadata[IMAGE_SIZE], IMAGE_SIZE_RANGE),
            resize_mode=mode,
            pad_value=_whole_number(PAD_VALUE, metadata[PAD_VALUE], PAD_VALUE_RANGE),
            max_pixels=_whole_number(MAX_PIXELS, metadata[MAX_PIXELS], MAX_PIXELS_RANGE),
        )

    @property
    def image_settings(self) -> tuple[int, str, int, int]:
        """The arguments `flower_model.data.images.load_image` takes after the path."""
        return self.image_size, self.resize_mode, self.pad_value, self.max_pixels


def class_count_problem(info: ModelInfo, classes: int | str | None) -> str | None:
    """Why the class names do not fit a `probs` output of `classes` columns (None: they do,
    or the width is symbolic)."""
    if isinstance(classes, int) and classes != len(info.class_names):
        return (
            f"metadata {CLASS_NAMES} names {len(info.class_names)} classes but the model "
            f"outputs {classes}"
        )
    return None


def missing_metadata(metadata: dict[str, str]) -> list[str]:
    return [key for key in REQUIRED_METADATA if key not in metadata]


def read_metadata(model_path: Path) -> dict[str, str]:
    """An ONNX file's metadata properties, without loading its weights into a session."""
    return read_model_header(model_path)[0]


def read_model_header(model_path: Path) -> tuple[dict[str, str], int | None]:
    """An ONNX file's metadata properties and the width of its `probs` output (None: symbolic
    or absent), without loading its weights into a session."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    widths = [
        output.type.tensor_type.shape.dim[-1].dim_value or None
        for output in model.graph.output
        if output.name == PROBS and output.type.tensor_type.shape.dim
    ]
    return {entry.key: entry.value for entry in model.metadata_props}, (widths or [None])[0]


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
