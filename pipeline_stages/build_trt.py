"""DVC runs this for stage build_trt; the stage is flower_model/pipeline/stages/build_trt.py."""

from flower_model.pipeline.stages.build_trt import main

if __name__ == "__main__":
    main()
