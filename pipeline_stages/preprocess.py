"""What DVC runs for stage preprocess (dvc.yaml). The stage itself is
flower_model/pipeline/stages/preprocess.py, reached through the library's stage table."""

from flower_model.pipeline.stages import main

if __name__ == "__main__":
    main("preprocess")
