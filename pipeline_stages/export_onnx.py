"""What DVC runs for stage export_onnx (dvc.yaml). The stage itself is
flower_model/pipeline/stages/export_onnx.py, reached through the library's stage table."""

from flower_model.pipeline.stages import main

if __name__ == "__main__":
    main("export_onnx")
