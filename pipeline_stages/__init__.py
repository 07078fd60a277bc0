"""The files dvc.yaml runs, one per stage; each is a shim into flower_model.pipeline.stages."""
