"""`dvc plots show` pages render offline in real headless Chromium with our template, and the
check catches DVC's default (CDN) template, which draws nothing without a network."""

import os
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
