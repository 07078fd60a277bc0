"""DVC runs this for stage download; the stage is flower_model/pipeline/stages/download.py."""

from flower_model.pipeline.stages.download import main

if __name__ == "__main__":
    main()
