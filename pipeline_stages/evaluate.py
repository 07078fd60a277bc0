"""Score every available backend on the test split: metrics, latency, plots, MLflow."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def preflight(config: Config, root: Path) -> None:
    from flower_model.training.tracking import require_tracking_server

    require_tracking_server(config.mlflow)  # a store MLflow accepts, and its server answers


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.evaluation.evaluate import evaluate
    from flower_model.evaluation.tracking import (
        log_evaluation,
        register_onnx_model,
        registration,
    )

    result = evaluate(config, root)
    log_evaluation(config, root, result)
    test = result["metrics"]["test"]
    reason = registration(config, root)
    name = config.mlflow.registered_model_name
    if reason is None:
        print(
            f"not registered in {name}: a DVC experiment or uncommitted code/params "
            "(mlflow.register_model=always registers anyway)"
        )
    else:
        aliases = register_onnx_model(config, root, test["accuracy"])
        print(f"model registry {name} ({reason}): aliases {aliases}")
    print(
        f"evaluate: onnx_fp32 test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}"
    )
    for name, rows in result["latency"]["backends"].items():
        shown = ", ".join(
            f"batch {row['batch_size']} {row['p50_ms_per_image']} ms/image" for row in rows
        )
        print(f"  {name:10s} acc {result['detail'][name]['accuracy']:.4f}  p50 {shown}")


if __name__ == "__main__":
    stage_main(run, preflight)
