"""What DVC runs for stage build_trt (dvc.yaml). The stage itself is
flower_model/pipeline/stages/build_trt.py, reached through the library's stage table."""

from flower_model.pipeline.stages import main

if __name__ == "__main__":
    main("build_trt")
