"""The training run: data + model + Lightning Trainer, tracked in MLflow, with DVC-facing outs.

Outs (stable paths, no timestamps, no absolute paths): models/model.ckpt (the best checkpoint),
models/train_run.json, reports/train.json, plots/train/{steps,epochs}.csv and loss_curve.png.
models/checkpoints/ holds best/last/periodic checkpoints for `resume=last`.
"""

import functools
import os
import signal
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from flower_model.config import Config, ConfigError, compose_raw, flatten, validate
from flower_model.constants import RESOLVED_CONFIG_NAME
from flower_model.data.datamodule import FlowerDataModule
from flower_model.figures import training_curves
from flower_model.io_utils import remove_tree, write_json, write_text
from flower_model.models.registry import check_model
from flower_model.naming import run_name
from flower_model.training.callbacks import (
    EPOCHS_FILE,
    EVENTS_FILE,
    DvcPlotsLogger,
    EventLog,
    StepTimer,
    weight_averaging,
)
from flower_model.training.checkpoints import checkpoint_callbacks, ship_best
from flower_model.training.console import EpochLines, ProgressLines, quiet_lightning_notices
from flower_model.training.module import FlowerClassifier
from flower_model.training.resume import (
    CHECKPOINT_DIR,
    LAST,
    adopt_run_config,
    load_resume_state,
)
from flower_model.training.tracking import (
    DVC_EXPERIMENT_VARIABLE,
    EXPERIMENT_TAG,
    RESUMED_FROM_TAG,
    TolerantMLFlowLogger,
    bound_mlflow_requests,
    data_version,
    git_state,
    record_inputs,
    require_tracking_server,
    run_to_continue,
    source_tags,
    weights_tags,
)

MODEL_CHECKPOINT = "model.ckpt"
TRAIN_RUN = "train_run.json"
CURVE_FILE = "loss_curve.png"


def on_gpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` trains on a GPU (`auto`: when one is visible)."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(setting: str, accelerator: str) -> str:
    """`auto`: bf16 (or fp16) autocast on a GPU, fp32 on a CPU. On CPUs bf16 autocast lost even
    where the hardware has it: on a Xeon with AVX-512 bf16 and AMX, fine-tuning EfficientNet-Lite0
    in channels_last ran 43 images/s with bf16 autocast vs 64 in fp32 at 160 px, 20 vs 27 at
    224 px (its depthwise convolutions have no fast bf16 kernels); without bf16 units it is ~10x
    slower. `trainer.precision=bf16-mixed` still asks for it."""
    if setting != "auto":
        return setting
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _baseline_name(config: Config, root: Path) -> str:
    try:
        return run_name(config, baseline=validate(compose_raw(root)))
    except ConfigError:
        return run_name(config)


def _data_and_model(config: Config, root: Path) -> tuple[FlowerDataModule, FlowerClassifier]:
    datamodule = FlowerDataModule(root / config.paths.processed_dir, config.train)
    world = config.trainer.devices * config.trainer.num_nodes
    module = FlowerClassifier(
        model=config.model.model_dump(mode="json"),
        train=config.train.model_dump(mode="json"),
        class_names=datamodule.class_names,
        steps_per_epoch=datamodule.steps_per_epoch(world),  # per process: the schedule's length
    )
    if config.train.compile and torch.cuda.is_available():
        module.net = torch.compile(module.net)
    return datamodule, module


def _start_tracking(
    config: Config, root: Path, resume: Path | None, resumed_state: dict | None, resolved: dict
) -> tuple[TolerantMLFlowLogger, dict]:
    """The MLflow run (the resumed one, or a new one with params, tags and the data as input),
    and what every event and out names: run name and id, git state, data version."""
    sha, dirty = git_state()
    data = data_version(root, config.paths.processed_dir)
    name = _baseline_name(config, root)
    tags = {"git_sha": sha, "git_dirty": str(dirty).lower(), **source_tags(sha)}
    tags.update(resumed=str(resume is not None).lower(), **data, seed=str(config.train.seed))
    experiment = os.environ.get(DVC_EXPERIMENT_VARIABLE)
    if experiment:
        tags[EXPERIMENT_TAG] = experiment  # `dvc exp show` name of this run
    tags.update(weights_tags(config.model))
    bound_mlflow_requests(config.mlflow)
    previous = resumed_state.get("mlflow_run_id") if resumed_state else None
    continued = run_to_continue(config.mlflow.tracking_uri, previous)
    if previous and not continued:
        tags[RESUMED_FROM_TAG] = previous
    mlflow_logger = TolerantMLFlowLogger(
        experiment_name=config.mlflow.experiment_name,
        tracking_uri=config.mlflow.tracking_uri,
        run_name=name,
        run_id=continued,
        tags=tags,
        # Synchronous, so a dead server surfaces at the call and stops tracking at once (async
        # uploads retried in the background, then hung the final flush). It costs one local
        # HTTP call per trainer.log_every_n_steps steps: well under 1% of a step here.
        synchronous=True,
    )
    run_id = mlflow_logger.run_id
    if continued:
        for key, value in tags.items():
            mlflow_logger.experiment.set_tag(run_id, key, value)  # resumed=true on the same run
    else:
        mlflow_logger.log_hyperparams(flatten(resolved))
        mlflow_logger.guarded(
            "log_inputs",
            record_inputs,
            mlflow_logger,
            data,
            config.data.name,
            config.paths.processed_dir,
        )
    context = {"run_id": run_id, "seed": config.train.seed, "data_version": data["data_sha256"]}
    run = {
        "name": name,
        "sha": sha,
        "dirty": dirty,
        "data": data,
        "context": {**context, "git_sha": sha},
    }
    return mlflow_logger, run


def _trainer(
    config: Config, loggers: list, callbacks: list, checkpoints: Path, on_terminal: bool, steps: int
) -> pl.Trainer:
    """`Trainer(**trainer config, ...)`: the trainer group's keys are Trainer arguments as they
    are, except `precision: auto`, resolved for this hardware, and `log_every_n_steps`, at most
    the `steps` an epoch has (a small data set had no step logged, and Lightning warned)."""
    settings = config.trainer.model_dump()
    settings["precision"] = resolve_precision(settings["precision"], settings["accelerator"])
    limit = config.train.limit_train_batches
    settings["log_every_n_steps"] = max(1, min(settings["log_every_n_steps"], steps))
    return pl.Trainer(
        **settings,
        max_epochs=config.train.max_epochs,
        # Lightning prints a notice for an explicit 1.0, which is its default: pass None then.
        limit_train_batches=None if limit == 1.0 else limit,
        logger=loggers,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the datamodule builds its DistributedSampler itself
        enable_model_summary=False,
        enable_progress_bar=on_terminal,  # the Rich bar there; EpochLines in a log
        default_root_dir=checkpoints,
    )


def _fit_interruptible(trainer, module, datamodule, resume: Path | None) -> None:
    """trainer.fit, with Ctrl-C raised as KeyboardInterrupt (the CLI prints `interrupted`, exits
    130, and a stage under DVC restores its outs).

    Lightning catches Ctrl-C itself, tears the run down, ignores SIGINT from then on and calls
    sys.exit(1): that exit, with the trainer marked interrupted, is turned back into Ctrl-C.
    """
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SystemExit:
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None


def _fit(trainer, module, datamodule, resume: Path | None, root: Path, log_event) -> float:
    """trainer.fit; a failure is logged with where to resume from, then re-raised. Seconds."""
    started = time.perf_counter()
    try:
        _fit_interruptible(trainer, module, datamodule, resume)
    except BaseException as error:
        last = Path(trainer.default_root_dir) / f"{LAST}.ckpt"
        log_event(
            "train_failed",
            error_type=type(error).__name__,
            error=str(error),
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            last_checkpoint=str(last.relative_to(root)) if last.exists() else None,
        )
        raise
    return time.perf_counter() - started


def _write_outs(config, root, trainer, best, val: dict, run: dict, resume) -> tuple[dict, dict]:
    """models/model.ckpt, reports/train.json, models/train_run.json; (report, best state)."""
    paths, models = config.paths, root / config.paths.models_dir
    best_state = ship_best(Path(best.best_model_path), models / MODEL_CHECKPOINT, root)
    report = {
        "best": {key: round(float(value), 6) for key, value in sorted(val.items())},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
    }
    write_json(root / paths.reports_dir / "train.json", report)
    write_json(
        models / TRAIN_RUN,
        {
            "mlflow_run_id": run["context"]["run_id"],
            "run_name": run["name"],
            "git_sha": run["sha"],
            "git_dirty": run["dirty"],
            **run["data"],
            "monitor": config.train.checkpoint.monitor,
            "best_score": round(float(best.best_model_score), 6),
            "best_epoch": best_state["epoch"],
            "best_step": best_state["global_step"],
            "checkpoint": (paths.models_dir / MODEL_CHECKPOINT).as_posix(),
            "resumed": resume is not None,
        },
    )
    return report, best_state


def _finish_tracking(mlflow_logger, timing: dict, config_file: Path, curve: Path) -> None:
    """Timing metrics and the config and curve artifacts; then the run ends (once)."""
    client, guarded, run_id = mlflow_logger.experiment, mlflow_logger.guarded, mlflow_logger.run_id
    for key, value in timing.items():
        guarded("log_metric", client.log_metric, run_id, f"time/{key}", float(value))
    guarded("log_artifact", client.log_artifact, run_id, str(config_file))
    guarded("log_artifact", client.log_artifact, run_id, str(curve), artifact_path="plots")
    mlflow_logger.end()


def _loggers(config, mlflow_logger, plots_dir: Path, resumed_state, on_terminal: bool) -> list:
    """MLflow, the DVC plots csv files, and (in a log, not on a terminal) one line per epoch
    instead of the Rich bar."""
    resume_step = resumed_state["global_step"] if resumed_state else None
    loggers: list = [mlflow_logger, DvcPlotsLogger(plots_dir, resume_step=resume_step)]
    if not on_terminal:
        first_epoch = resumed_state["epoch"] + 1 if resumed_state else 0
        loggers.append(EpochLines(config.train.max_epochs, first_epoch))
    return loggers


def train_model(
    config: Config, root: Path, resolved: dict, extra_callbacks: tuple = ()
) -> dict | None:
    """Fit, validate the best checkpoint, write the outs; return the report (rank zero)."""
    check_model(config.model)  # model.name is registered (the schema does not import torch)
    resume, resumed_state = load_resume_state(config, root)
    if resume is not None:
        config, resolved = adopt_run_config(config, resumed_state, resolved, resume)
    require_tracking_server(config.mlflow)
    quiet_lightning_notices(resuming=resume is not None)
    models = root / config.paths.models_dir
    checkpoints = models / CHECKPOINT_DIR
    events = EventLog(models / EVENTS_FILE, (config.paths.models_dir / EVENTS_FILE).as_posix())
    if resume is None and checkpoints.exists():
        remove_tree(checkpoints)  # a fresh run must not pick up another run's "best"

    pl.seed_everything(config.train.seed, workers=True)
    datamodule, module = _data_and_model(config, root)
    mlflow_logger, run = _start_tracking(config, root, resume, resumed_state, resolved)
    context = run["context"]
    module.run_info = {
        "resolved_config": resolved,
        "git_sha": run["sha"],
        "mlflow_run_id": context["run_id"],
        "data_version": run["data"],
    }

    plots_dir = root / config.paths.plots_dir / "train"
    on_terminal = sys.stdout.isatty()
    loggers = _loggers(config, mlflow_logger, plots_dir, resumed_state, on_terminal)
    plots_logger = loggers[1]
    best, callbacks = checkpoint_callbacks(config, checkpoints, datamodule.image_size())
    timer = StepTimer()
    averaging = weight_averaging(config.train.ema_decay, on_gpu(config.trainer.accelerator))
    # The EMA update runs before the timer's batch end, so it counts as step time, not data wait.
    callbacks = [*callbacks, *averaging, timer, *extra_callbacks]
    if not on_terminal:
        callbacks.append(ProgressLines())
    steps = module.hparams.steps_per_epoch  # per process, limit_train_batches applied
    trainer = _trainer(config, loggers, callbacks, checkpoints, on_terminal, steps)
    log_event = functools.partial(events, **context)
    log_event(
        "train_start",
        run_name=run["name"],
        resume=str(resume) if resume else None,
        device=str(trainer.strategy.root_device),
        precision=str(trainer.precision),
    )
    fit_seconds = _fit(trainer, module, datamodule, resume, root, log_event)
    plots_logger.frozen = True
    # The test split is evaluate's: it scores the shipped ONNX model, one number per quantity.
    best_path = Path(best.best_model_path)
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
    if not trainer.is_global_zero:
        return None

    report, best_state = _write_outs(config, root, trainer, best, val, run, resume)
    plots_logger.save()
    training_curves(plots_dir / EPOCHS_FILE, plots_dir / CURVE_FILE)
    config_file = models / RESOLVED_CONFIG_NAME
    write_text(config_file, yaml.safe_dump(resolved, sort_keys=False))
    timing = {**timer.summary(), "fit_seconds": fit_seconds}
    _finish_tracking(mlflow_logger, timing, config_file, plots_dir / CURVE_FILE)
    if mlflow_logger.lost:
        log_event("mlflow_lost", reason=mlflow_logger.lost)
    log_event("train_done", **timing, **report["best"])
    print(
        f"train: {trainer.current_epoch} epochs in {fit_seconds:.0f} s, "
        f"{timing['train_images_per_s']:.0f} train images/s, "
        f"data wait {timing['data_wait_share']:.1%}; best {config.train.checkpoint.monitor}="
        f"{float(best.best_model_score):.4f} (epoch {best_state['epoch'] + 1}); "
        "test split: `evaluate`",
        flush=True,
    )
    return report
