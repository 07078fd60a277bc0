"""DVC runs this for stage evaluate; the stage is flower_model/pipeline/stages/evaluate.py."""

from flower_model.pipeline.stages.evaluate import main

if __name__ == "__main__":
    main()
