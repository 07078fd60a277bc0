"""`flower-model triton-repo DIR`: the Triton model repository, in one of two flavours.

Both flavours hold the same models, with the same names, inputs, labels, dynamic batching and
instance count:

- `flower_classifier`: input `images` uint8 [N, H, W, 3], output `probs` float32 [N, C].
- `flower_classifier_image`: input `files` BYTES [N, 1] (encoded photo files), outputs `probs`
  and `labels`; a python-backend model that decodes with this project's image code and calls
  `flower_classifier` through BLS.

`container` (what `flower-model serve` runs once `make triton-backend` has built the native
backend, and what NVIDIA's tritonserver image runs): `flower_classifier` on the native
onnxruntime backend (outputs `logits`, `probs`; labels through Triton's classification extension,
which reads labels.txt; ONNX Runtime's settings from the backend's documented parameters), plus
`flower_classifier_trt` on tensorrt_plan when an engine was built.
`python` (the fallback: the wheel's tritonserver has only the python backend): `flower_classifier`
is a python-backend model around ONNX Runtime (or the TensorRT engine) that also returns `labels`
[N, 1] BYTES.

Every config.pbtxt is built as Triton's own protobuf message (tritonclient's model_config_pb2)
and written in its text format, so the files are what Triton parses.
"""

import json
import shutil
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from flower_model.config import ServeConfig
from flower_model.errors import FlowerModelError
from flower_model.io_utils import atomic_dir
from flower_model.serving.contract import (
    CLASS_NAMES,
    FILES,
    IMAGE_KEYS,
    IMAGE_SIZE,
    INPUT,
    LABELS,
    LOGITS,
    PROBS,
    MetadataError,
    ModelInfo,
    class_count_problem,
    missing_metadata,
    read_model_header,
)
from flower_model.serving.infer import unusable_model

LABELS_FILE = "labels.txt"
TRT_SUFFIX = "_trt"
IMAGE_SUFFIX = "_image"
VERSION = "1"
FLAVOURS = ("container", "python")
ENGINES = ("onnx", "tensorrt")
PYTHON_MODEL_FILE = "model.py"
INT8_SUFFIX = ".int8.onnx"  # export_onnx writes model.int8.onnx beside model.onnx


def int8_model(model: Path) -> Path:
    """The INT8 variant export_onnx writes beside an fp32 model (model.onnx -> model.int8.onnx)."""
    return model.with_name(model.name.removesuffix(".onnx") + INT8_SUFFIX)


def _model_config(name: str, config: ServeConfig, parameters: dict[str, str], gpu: bool = False):
    """A ModelConfig with the settings every model shares: batching, instances, parameters."""
    from tritonclient.grpc import model_config_pb2 as pb

    model = pb.ModelConfig(name=name, max_batch_size=config.max_batch_size)
    model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    model.instance_group.add(count=config.instances, kind=kind)
    for key, value in parameters.items():
        model.parameters[key].string_value = value
    return model


def _add(tensors, name: str, data_type: str, dims: list[int], label_file: str = "") -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    tensor = tensors.add(name=name, data_type=pb.DataType.Value(data_type), dims=dims)
    if label_file:
        tensor.label_filename = label_file


def config_text(model) -> str:
    """The text format Triton reads (UTF-8 kept as is, e.g. in class names)."""
    return text_format.MessageToString(model, as_utf8=True)


def backend_parameters(config: ServeConfig) -> dict[str, str]:
    """The r24.10 onnxruntime backend's documented parameters, from serve.*."""
    threads = {"intra_op_thread_count": str(config.ort_threads)}
    return {**threads, **{key: str(value).lower() for key, value in config.ort_backend.items()}}


def _write_model(root: Path, model, files: dict[str, Path], labels: list[str]) -> None:
    folder = root / model.name
    (folder / VERSION).mkdir(parents=True)
    for target, source in files.items():
        shutil.copyfile(source, folder / VERSION / target)
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    (folder / "config.pbtxt").write_text(config_text(model), encoding="utf-8")


def _python_source(module: str) -> Path:
    return Path(str(resources.files("flower_model.serving.triton_models") / f"{module}.py"))


def model_metadata(model: Path) -> dict[str, str]:
    """The exported model's metadata, refused with the fix when the file cannot serve (missing
    or out-of-range values, class names that do not fit the output)."""
    if not model.is_file():
        raise FlowerModelError(f"{model} does not exist: run `dvc repro export_onnx` first")
    try:
        metadata, classes = read_model_header(model)
    except DecodeError as error:
        raise FlowerModelError(unusable_model(model, f"protobuf: {error}")) from None
    missing = missing_metadata(metadata)
    if missing:
        raise FlowerModelError(unusable_model(model, f"it lacks the metadata {missing}"))
    try:
        problem = class_count_problem(ModelInfo.parse(metadata), classes)
    except MetadataError as error:
        problem = str(error)
    if problem:
        raise FlowerModelError(unusable_model(model, problem))
    return metadata


def _classifier_tensors(model, size: int, classes: int, outputs: tuple[str, ...]) -> None:
    """`images` in; `logits`/`probs` (labels.txt on probs: the classification extension) and
    the python models' `labels` out, as named in `outputs`."""
    _add(model.input, INPUT, "TYPE_UINT8", [size, size, 3])
    for name in outputs:
        if name == LABELS:
            _add(model.output, LABELS, "TYPE_STRING", [1])
        else:
            _add(model.output, name, "TYPE_FP32", [classes], LABELS_FILE if name == PROBS else "")


def _container_models(staging, model: Path, plan: Path, config, shared, labels) -> None:
    """flower_classifier on the native onnxruntime backend (+ _trt on tensorrt_plan)."""
    for suffix, platform, source in (
        ("", "onnxruntime_onnx", model),
        (TRT_SUFFIX, "tensorrt_plan", plan),
    ):
        if source.is_file():
            gpu = platform == "tensorrt_plan"
            parameters = shared if gpu else {**backend_parameters(config), **shared}
            served = _model_config(config.model_name + suffix, config, parameters, gpu)
            served.platform, served.default_model_filename = platform, source.name
            _classifier_tensors(served, int(shared[IMAGE_SIZE]), len(labels), (LOGITS, PROBS))
            _write_model(staging, served, {source.name: source}, labels)


def _python_classifier(staging, model: Path, plan: Path, config, shared, labels, engine) -> None:
    """flower_classifier as a python-backend model around ONNX Runtime or the TensorRT engine."""
    from flower_model.export.tensorrt import PLAN_FILE

    files = {model.name: model, PYTHON_MODEL_FILE: _python_source("classifier")}
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
    served = _model_config(config.model_name, config, settings)
    served.backend = "python"
    _classifier_tensors(served, int(shared[IMAGE_SIZE]), len(labels), (PROBS, LABELS))
    _write_model(staging, served, files, labels)


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
    metadata = model_metadata(model)
    labels = json.loads(metadata[CLASS_NAMES])
    shared = {
        CLASS_NAMES: json.dumps(labels, ensure_ascii=False),
        **{key: metadata[key] for key in IMAGE_KEYS},
    }
    plan = model.parent / "trt" / PLAN_FILE
    with atomic_dir(output) as staging:
        if flavour == "container":
            _container_models(staging, model, plan, config, shared, labels)
        else:
            _python_classifier(staging, model, plan, config, shared, labels, engine)
        image = _model_config(
            config.model_name + IMAGE_SUFFIX, config, {"classifier": config.model_name, **shared}
        )
        image.backend = "python"
        _add(image.input, FILES, "TYPE_STRING", [1])
        _add(image.output, PROBS, "TYPE_FP32", [len(labels)], LABELS_FILE)
        _add(image.output, LABELS, "TYPE_STRING", [1])
        files = {PYTHON_MODEL_FILE: _python_source("image")}
        _write_model(staging, image, files, labels)
    return sorted(output.glob("*/config.pbtxt"))
