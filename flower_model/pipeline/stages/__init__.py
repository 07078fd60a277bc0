"""The stage table: one module per dvc.yaml stage, each declaring its `STAGE`. The CLI and the
`pipeline_stages/<name>.py` shims DVC runs both come here; modules load on use, so running one
stage never imports another's code."""

import importlib

from flower_model.pipeline.stage import Stage, stage_main

NAMES = ("download", "preprocess", "train", "export_onnx", "build_trt", "evaluate")  # DAG order


def stage(name: str) -> Stage:
    return importlib.import_module(f"{__name__}.{name}").STAGE


def main(name: str) -> None:
    """Entry of `python pipeline_stages/<name>.py [overrides...] [--dry-run]`, what DVC runs."""
    stage_main(stage(name))
