"""Score every available backend on the test split: metrics, latency, plots, MLflow."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def preflight(config: Config, root: Path) -> None:
    from flower_model.training.tracking import require_tracking_server

    require_tracking_server(config.mlflow)  # a store MLflow accepts, and its server answers


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.evaluation.evaluate import evaluate
    from flower_model.evaluation.tracking import MLFLOW_GONE, track_evaluation
    from flower_model.training.tracking import bound_mlflow_requests, warn_tracking_lost

    bound_mlflow_requests(config.mlflow)  # MLflow's own defaults retried for over 4 minutes
    result = evaluate(config, root)
    test = result["metrics"]["test"]
    try:
        track_evaluation(config, root, result)
    except MLFLOW_GONE as error:  # like train: one warning, and the reports and plots stay
        warn_tracking_lost(
            config.mlflow.tracking_uri,
            "evaluate",
            error,
            "the reports and plots are written; log them with `dvc repro -f evaluate` once "
            "MLflow is back",
        )
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
