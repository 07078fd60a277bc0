"""`flower-model triton-repo DIR`: the Triton model repository, in one of two flavours.

Both flavours hold the same models, with the same names, inputs, labels, dynamic batching and
instance count:

- `flower_classifier`: input `images` uint8 [N, H, W, 3], output `probs` float32 [N, C].
- `flower_classifier_image`: input `files` BYTES [N, 1] (encoded photo files), outputs `probs`
  and `labels`; a python-backend model that decodes with this project's image code and calls
  `flower_classifier` through BLS.

`container` (NVIDIA's tritonserver image): `flower_classifier` runs on the native onnxruntime
backend (outputs `logits`, `probs`; labels through Triton's classification extension, which
reads labels.txt), plus `flower_classifier_trt` on tensorrt_plan when an engine was built.
`python` (the tritonserver bundled here, which has only the python backend; what `flower-model
serve` runs): `flower_classifier` is a python-backend model around ONNX Runtime (or the TensorRT
engine) that also returns `labels` [N, 1] BYTES.
"""

import json
import shutil
from importlib import resources
from pathlib import Path

from google.protobuf.message import DecodeError

from flower_model.config import ServeConfig
from flower_model.errors import FlowerModelError
from flower_model.io_utils import atomic_dir
from flower_model.serving.infer import unusable_model

LABELS_FILE = "labels.txt"
TRT_SUFFIX = "_trt"
IMAGE_SUFFIX = "_image"
VERSION = "1"
FLAVOURS = ("container", "python")
ENGINES = ("onnx", "tensorrt")
PYTHON_MODEL_FILE = "model.py"
# Image settings the server-side decoder and the clients need, from the ONNX metadata.
IMAGE_KEYS = ("image_size", "resize_mode", "pad_value", "max_image_pixels")


def _tensor(name: str, data_type: str, dims: str, extra: str = "") -> str:
    return (
        f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {dims} ]{extra}\n  }}'
    )


def _quoted(value: str) -> str:
    """A protobuf text-format string (it has no \\u escapes, so non-ASCII stays as UTF-8)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {_quoted(value)} }}\n}}\n'
        for key, value in values.items()
    )


def read_parameters(model_config: dict) -> dict[str, str]:
    """The `parameters` this module writes, from a model config as Triton hands it (JSON)."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def config_text(
    name: str,
    backend: str,
    inputs: list[str],
    outputs: list[str],
    config: ServeConfig,
    parameters: dict[str, str],
    kind: str = "KIND_CPU",
) -> str:
    """One config.pbtxt; `backend` is the line naming the platform or backend."""
    separator = ",\n"
    return (
        f'name: "{name}"\n{backend}\nmax_batch_size: {config.max_batch_size}\n'
        f"input [\n{separator.join(inputs)}\n]\noutput [\n{separator.join(outputs)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {config.instances}\n    kind: {kind}\n  }}\n]\n"
        + _parameters(parameters)
    )


def _write_model(root: Path, name: str, text: str, files: dict[str, Path], labels: list[str]):
    folder = root / name
    (folder / VERSION).mkdir(parents=True)
    for target, source in files.items():
        shutil.copyfile(source, folder / VERSION / target)
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")


def _python_source(module: str) -> Path:
    return Path(str(resources.files("flower_model.serving.triton_models") / f"{module}.py"))


def _model_metadata(model: Path) -> dict[str, str]:
    """The exported model's metadata, refused with the fix when the file cannot serve."""
    from flower_model.export.onnx import read_metadata

    if not model.is_file():
        raise FlowerModelError(f"{model} does not exist: run `dvc repro export_onnx` first")
    try:
        metadata = read_metadata(model)
    except DecodeError as error:
        raise FlowerModelError(unusable_model(model, f"protobuf: {error}")) from None
    missing = [key for key in ("class_names", *IMAGE_KEYS) if key not in metadata]
    if missing:
        raise FlowerModelError(unusable_model(model, f"it lacks the metadata {missing}"))
    return metadata


def write_repository(
    output: Path,
    model: Path,
    config: ServeConfig,
    flavour: str = "container",
    engine: str = "onnx",
) -> list[Path]:
    """Write the repository atomically; return the config.pbtxt files written, sorted."""
    from flower_model.export.tensorrt import PLAN_FILE

    if flavour not in FLAVOURS:
        raise FlowerModelError(f"--flavour must be one of {FLAVOURS}, got {flavour!r}")
    if engine not in ENGINES:
        raise FlowerModelError(f"--backend must be one of {ENGINES}, got {engine!r}")
    metadata = _model_metadata(model)
    labels = json.loads(metadata["class_names"])
    size, classes = int(metadata["image_size"]), len(labels)
    shared = {
        "class_names": json.dumps(labels, ensure_ascii=False),
        **{key: metadata[key] for key in IMAGE_KEYS},
    }
    images = _tensor("images", "TYPE_UINT8", f"{size}, {size}, 3")
    probs = _tensor("probs", "TYPE_FP32", str(classes), f'\n    label_filename: "{LABELS_FILE}"')
    labels_out = _tensor("labels", "TYPE_STRING", "1")
    plan = model.parent / "trt" / PLAN_FILE
    name = config.model_name
    with atomic_dir(output) as staging:
        if flavour == "container":
            logits = _tensor("logits", "TYPE_FP32", str(classes))
            for suffix, platform, source, kind in (
                ("", "onnxruntime_onnx", model, "KIND_CPU"),
                (TRT_SUFFIX, "tensorrt_plan", plan, "KIND_GPU"),
            ):
                if source.is_file():
                    backend = f'platform: "{platform}"\ndefault_model_filename: "{source.name}"'
                    text = config_text(
                        name + suffix, backend, [images], [logits, probs], config, shared, kind
                    )
                    _write_model(staging, name + suffix, text, {source.name: source}, labels)
        else:
            files = {model.name: model}
            settings = {
                "engine": engine,
                "model_file": model.name,
                "ort_spinning": str(config.ort_spinning).lower(),
                "ort_threads": str(config.ort_threads),
                **shared,
            }
            if engine == "tensorrt":
                if not plan.is_file():
                    raise FlowerModelError(
                        f"--backend tensorrt needs {plan}: run `dvc repro build_trt` on a GPU "
                        "host (see models/trt/build.json), or use --backend onnx"
                    )
                files[PLAN_FILE] = plan
                settings["plan_file"] = PLAN_FILE
            text = config_text(
                name, 'backend: "python"', [images], [probs, labels_out], config, settings
            )
            files[PYTHON_MODEL_FILE] = _python_source("classifier")
            _write_model(staging, name, text, files, labels)
        files_in = _tensor("files", "TYPE_STRING", "1")
        text = config_text(
            name + IMAGE_SUFFIX,
            'backend: "python"',
            [files_in],
            [probs, labels_out],
            config,
            {"classifier": name, **shared},
        )
        files = {PYTHON_MODEL_FILE: _python_source("image")}
        _write_model(staging, name + IMAGE_SUFFIX, text, files, labels)
    return sorted(output.glob("*/config.pbtxt"))
