"""The file MLflow runs to load the registered model ("models from code"): it names the model
object with `mlflow.models.set_model`, the one thing such a file must do at import."""

import mlflow

from flower_model.serving.mlflow_pyfunc import FlowerPyfunc

mlflow.models.set_model(FlowerPyfunc())
