"""Export the best checkpoint to ONNX (+ INT8), gated on parity with PyTorch."""

import json
from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    import yaml

    from flower_model.constants import RESOLVED_CONFIG_NAME
    from flower_model.data.layout import images_path, read_classes
    from flower_model.export.onnx import config_hash, export_model, quantize_int8, spread_sample
    from flower_model.io_utils import load_array, write_json
    from flower_model.models.classifier import load_classifier

    paths, export = config.paths, config.export
    processed, models = root / paths.processed_dir, root / paths.models_dir
    checkpoint = models / "model.ckpt"
    _, state = load_classifier(checkpoint)
    val = load_array(images_path(processed, "val"), mmap=True)
    # How the arrays were made travels with the model, so inference prepares photos the same way.
    prepared = yaml.safe_load((processed / RESOLVED_CONFIG_NAME).read_text())["preprocess"]
    metadata = {
        "class_names": json.dumps(read_classes(processed)),
        "image_size": str(int(val.shape[1])),
        "resize_mode": prepared["resize_mode"],
        "pad_value": str(prepared["pad_value"]),
        "max_image_pixels": str(prepared["max_image_pixels"]),
        "input_layout": "NHWC uint8 RGB",
        "normalisation": json.dumps(
            {
                "mean": state["hyper_parameters"]["model"]["input_mean"],
                "std": state["hyper_parameters"]["model"]["input_std"],
                "units": "0..255 RGB",
            }
        ),
        "git_sha": state.get("git_sha", "unknown"),
        "config_hash": config_hash(state.get("resolved_config", {})),
        "mlflow_run_id": state.get("mlflow_run_id", ""),
    }
    report = export_model(
        checkpoint,
        models / "model.onnx",
        export,
        spread_sample(val, export.parity_images),
        metadata,
    )
    train = load_array(images_path(processed, "train"), mmap=True)
    calibration = spread_sample(train, export.calibration_images)
    quantize_int8(
        models / "model.onnx", models / "model.int8.onnx", calibration, export.int8_reduce_range
    )
    report["int8"] = {
        "calibration_images": int(len(calibration)),
        "reduce_range": export.int8_reduce_range,
    }
    report["bytes"] = {
        name: (models / name).stat().st_size for name in ("model.onnx", "model.int8.onnx")
    }
    write_json(root / paths.reports_dir / "onnx.json", report)
    print(f"export_onnx: parity {report['parity']}; wrote {', '.join(report['bytes'])}", flush=True)


if __name__ == "__main__":
    stage_main(run)
