"""What DVC runs for stage train (dvc.yaml). The stage itself is
flower_model/pipeline/stages/train.py, reached through the library's stage table."""

from flower_model.pipeline.stages import main

if __name__ == "__main__":
    main("train")
