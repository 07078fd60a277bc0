"""`flower-model triton-repo DIR`: a standard Triton model repository for NVIDIA's container.

DIR/flower_classifier/config.pbtxt   platform onnxruntime_onnx, dynamic batching
DIR/flower_classifier/labels.txt     class names, for Triton's classification extension
DIR/flower_classifier/1/model.onnx
DIR/flower_classifier_trt/...        the same with platform tensorrt_plan, when an engine exists
"""

import json
import shutil
from pathlib import Path

from flower_model.config import ServeConfig
from flower_model.io_utils import atomic_dir

LABELS_FILE = "labels.txt"
TRT_SUFFIX = "_trt"


def config_text(
    name: str, platform: str, model_file: str, size: int, classes: int, config: ServeConfig
) -> str:
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU"
    return f"""name: "{name}"
platform: "{platform}"
default_model_filename: "{model_file}"
max_batch_size: {config.max_batch_size}
input [
  {{
    name: "images"
    data_type: TYPE_UINT8
    dims: [ {size}, {size}, 3 ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {classes} ]
  }},
  {{
    name: "probs"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {config.max_queue_delay_us}
}}
instance_group [
  {{
    count: {config.instances}
    kind: {kind}
  }}
]
"""


def _write_model(
    root: Path, name: str, platform: str, source: Path, metadata: dict, config: ServeConfig
) -> None:
    classes = json.loads(metadata["class_names"])
    folder = root / name
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(source, folder / "1" / source.name)
    (folder / LABELS_FILE).write_text("\n".join(classes) + "\n", encoding="utf-8")
    text = config_text(
        name, platform, source.name, int(metadata["image_size"]), len(classes), config
    )
    (folder / "config.pbtxt").write_text(text, encoding="utf-8")


def write_repository(output: Path, model: Path, config: ServeConfig) -> list[Path]:
    """Write the repository atomically; return the config.pbtxt files written."""
    from flower_model.export.onnx import read_metadata
    from flower_model.export.tensorrt import PLAN_FILE

    metadata = read_metadata(model)
    plan = model.parent / "trt" / PLAN_FILE
    with atomic_dir(output) as staging:
        _write_model(staging, config.model_name, "onnxruntime_onnx", model, metadata, config)
        if plan.is_file():
            _write_model(
                staging, config.model_name + TRT_SUFFIX, "tensorrt_plan", plan, metadata, config
            )
    return sorted(output.glob("*/config.pbtxt"))
