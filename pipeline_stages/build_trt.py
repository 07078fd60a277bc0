"""Build a TensorRT engine from the ONNX model, or record honestly why not."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    import importlib

    import numpy as np

    from flower_model.data.layout import images_path
    from flower_model.errors import FlowerModelError
    from flower_model.export.tensorrt import (
        BUILD_FILE,
        PLAN_FILE,
        build_and_check,
        unavailable_reason,
    )
    from flower_model.io_utils import atomic_dir, load_array, write_json

    trt_config, models = config.trt, root / config.paths.models_dir
    record = {
        "precision": trt_config.precision,
        "profile": {
            "min": trt_config.min_batch,
            "opt": trt_config.opt_batch,
            "max": trt_config.max_batch,
        },
    }
    reason = unavailable_reason()
    with atomic_dir(models / "trt") as staging:
        if reason:
            if trt_config.required:
                raise FlowerModelError(f"trt.required=true but no engine can be built: {reason}")
            record.update(status="skipped", reason=reason)
            print(f"build_trt: SKIPPED: {reason}", flush=True)
        else:
            # INT8 engines come from the QDQ model (explicit quantisation); others from fp32.
            source = models / (
                "model.int8.onnx" if trt_config.precision == "int8" else "model.onnx"
            )
            val = load_array(images_path(root / config.paths.processed_dir, "val"), mmap=True)
            trt = importlib.import_module("tensorrt")
            record.update(
                build_and_check(source, staging / PLAN_FILE, trt_config, np.asarray(val), trt)
            )
            record["onnx"] = source.name
            print(
                f"build_trt: built {PLAN_FILE} "
                f"({record['gpu']}, TensorRT {record['tensorrt_version']})"
            )
        write_json(staging / BUILD_FILE, record)


if __name__ == "__main__":
    stage_main(run)
