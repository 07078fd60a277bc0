"""The pipeline's stages, one module each: `pipeline_stages/<name>.py` is stage <name> of
dvc.yaml (`python pipeline_stages/<name>.py` is what DVC runs; `flower-model <name>` runs the same
module). Each composes and validates its config through `flower_model.pipeline.stage` and calls
the library; it never holds the work itself."""
