"""`dvc plots show` pages render offline in real headless Chromium with our template, which the
project's .dvc/config makes DVC's default, and the check catches DVC's own (CDN) template, which
draws nothing without a network."""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.plots_browser import check_rendered, find_chromium
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
TEMPLATE = REPO_ROOT / ".tools" / "plots" / "template.html"
CI_DEPS = "`sudo make ci-deps` installs it (`make test` installs nothing)"
TOY_PLOTS = """\
plots:
  - loss:
      template: linear
      x: epoch
      y:
        epochs.csv: [train_loss, val_loss]
  - confusion:
      template: confusion
      x: predicted
      y:
        confusion.csv: actual
  - per_class:
      template: bar_horizontal
      x: f1
      y:
        per_class.csv: class
  - picture.png
"""


def _require(thing: Path | str | None, what: str, fix: str):
    """Skip on a developer machine without it; in CI (CI=true) its absence is a failure."""
    if thing is None or (isinstance(thing, Path) and not thing.is_file()):
        message = f"{what} is missing: {fix}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return thing


@pytest.fixture
def plots_project(tmp_path) -> Path:
    from PIL import Image, ImageDraw

    project = tmp_path / "toy"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=project, check=True)
    (project / "dvc.yaml").write_text(TOY_PLOTS)
    rows = [f"{epoch},{2.0 / (epoch + 1):.3f},{2.2 / (epoch + 1):.3f}" for epoch in range(10)]
    (project / "epochs.csv").write_text("epoch,train_loss,val_loss\n" + "\n".join(rows) + "\n")
    pairs = [("daisy", "daisy")] * 5 + [("roses", "tulips")] * 2 + [("tulips", "tulips")] * 4
    (project / "confusion.csv").write_text(
        "actual,predicted\n" + "".join(f"{a},{b}\n" for a, b in pairs)
    )
    (project / "per_class.csv").write_text("class,f1\ndaisy,0.9\nroses,0.7\ntulips,0.8\n")
    picture = Image.new("RGB", (200, 120), "white")
    ImageDraw.Draw(picture).rectangle((20, 20, 180, 100), fill="navy")
    picture.save(project / "picture.png")
    return project


def _show(project: Path, output: str, *template: str) -> Path:
    subprocess.run(
        [DVC, "plots", "show", *template, "-o", output],
        cwd=project,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return project / output / "index.html"


def test_our_template_draws_every_plot_offline(plots_project, tmp_path):
    browser = _require(find_chromium(), "Chromium", CI_DEPS)
    template = _require(TEMPLATE, str(TEMPLATE), CI_DEPS)
    page = _show(plots_project, "offline", "--html-template", str(template))
    report = check_rendered(page, tmp_path / "offline.png", browser)
    assert report.expected == ["loss", "confusion", "per_class"]
    assert report.drawn == report.expected, report.summary()
    assert report.images == 1
    assert report.ok, report.summary()


def test_the_default_cdn_template_is_caught_drawing_nothing(plots_project, tmp_path):
    browser = _require(find_chromium(), "Chromium", CI_DEPS)
    page = _show(plots_project, "cdn")
    report = check_rendered(page, tmp_path / "cdn.png", browser)
    assert len(report.expected) == 3
    assert report.drawn == [] and not report.ok
    assert "not drawn: loss, confusion, per_class" in report.summary()


def _configured_template(root: Path) -> Path:
    """The template `plots.html_template` in `root`/.dvc/config names (DVC reads a relative path
    from the .dvc folder)."""
    config = configparser.ConfigParser()
    config.read_string((root / ".dvc" / "config").read_text().replace("\n    ", "\n"))
    return (root / ".dvc" / config["plots"]["html_template"]).resolve()


def test_the_dvc_config_names_the_template_make_plots_builds():
    """`dvc plots diff main <exp> -o plots_html`, as the README writes it, gets the offline
    template: the one `make plots` / `make repro` build, at the Makefile's PLOTS_TEMPLATE."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    tools = re.search(r"^TOOLS := (\S+)$", makefile, re.MULTILINE)[1]
    built = re.search(r"^PLOTS_TEMPLATE := (\S+)$", makefile, re.MULTILINE)[1]
    assert _configured_template(REPO_ROOT) == (REPO_ROOT / built.replace("$(TOOLS)", tools))
    assert _configured_template(REPO_ROOT) == TEMPLATE.resolve()


def _with_project_template(project: Path, template: Path) -> None:
    """The project's `plots` config section in `project`, and `template` where it points."""
    section = (REPO_ROOT / ".dvc" / "config").read_text().split("[plots]", 1)[1]
    with (project / ".dvc" / "config").open("a") as config:
        config.write("[plots]" + section)
    target = _configured_template(project)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(template.read_bytes())


def test_dvc_uses_the_configured_template_without_a_flag(plots_project, tmp_path):
    """No --html-template: the page is the configured template's (a stand-in marks it)."""
    stand_in = tmp_path / "stand_in.html"
    stand_in.write_text("<html><body><p>flower-model template</p>{plot_divs}</body></html>")
    _with_project_template(plots_project, stand_in)
    page = _show(plots_project, "configured").read_text()
    assert "flower-model template" in page and "cdn.jsdelivr" not in page


def test_the_configured_template_draws_every_plot_offline(plots_project, tmp_path):
    browser = _require(find_chromium(), "Chromium", CI_DEPS)
    _with_project_template(plots_project, _require(TEMPLATE, str(TEMPLATE), CI_DEPS))
    report = check_rendered(_show(plots_project, "default"), tmp_path / "default.png", browser)
    assert report.drawn == report.expected == ["loss", "confusion", "per_class"], report.summary()


STAGE_WITH_PLOT = """\
stages:
  curve:
    cmd: python -c "open('e.csv', 'w').write('a,b\\\\n1,2\\\\n2,3\\\\n')"
    plots:
      - e.csv:
          x: a
          y: b
"""
MISSING_REVISION = "DVC failed to load some plots for following revisions: 'main'"


def test_mains_series_come_from_the_remote_and_missing_ones_are_one_line(tmp_path):
    """What the README says of `dvc plots diff main ...`: main's outputs missing from the local
    cache are read from the default remote; where the remote lacks them too, DVC's one line."""
    project, remote = tmp_path / "clone", tmp_path / "remote"
    project.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (
        ["git", "init", "-q", "-b", "main"],
        [DVC, "init", "-q"],
        [DVC, "remote", "add", "-d", "store", str(remote)],
    ):
        subprocess.run(command, cwd=project, check=True)
    (project / "dvc.yaml").write_text(STAGE_WITH_PLOT)
    subprocess.run([DVC, "repro", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "main"], cwd=project, check=True)
    subprocess.run([DVC, "push", "-q"], cwd=project, check=True)
    shutil.rmtree(project / ".dvc" / "cache")
    (project / "e.csv").write_text("a,b\n1,5\n")  # the workspace: an experiment's curve

    def diff() -> subprocess.CompletedProcess:
        command = [DVC, "plots", "diff", "main", "--json"]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, check=True)

    shown = json.loads(diff().stdout)["data"]["e.csv"][0]
    assert shown["revisions"] == ["workspace", "main"]
    assert {"a": "2", "b": "3", "rev": "main"} in shown["content"]["data"]["values"]
    shutil.rmtree(remote)
    result = diff()
    assert MISSING_REVISION in result.stdout + result.stderr
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert MISSING_REVISION.removeprefix("DVC ") in readme, "the README explains DVC's line"
