"""What DVC runs for stage download (dvc.yaml). The stage itself is
flower_model/pipeline/stages/download.py, reached through the library's stage table."""

from flower_model.pipeline.stages import main

if __name__ == "__main__":
    main("download")
