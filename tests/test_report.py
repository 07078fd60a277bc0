"""`flower-model report`: McNemar's counts and p-value (against scipy), the Markdown at <= 100
columns, revisions by branch, commit and experiment name, and one-line errors for bad input.

The history here is a small git + DVC repository whose predictions.csv is git-tracked (dvc.api
reads both kinds); tests/test_ci_reproduce.py reads them as DVC outs from a real pipeline."""

import json
import subprocess

import pytest
import yaml
from scipy.stats import binomtest

from flower_model.commands import main
from flower_model.errors import FlowerModelError
from flower_model.pipeline.report import (
    DifferentTestSets,
    Side,
    changed_params,
    changed_stages,
    mcnemar,
    render,
)

CLASSES = ("daisy", "roses", "tulips")


def _predictions(rights: list[bool]) -> dict[str, tuple[str, str]]:
    """file -> (label, prediction): right or wrong as `rights` says."""
    return {
        f"photo_{i}.jpg": (CLASSES[i % 3], CLASSES[i % 3] if right else CLASSES[(i + 1) % 3])
        for i, right in enumerate(rights)
    }


@pytest.mark.parametrize(
    ("both", "base_only", "target_only", "neither"),
    [(10, 3, 9, 2), (0, 0, 1, 0), (5, 7, 0, 1), (4, 0, 0, 3), (50, 20, 21, 9)],
)
def test_mcnemar_counts_the_flips_and_its_p_value_is_scipys(both, base_only, target_only, neither):
    base = [True] * both + [True] * base_only + [False] * target_only + [False] * neither
    target = [True] * both + [False] * base_only + [True] * target_only + [False] * neither
    flips = mcnemar(_predictions(base), _predictions(target))
    assert (flips.photos, flips.base_only, flips.target_only) == (
        len(base),
        base_only,
        target_only,
    )
    flipped = base_only + target_only
    expected = binomtest(base_only, flipped, 0.5).pvalue if flipped else 1.0
    assert flips.p_value == expected


def test_mcnemar_refuses_different_test_photos():
    base = _predictions([True, False, True])
    with pytest.raises(DifferentTestSets, match="photo_2.jpg"):
        mcnemar(base, _predictions([True, False]))
    relabelled = {**base, "photo_0.jpg": ("tulips", "tulips")}
    with pytest.raises(DifferentTestSets, match="labels differ"):
        mcnemar(base, relabelled)


def test_only_differing_params_and_changed_stages_are_listed():
    base = {"train.lr": 0.001, "train.seed": 42, "model.name": "a"}
    target = {"train.lr": 0.002, "train.seed": 42, "export.opset": 17}
    assert changed_params(base, target) == [
        ("train.lr", 0.001, 0.002),
        ("export.opset", None, 17),
        ("model.name", "a", None),
    ]
    lock = {"stages": {"train": {"params": {"lr": 1}}, "evaluate": {"outs": ["x"]}}}
    relocked = {"stages": {"train": {"params": {"lr": 2}}, "evaluate": {"outs": ["x"]}}}
    assert changed_stages(yaml.safe_dump(lock), yaml.safe_dump(relocked)) == ["train"]
    assert changed_stages(None, yaml.safe_dump(lock, sort_keys=False)) == ["train", "evaluate"]


def test_the_report_stays_within_100_columns_and_is_markdown():
    long_name = "a-very-long-experiment-name-" * 4
    metrics = {"test.accuracy": 0.93, "test.macro_f1": 0.9, "latency.p50_ms_per_image": 1234.5}
    params = [("data.sources", [{"url": "x" * 150, "sha256": "f" * 64}] * 2, None)]
    text = render(
        Side(long_name, "a" * 40),
        Side("workspace", None),
        (metrics, {**metrics, "test.accuracy": 0.95}),
        "**Accuracy change: significant** " + "word " * 60,
        params,
        ["train", "evaluate"],
    )
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), text
    assert "x" * 150 in "".join(line.strip() for line in lines)  # wrapped, nothing cut
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 5 and all(line.count("|") == 5 for line in table)
    assert "| test acc       |     0.9300 |     0.9500 |    +0.0200 |" in table
    assert "| INT8 Δ         |          - |          - |          - |" in table
    assert "- `data.sources`:" in text and "train, evaluate" in text


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _commit(root, accuracy: float, rights: list[bool], lr: float, message: str) -> None:
    (root / "reports").mkdir(exist_ok=True)
    metrics = {"test": {"accuracy": accuracy, "macro_f1": accuracy - 0.01}, "val": {"loss": 0.5}}
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    rows = ["file,label,onnx_fp32_predicted,onnx_fp32_confidence"] + [
        f"{file},{label},{predicted},0.9"
        for file, (label, predicted) in _predictions(rights).items()
    ]
    (root / "reports" / "predictions.csv").write_text("\n".join(rows) + "\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "seed": 1}}))
    (root / "plots").mkdir(exist_ok=True)
    (root / "plots" / "confusion.png").write_bytes(_picture(lr))
    outs = [
        {"path": "plots/confusion.png", "md5": f"{lr}"},
        {"path": "plots/same.png", "md5": "0"},
    ]
    lock = {
        "schema": "2.0",
        "stages": {"train": {"params": {"lr": lr}}, "download": {}, "evaluate": {"outs": outs}},
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", message)


def _picture(lr: float) -> bytes:
    """Stand-in bytes of a PNG out (the report copies pictures, it never decodes them)."""
    return b"\x89PNG\r\n\x1a\n" + str(lr).encode()


BASE_RIGHTS = [True] * 20 + [False] * 5
TARGET_RIGHTS = [True] * 17 + [False] * 3 + [True] * 5  # 3 right -> wrong, 5 wrong -> right


@pytest.fixture
def history(tmp_path, monkeypatch):
    """A git + DVC repository: `main` (lr 0.1), `change` (lr 0.2, other flips); cwd is it."""
    from dvc.repo import Repo

    for name, value in (("NAME", "test"), ("EMAIL", "test@localhost")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    _git(tmp_path, "init", "-q", "-b", "main")
    Repo.init(str(tmp_path)).close()
    _commit(tmp_path, 0.8, BASE_RIGHTS, 0.1, "base")
    _git(tmp_path, "checkout", "-qb", "change")
    _commit(tmp_path, 0.88, TARGET_RIGHTS, 0.2, "change")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _report(capsys, *words: str) -> tuple[int, str, str]:
    try:
        main(["report", *words])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow  # git and DVC in a fresh repository: ~3 s
def test_report_of_two_branches_as_a_user_types_it(history, capsys):
    code, out, err = _report(capsys, "main", "change")
    assert code == 0, err
    assert "| test acc       |     0.8000 |     0.8800 |    +0.0800 |" in out
    words = " ".join(out.split())  # the sentences as read, not as wrapped
    assert f"p = {binomtest(3, 8, 0.5).pvalue:.4g})" in words
    assert "Of 25 test photos, 5 went wrong → right and 3 right → wrong" in words
    assert "- `train.lr`: 0.1 → 0.2" in out and "seed" not in out
    assert "their dvc.lock entries)\n\nevaluate, train\n" in out  # the lock's order
    assert out.rstrip().endswith(
        "- `plots/confusion.png`\n\n(`--output F.md` saves them side by side in F_plots/)"
    )

    # Defaults: main against the workspace (here the `change` branch, plus an edit).
    (history / "reports" / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.7}}))
    code, out, _ = _report(capsys)
    assert code == 0 and "| test acc       |     0.8000 |     0.7000 |    -0.1000 |" in out

    # An experiment by name (DVC keeps it under refs/exps/) and the --output flag first.
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=history, capture_output=True, text=True
    ).stdout.strip()
    _git(history, "update-ref", f"refs/exps/ab/cdef/{commit}/tidy-moat", commit)
    code, out, err = _report(capsys, "--output", "pr.md", "main", "tidy-moat")
    assert (code, out) == (0, ""), err
    written = (history / "pr.md").read_text()
    assert f"→ tidy-moat ({commit[:7]})\n" in written
    assert written.endswith(
        "| base | target |\n|---|---|\n"
        "| ![base](pr_plots/base-confusion.png) | ![target](pr_plots/target-confusion.png) |\n"
    )
    assert (history / "pr_plots" / "base-confusion.png").read_bytes() == _picture(0.1)
    assert (history / "pr_plots" / "target-confusion.png").read_bytes() == _picture(0.2)
    assert sorted(path.name for path in (history / "pr_plots").iterdir()) == [
        "base-confusion.png",
        "target-confusion.png",
    ]


@pytest.mark.slow  # git and DVC in a fresh repository: ~3 s
def test_bad_input_is_one_line_naming_it(history, capsys):
    for words, named in (
        (["nosuch"], "unknown revision 'nosuch'"),
        (["main", "HEAD", "extra"], "report compares two revisions, got 3"),
        (["main", "--outptu", "x.md"], "unknown flag --outptu"),
    ):
        code, out, err = _report(capsys, *words)
        assert (code, out) == (2, "") and err.count("\n") == 1 and named in err, err

    (history / "reports" / "metrics.json").write_text("{not json")
    code, _, err = _report(capsys, "main")
    assert code == 2 and "metrics.json of workspace is not a JSON object of metrics" in err
    (history / "reports" / "metrics.json").unlink()
    code, _, err = _report(capsys, "main")
    assert code == 2 and "workspace has no reports/metrics.json: run the pipeline" in err
    _git(history, "commit", "-qam", "no metrics")
    code, _, err = _report(capsys, "HEAD", "main")
    assert code == 2 and err.startswith("error: HEAD (") and "has no reports/metrics.json" in err

    _git(history, "checkout", "-q", "main")
    (history / "reports" / "predictions.csv").unlink()
    code, _, err = _report(capsys, "main")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(
        "error: cannot read reports/predictions.csv of workspace: it is not in the DVC cache "
        "or on the default remote; make the remote that holds it the default"
    ), err
    assert not (history / "report.md").exists()


def test_a_side_without_the_predictions_file_names_it_and_the_fix(tmp_path, monkeypatch):
    """Unit level: the workspace's predictions are read from disk first, else through DVC."""
    from flower_model.pipeline.report import predictions_of

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "predictions.csv").write_text("file,label\nx.jpg,roses\n")
    with pytest.raises(FlowerModelError, match="no onnx_fp32_predicted column: rerun evaluate"):
        predictions_of(tmp_path, Side("workspace", None))
