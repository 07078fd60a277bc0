"""Stage train: fit the configured model on the preprocessed arrays, tracked in MLflow."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import Stage


def inputs(config: Config) -> list[Path]:
    return [config.paths.processed_dir]


def outputs(config: Config) -> list[Path]:
    models, plots = config.paths.models_dir, config.paths.plots_dir / "train"
    return [
        models / "model.ckpt",
        models / "checkpoints",
        models / "config.resolved.yaml",
        models / "train_run.json",
        config.paths.reports_dir / "train.json",
        plots / "steps.csv",
        plots / "epochs.csv",
        plots / "loss_curve.png",
    ]


def preflight(config: Config, root: Path) -> None:
    from flower_model.training.resume import load_resume_state

    load_resume_state(config, root)  # the checkpoint exists, loads, and fits this model


def run(config: Config, root: Path) -> None:
    from flower_model.training.train import train_model

    train_model(config, root, STAGE.resolved(config))


STAGE = Stage(
    name="train",
    sections=(
        "paths.processed_dir",
        "paths.models_dir",
        "paths.reports_dir",
        "paths.plots_dir",
        "model",
        "train",
        "trainer",
        "resume",
    ),
    run=run,
    inputs=inputs,
    outputs=outputs,
    modules=("torch", "torchvision", "lightning", "torchmetrics", "mlflow", "timm"),
    preflight=preflight,
)
