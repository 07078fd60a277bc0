"""DVC runs this for stage train; the stage is flower_model/pipeline/stages/train.py."""

from flower_model.pipeline.stages.train import main

if __name__ == "__main__":
    main()
