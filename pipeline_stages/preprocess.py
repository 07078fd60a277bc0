"""DVC runs this for stage preprocess; the stage is flower_model/pipeline/stages/preprocess.py."""

from flower_model.pipeline.stages.preprocess import main

if __name__ == "__main__":
    main()
