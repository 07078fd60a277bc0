"""The command line as users type it: help, unknown flags, bad values, one-line errors, and the
results table (flower_model/cli.py, flower_model/commands.py, flower_model/pipeline/results.py)."""

import errno
import inspect
import json

import pytest
import yaml

from flower_model.cli import error_boundary, flag_name, flags_of
from flower_model.commands import commands, stage_names
from flower_model.pipeline.results import WIDTH, render
from tests.conftest import REPO_ROOT
from tests.helpers.cli import run_in_process

COMMANDS = list(commands())


def test_the_overview_lists_every_command_in_one_line_each():
    for words in ([], ["--help"], ["-h"]):
        code, stdout, stderr = run_in_process(REPO_ROOT, *words)
        assert code == 0 and stderr == ""
        listed = [line.split()[0] for line in stdout.splitlines() if line.startswith("  ")]
        assert listed == COMMANDS
        assert "INFO" not in stdout and all(len(line) <= WIDTH for line in stdout.splitlines())
    pipeline = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    assert COMMANDS[: len(stage_names())] == pipeline, "stages first, in dvc.yaml's order"


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_help_shows_every_flag_as_users_type_it(name, where):
    words = ["--help", "x=1"] if where == "first" else ["x=1", "--help"]
    code, stdout, stderr = run_in_process(REPO_ROOT, name, *words)
    assert code == 0 and stderr == "" and "INFO" not in stdout
    for flag in flags_of(commands()[name]):
        assert flag in stdout, f"{name} --help does not mention {flag}"
        assert "_" not in flag, "flags are typed with hyphens"


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_stage_help_names_the_groups_it_reads_and_their_options(stage):
    _, stdout, _ = run_in_process(REPO_ROOT, stage, "--help")
    groups = {"train": ("model", "efficientnet_lite0"), "evaluate": ("evaluate", "ci")}[stage]
    assert any(
        line.split()[:1] == [groups[0]] and groups[1] in line for line in stdout.splitlines()
    )
    assert f"flower-model {stage} --show-config" in stdout


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_an_unknown_flag_is_refused_before_any_work(tmp_path, name, where):
    """`flower-model train --bogus-flag` used to start a full training run and complain after."""
    words = ["--bogus-flag", "arg"] if where == "first" else ["arg", "--bogus-flag"]
    code, stdout, stderr = run_in_process(tmp_path, name, *words)
    assert code == 2
    assert stderr.startswith("error: unknown flag --bogus-flag for `flower-model ")
    for flag in flags_of(commands()[name]):
        assert flag in stderr, "the valid flags are listed"
    assert len(stderr.strip().splitlines()) == 1 and stdout == ""
    assert list(tmp_path.iterdir()) == [], "nothing was written"


def test_a_misspelt_switch_is_refused_too(tmp_path):
    code, _, stderr = run_in_process(tmp_path, "train", "--dryrun")
    assert code == 2 and "unknown flag --dryrun" in stderr and "--dry-run" in stderr


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5"])
def test_top_k_must_be_a_positive_whole_number(tmp_path, value):
    code, stdout, stderr = run_in_process(tmp_path, "infer", "x.jpg", "--top-k", value)
    assert code == 2 and stdout == ""
    assert stderr.strip() == f"error: --top-k must be a positive whole number, got {value}"


def test_a_flag_that_needs_a_value_says_so(tmp_path):
    code, _, stderr = run_in_process(tmp_path, "infer", "x.jpg", "--model")
    assert code == 2 and "--model needs a value" in stderr


def test_an_unknown_command_lists_the_commands(tmp_path):
    code, _, stderr = run_in_process(tmp_path, "trian")
    assert code == 2 and "unknown command 'trian'" in stderr and "train" in stderr


def test_underscored_flags_still_work(tmp_path):
    code, stdout, stderr = run_in_process(tmp_path, "infer", "x.jpg", "--top_k", "0")
    assert code == 2 and "--top-k must be" in stderr


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (errno.ENOSPC, "error: no space left on /some/file; free space there or choose another"),
        (errno.EACCES, "error: Permission denied on /some/file; check its permissions"),
    ],
)
def test_an_os_error_on_a_path_is_one_line(capsys, number, expected):
    with pytest.raises(SystemExit) as exited:
        with error_boundary():
            raise OSError(
                number,
                {errno.ENOSPC: "No space", errno.EACCES: "Permission denied"}[number],
                "/some/file",
            )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        with error_boundary():
            print(1 / 0)


def test_the_traceback_switch_shows_known_errors_too(monkeypatch):
    from flower_model.errors import FlowerModelError

    monkeypatch.setenv("FLOWER_MODEL_TRACEBACK", "1")
    with pytest.raises(FlowerModelError):
        with error_boundary():
            raise FlowerModelError("shown with its traceback")


def test_flag_names_are_hyphenated():
    assert flag_name("top_k") == "--top-k"
    assert all(
        parameter.kind is not inspect.Parameter.VAR_KEYWORD
        for function in commands().values()
        for parameter in inspect.signature(function).parameters.values()
    ), "no **kwargs: every flag is known before the command runs"


def _experiment(name: str, params: dict, metrics: dict) -> dict:
    return {
        "rev": f"{name}0123456789",
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": params}},
            "metrics": {"reports/metrics.json": {"data": metrics}},
        },
    }


def test_the_results_table_fits_100_columns_with_many_differing_params():
    from flower_model.pipeline.results import _rows

    metrics = {"test": {"accuracy": 0.9, "macro_f1": 0.89}, "val": {"loss": 0.5}}
    base = {"train": {"lr": 0.003, "seed": 42}, "model": {"name": "efficientnet_lite0"}}
    wide = {
        "train": {"lr": 0.01, "seed": 1, **{f"knob_{i}": i for i in range(20)}},
        "model": {"name": "efficientnet_lite1"},
    }
    shown = [
        {**_experiment("workspace", base, metrics), "experiments": None},
        {
            **_experiment("main", base, metrics),
            "experiments": [{"revs": [_experiment("lite1-trial", wide, metrics)]}],
        },
    ]
    lines = render(_rows(json.loads(json.dumps(shown)))).splitlines()
    assert all(len(line) <= WIDTH for line in lines), max(map(len, lines))
    row = lines.index(next(line for line in lines if line.startswith("lite1-trial")))
    assert "0.9000" in lines[row] and "0.5000" in lines[row]
    under = " ".join(line.strip() for line in lines[row + 1 : -1])
    assert "train.lr=0.01" in under and "model.name=efficientnet_lite1" in under
    assert "knob_19=19" in under, "wrapped, never cut"
    assert lines[row - 1].startswith("main") and "workspace" in lines[-1]


def test_results_shows_a_source_list_by_its_names():
    """An own-photos experiment's `data.sources` (name, url, sha256 each) is one short item under
    its row, not the list with its sha256s."""
    from flower_model.pipeline.results import _rows

    official = {"name": "official", "url": "https://example.org/f.tgz", "sha256": "a" * 64}
    mine = {"name": "mine", "url": "../my_photos.tgz", "sha256": "b" * 64}
    metrics = {"test": {"accuracy": 0.9}}
    shown = [
        {
            **_experiment("main", {"data": {"sources": [official, mine]}}, metrics),
            "experiments": [
                {"revs": [_experiment("own-photos", {"data": {"sources": [mine]}}, metrics)]}
            ],
        },
    ]
    lines = render(_rows(json.loads(json.dumps(shown)))).splitlines()
    row = lines.index(next(line for line in lines if line.startswith("own-photos")))
    assert lines[row + 1] == "    data.sources=[mine]", lines
    assert "sha256" not in "\n".join(lines) and "b" * 64 not in "\n".join(lines)


@pytest.mark.slow
def test_results_reads_this_repository_through_dvc():
    """On the repository itself (a bare clone has the committed metrics): the HEAD row shows
    the committed test accuracy, and every line fits 100 columns."""
    code, stdout, stderr = run_in_process(REPO_ROOT, "results")
    assert code == 0, stderr
    accuracy = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())["test"]["accuracy"]
    assert f"{accuracy:.4f}" in stdout
    assert all(len(line) <= WIDTH for line in stdout.splitlines())


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["triton-repo"], "error: `flower-model triton-repo` needs FOLDER"),
        (["triton-repo", "--flavour", "python"], "error: `flower-model triton-repo` needs FOLDER"),
        (["client", "--url", "127.0.0.1:9"], "error: no photo given"),
        (["infer"], "error: no photo given"),
        (["infer", "x.jpg", "--model", "/nonexistent/m.onnx"], "does not exist; check the path"),
        (["infer", "x.jpg", "--model", "."], "is a folder; give the .onnx file"),
        (["multirun"], "error: multirun needs a sweep"),
    ],
)
def test_missing_arguments_are_one_line_before_any_work(tmp_path, words, expected):
    """Found by a hostile run: fire's usage block, a `dvc pull` of a path outside the project,
    a 40 s experiment queued for a sweep of nothing."""
    code, stdout, stderr = run_in_process(tmp_path, *words)
    assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failed_experiment_is_shown_as_failed_without_the_baselines_numbers():
    from flower_model.pipeline.results import _rows

    metrics = {"test": {"accuracy": 0.9474}}
    failed = {**_experiment("sixty-pith", {"train": {"lr": 1}}, metrics), "error": {"msg": "x"}}
    shown = [
        {**_experiment("main", {"train": {"lr": 2}}, metrics), "experiments": [{"revs": [failed]}]}
    ]
    lines = render(_rows(shown)).splitlines()
    row = next(line for line in lines if line.startswith("sixty-pith"))
    assert "failed" in row and "0.9474" not in row
