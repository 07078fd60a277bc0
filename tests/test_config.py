"""Config: the schema names the bad key; params.yaml stays the composition of configs/."""

import subprocess
import sys

import pytest
import yaml

from flower_model.commands import stage_names
from flower_model.config import ConfigError, compose_raw, load_config, validate
from flower_model.naming import (
    MODEL_SHORT_NAMES,
    SHORT_NAMES,
    run_name,
    short_name,
    tunable_keys,
)
from flower_model.pipeline.compose import check_params, compose_params, write_params
from tests.conftest import REPO_ROOT, make_config
from tests.helpers.cli import run_in_process


def _cli(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "flower_model.commands", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_composition_validates():
    config = make_config()
    assert config.model.name == "efficientnet_lite0" and config.model.pretrained
    assert config.preprocess.image_size > 0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lrr", 0.1, "unknown key"),
        ("train.batch_size", "many", "integer"),
        ("train.lr", -1.0, "greater than 0"),
        ("preprocess.resize_mode", "stretch", "crop"),
        ("data.sources.0.sha256", "abc", "pattern"),
    ],
)
def test_bad_value_is_named(key, value, expected):
    raw = compose_raw(REPO_ROOT)
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert key in str(error.value)
    assert expected in str(error.value)


def test_missing_key_is_named():
    raw = compose_raw(REPO_ROOT)
    del raw["train"]["seed"]
    with pytest.raises(ConfigError, match=r"train\.seed = \(missing\)"):
        validate(raw)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="leaves no"):
        make_config(["preprocess.val_fraction=0.5", "preprocess.test_fraction=0.5"])
    with pytest.raises(ConfigError, match="min_batch <= opt_batch"):
        make_config(["trt.min_batch=8", "trt.opt_batch=4"])
    with pytest.raises(ConfigError, match="need one entry per stage each"):
        make_config(["model=small_cnn", "model.blocks=[1,1]"])
    with pytest.raises(ConfigError, match="model.pretrained is not a key of this config"):
        make_config(["model=small_cnn", "model.pretrained=true"])


def test_hydra_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match="nope"):
        compose_raw(REPO_ROOT, ["train.nope=1"])


def test_group_switch_composes():
    config = make_config(["model=resnet18"])
    assert config.model.name == "resnet18" and config.model.family == "torchvision"
    assert not hasattr(config.model, "widths"), "small_cnn's keys belong to small_cnn only"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=resnet18", "+model.widths=[8]"], "model.widths = [8]: unknown key"),
        (["model.widths=[8]"], "model.widths is not a key of this config"),
        (["model.family=vit"], "model.family = 'vit': choose one of ['small_cnn', "),
        (["~model.family"], "model.family = (missing): choose one of"),
        (["model=small_cnn", "model.widths=[8,0]"], "model.widths.1 = 0: Input should be greater"),
        (["model.freeze_stages=8"], "model.freeze_stages = 8: Input should be less"),
    ],
)
def test_model_family_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as error:
        make_config(overrides)
    assert expected in str(error.value)
    assert "small_cnn." not in str(error.value) and "efficientnet_lite." not in str(error.value)


def test_a_preset_says_only_what_it_changes():
    """efficientnet_lite1/2 and mobilenet_v3_small inherit their family's preset: the composition
    equals the base with only `name` changed."""
    for preset, base in [
        ("efficientnet_lite1", "efficientnet_lite0"),
        ("efficientnet_lite2", "efficientnet_lite0"),
        ("mobilenet_v3_small", "resnet18"),
    ]:
        values = yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{preset}.yaml").read_text())
        assert set(values) == {"defaults", "name"}, f"{preset} repeats its base's keys"
        composed = make_config([f"model={preset}"]).model.model_dump()
        assert composed == {**make_config([f"model={base}"]).model.model_dump(), "name": preset}


def test_validating_the_config_imports_no_torch():
    """download and preprocess validate the whole config, model section included: the model name
    is left to the registry (torch) so that this stays cheap."""
    code = (
        "import sys; from pathlib import Path; from flower_model.config import load_config; "
        "load_config(Path('.'), ['model=small_cnn']); load_config(Path('.')); "
        "assert 'torch' not in sys.modules, 'validation imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_params_yaml_matches_configs():
    assert check_params(REPO_ROOT) == ""


def test_drift_is_detected_and_compose_fixes_it(project):
    config_file = project / "configs" / "train" / "finetune.yaml"
    config_file.write_text(config_file.read_text().replace("lr: 0.003", "lr: 0.004"))
    problem = check_params(project)
    assert "lr: 0.004" in problem and "flower-model compose" in problem
    assert write_params(project) is True
    assert check_params(project) == ""
    assert load_config(project).train.lr == 0.004


def test_compose_refuses_invalid_config_and_keeps_old_params(project):
    config_file = project / "configs" / "train" / "finetune.yaml"
    before = (project / "params.yaml").read_text()
    config_file.write_text(config_file.read_text().replace("lr: 0.003", "lr: -5"))
    with pytest.raises(ConfigError, match="train.lr"):
        write_params(project)
    assert (project / "params.yaml").read_text() == before


def test_compose_equals_dvc_hydra_output():
    # DVC's Hydra mode writes params.yaml with the same function: no spurious diffs after exp run.
    assert compose_params(REPO_ROOT) == (REPO_ROOT / "params.yaml").read_text()


@pytest.mark.slow
def test_cli_compose_check_and_dry_run(project):
    assert _cli(project, "compose", "--check").returncode == 0
    result = _cli(project, "download", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout and "data/raw/flower_photos" in result.stdout
    assert not (project / "data").exists()


def test_cli_dry_run_reports_missing_inputs(project):
    result = _cli(project, "preprocess", "--dry-run")
    assert result.returncode == 2
    assert "data/raw/flower_photos" in result.stderr and "dvc repro" in result.stderr


def test_cli_config_error_surfaces_before_work(project):
    result = _cli(project, "download", "data.http_retries=0")
    assert result.returncode == 2
    assert "data.http_retries" in result.stderr
    assert not (project / "data").exists()


def test_cli_overrides_are_announced(project):
    result = _cli(project, "download", "data.http_retries=2", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "overrides ['data.http_retries=2']" in result.stdout
    assert "http_retries: 2" not in result.stdout, "the values are printed on request only"
    assert "--show-config" in result.stdout


@pytest.mark.parametrize(
    "words",
    [
        ("--show-config", "data.http_retries=2", "--dry-run"),
        ("data.http_retries=2", "--dry-run", "--show-config"),
        ("--dry-run", "--show_config", "data.http_retries=2"),
    ],
)
def test_show_config_prints_the_values_read(project, words):
    result = _cli(project, "download", *words)
    assert result.returncode == 0, result.stderr
    assert "http_retries: 2" in result.stdout
    assert "dry run" not in result.stdout, "--show-config prints and exits before any check"


@pytest.mark.parametrize("stage", ["evaluate", "train"])
def test_show_config_prints_and_exits_without_running_the_stage(project, stage):
    """`flower-model evaluate --show-config experiment=quick` used to print the config and then
    run evaluate (and fail at MLflow); with no inputs at all it now just prints."""
    code, stdout, stderr = run_in_process(project, stage, "--show-config", "experiment=quick")
    assert code == 0, stdout + stderr
    assert f"== stage {stage}" in stdout and "Traceback" not in stderr
    assert not (project / "models").exists() and not (project / "reports").exists()


def test_show_config_takes_no_value(project):
    result = _cli(project, "download", "--show-config=yes", "--dry-run")
    assert result.returncode == 2 and "--show-config takes no value" in result.stderr


def test_every_tunable_has_a_unique_short_name():
    presets = sorted(path.stem for path in (REPO_ROOT / "configs" / "model").glob("*.yaml"))
    tunables = list(
        dict.fromkeys(
            key for preset in presets for key in tunable_keys(make_config([f"model={preset}"]))
        )
    )
    names = [short_name(key) for key in tunables if key not in ("model.name", "model.family")]
    clashes = {name for name in names if names.count(name) > 1}
    assert not clashes, f"short names {clashes} clash: give one key its own in naming.SHORT_NAMES"
    assert all(names) and not set(SHORT_NAMES) - set(tunables), "a listed key no longer exists"


def test_a_new_key_needs_no_short_name_edit():
    assert short_name("train.augment.some_new_knob") == "snk"
    assert short_name("train.lr") == "lr"  # listed names win


def test_run_name():
    # Pinned, so the expected names hold whatever the defaults become.
    pinned = ["model=small_cnn", "train.lr=0.003", "train.batch_size=64", "train.max_epochs=40"]
    base = make_config(pinned)
    changed = make_config([*pinned, "train.lr=0.001", "model=resnet18", "train.seed=7"])
    assert run_name(base) == "cnn-lr0.003-bs64-ep40"
    name = run_name(changed, baseline=base)
    assert name.startswith(f"{MODEL_SHORT_NAMES['resnet18']}-lr0.001-bs64-ep40")
    assert "s7" in name.split("-")
    # resnet18's own key (small_cnn has no `pretrained`) shows; its family (implied) does not.
    assert "pre0" in name.split("-") and "torchvision" not in name


def test_config_files_document_every_value():
    # Each value says what it does and its default; entries inside list items need a comment only.
    for path in sorted((REPO_ROOT / "configs").rglob("*.yaml")):
        item_indent = None
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if stripped.startswith("- "):
                item_indent = indent
            elif item_indent is not None and indent <= item_indent:
                item_indent = None
            value_part = stripped.split("#")[0].strip()
            if not value_part or value_part.endswith(":") or stripped.startswith("- _self_"):
                continue
            if ":" not in value_part or path.name == "config.yaml" and indent > 0:
                continue
            where = f"{path.relative_to(REPO_ROOT)}:{number}"
            assert "#" in line, f"{where} has no comment"
            if item_indent is None:
                assert "[default:" in line, f"{where} does not state its default"


STAGE_COMMANDS = stage_names()


@pytest.mark.parametrize("stage", STAGE_COMMANDS)
@pytest.mark.parametrize("flag_first", [True, False], ids=["flag_first", "flag_last"])
@pytest.mark.parametrize("override", ["train.lr=-1", "+preprocess.bogus_knob=1"])
def test_dry_run_validates_overrides_in_any_order(project, stage, flag_first, override):
    args = ["--dry-run", override] if flag_first else [override, "--dry-run"]
    result = _cli(project, stage, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    key = override.lstrip("+").split("=")[0]
    assert key in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", ["--dry-run=yes", "--dry-run=1"])
def test_a_flag_given_a_value_it_does_not_take_is_an_error(project, flag):
    result = _cli(project, "download", flag)
    assert result.returncode == 2
    assert "--dry-run takes no value" in result.stderr


@pytest.mark.parametrize("flag_first", [True, False], ids=["flag_first", "flag_last"])
def test_dry_run_checks_the_resume_checkpoint(project, tiny_processed, flag_first):
    import shutil

    shutil.copytree(tiny_processed / "data", project / "data")
    override = "resume=/nonexistent/last.ckpt"
    args = ["--dry-run", override] if flag_first else [override, "--dry-run"]
    code, stdout, stderr = run_in_process(project, "train", *args)
    assert code == 2, stdout + stderr
    assert "resume='/nonexistent/last.ckpt': no checkpoint" in stderr
    assert "Traceback" not in stderr


PRESET = "quick"  # configs/experiment/quick.yaml: the try-it run `make verify` uses


def _own_values(group: str, option: str) -> dict:
    """The keys a group option file sets itself (its `defaults:` list aside)."""
    values = yaml.safe_load((REPO_ROOT / "configs" / group / f"{option}.yaml").read_text())
    values.pop("defaults", None)
    return values


def test_the_quick_preset_switches_its_groups_and_nothing_else():
    """`experiment=quick`, through the stages' own config loading: every group its defaults list
    overrides holds that option's values (which differ from the default run's), and every other
    section stays the default's. A preset whose override silently stopped applying fails here."""
    preset = yaml.safe_load((REPO_ROOT / "configs" / "experiment" / f"{PRESET}.yaml").read_text())
    switched = {}
    for entry in preset["defaults"]:
        ((key, option),) = entry.items()
        switched[key.removeprefix("override /")] = option
    assert {"preprocess", "train", "trainer", "export", "evaluate"} <= set(switched)
    quick = load_config(REPO_ROOT, [f"experiment={PRESET}"]).model_dump(mode="json")
    default = make_config().model_dump(mode="json")
    for group, option in switched.items():
        own = _own_values(group, option)
        assert own, f"configs/{group}/{option}.yaml sets nothing"
        for key, value in own.items():
            assert quick[group][key] == value, f"{group}.{key}: the preset's {option} not applied"
        assert quick[group] != default[group], f"{group}={option} changes nothing"
        alone = make_config([f"{group}={option}"]).model_dump(mode="json")
        assert quick[group] == alone[group], f"{group}: the preset is more than {option}"
    for section in set(default) - set(switched):
        assert quick[section] == default[section], f"the preset changed {section}"
    # What the preset promises in its header and the README: 250 photos, 2 epochs.
    assert quick["preprocess"]["max_images_per_class"] is not None
    assert quick["train"]["max_epochs"] < default["train"]["max_epochs"]
    assert quick["export"]["calibration_images"] < default["export"]["calibration_images"]
    assert quick["evaluate"]["timed_iterations"] < default["evaluate"]["timed_iterations"]


@pytest.mark.parametrize(
    ("uri", "allow_file_store", "refused"),
    [
        ("file:/tmp/flower/mlruns", None, True),
        ("./mlruns", None, True),  # a plain path is MLflow's file store too
        ("file:/tmp/flower/mlruns", "true", False),  # MLflow's own opt-out
        ("sqlite:///mlflow.db", None, False),
        ("http://127.0.0.1:8080", None, False),
        ("databricks", None, False),  # a bare word MLflow takes as a remote store
    ],
)
def test_mlflow_file_store_is_a_config_error_naming_sqlite(
    monkeypatch, uri, allow_file_store, refused
):
    from flower_model.training.tracking import check_tracking_uri

    if allow_file_store is None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allow_file_store)
    config = make_config([f"mlflow.tracking_uri={uri}"])
    if not refused:
        check_tracking_uri(config.mlflow)
        return
    with pytest.raises(ConfigError) as caught:
        check_tracking_uri(config.mlflow)
    message = str(caught.value)
    assert "\n" not in message and uri in message
    assert "sqlite:///" in message and "MLFLOW_ALLOW_FILE_STORE=true" in message


@pytest.mark.parametrize(("stage", "dry_run"), [("train", False), ("evaluate", True)])
def test_a_file_store_stops_the_stage_before_any_work(
    project, tiny_processed, monkeypatch, stage, dry_run
):
    """MLflow 3 raised on `file:` with a long traceback once training had started; the stage now
    exits 2 with one line naming sqlite:/// before it writes anything."""
    import shutil

    from flower_model.pipeline.stage import inputs

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    shutil.copytree(tiny_processed / "data", project / "data")
    override = f"mlflow.tracking_uri=file:{project / 'mlruns'}"
    for path in inputs(stage, make_config([override]), project):
        if not (project / path).exists():  # a dry run checks that inputs exist, nothing more
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).touch()
    before = sorted(path for path in project.rglob("*"))
    words = [override, "--dry-run"] if dry_run else [override]
    code, stdout, stderr = run_in_process(project, stage, *words)
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: mlflow.tracking_uri=file:"), lines
    assert "sqlite:///" in lines[0]
    assert sorted(path for path in project.rglob("*")) == before, "nothing written"


def test_serve_ports_must_differ():
    """Two endpoints on one port used to reach tritonserver, which printed ~400 lines of usage."""
    with pytest.raises(ConfigError, match=r"three ports must differ.*serve.grpc_port=8000"):
        make_config(["serve.http_port=8000", "serve.grpc_port=8000"])
