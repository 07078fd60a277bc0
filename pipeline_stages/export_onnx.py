"""DVC runs this for stage export_onnx; the stage is flower_model/pipeline/stages/export_onnx.py."""

from flower_model.pipeline.stages.export_onnx import main

if __name__ == "__main__":
    main()
