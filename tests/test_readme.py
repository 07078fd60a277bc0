"""The README cannot go stale: its commands parse, its links and targets exist, and the number
it quotes is the committed result."""

import hashlib
import json
import re
import shlex
import subprocess
import tarfile

import pytest

from flower_model.cli import checked_arguments
from flower_model.commands import commands
from flower_model.config import load_config
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
MAX_LINES = 220
SECTIONS = ("Setup", "Train", "Production preparation", "Infer")
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)


def _command_lines(program: str) -> list[list[str]]:
    """Each `program ...` line of the README's bash blocks, as words (comments and `\\` joins
    handled as the shell would)."""
    lines = []
    for block in BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                lines.append(words[1:])
    return lines


def test_the_readme_is_short_with_the_course_sections_and_a_table_of_contents():
    assert len(README.splitlines()) <= MAX_LINES
    headings = re.findall(r"^#+ (.+)$", README, re.M)
    for section in SECTIONS:
        assert section in headings, section
    anchors = {re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-") for title in headings}
    for anchor in re.findall(r"\]\(#([^)]+)\)", README):
        assert anchor in anchors, f"table of contents entry #{anchor} has no heading"


def test_every_flower_model_command_in_the_readme_parses():
    table = commands()
    found = _command_lines("flower-model")
    assert len(found) >= 10
    for words in found:
        if words[0].startswith("-"):  # `flower-model --help`
            continue
        name, rest = words[0], words[1:]
        assert name in table, f"README runs unknown command {name}"
        if "--help" not in rest:
            checked_arguments(rest, table[name], f"flower-model {name}")  # raises on a bad flag


def test_every_make_target_in_the_readme_exists():
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    used = set(re.findall(r"`(?:sudo )?make ([a-z-]+)", README))
    used |= {words[0] for words in _command_lines("make") if words}
    assert used and used <= targets, used - targets


def test_every_linked_file_exists():
    for target in re.findall(r"\]\(((?:docs/)[^)#]*)\)", README):
        assert (REPO_ROOT / target).exists(), target


def test_the_quoted_test_accuracy_is_the_committed_one():
    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    quoted = re.search(r"scores \*\*(0\.\d{4})\*\* test accuracy", README)
    assert quoted, "the README quotes the committed test accuracy"
    assert quoted[1] == f"{metrics['test']['accuracy']:.4f}"


@pytest.mark.parametrize("page", sorted((REPO_ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_pages_link_only_to_files_that_exist(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_own_photos_commands_run_as_written_from_the_clone_with_photos_beside_it(tmp_path):
    """The block runs in bash from the clone, its photos in ../my_photos: `tar` for real, `dvc`
    a function that prints its arguments, whose overrides then compose and validate."""
    (block,) = [block for block in BLOCKS if "my_photos.tgz" in block]
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("daisy", "tulips"):
        (tmp_path / "my_photos" / name).mkdir(parents=True)
        (tmp_path / "my_photos" / name / "photo.jpg").write_bytes(name.encode())
    script = 'set -e\ndvc() { printf "%s\\n" "$@"; }\n' + block
    done = subprocess.run(["bash", "-c", script], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    archive = tmp_path / "my_photos.tgz"
    with tarfile.open(archive) as packed:
        assert {"my_photos/daisy/photo.jpg", "my_photos/tulips/photo.jpg"} <= set(packed.getnames())
    words = done.stdout.splitlines()
    assert words[:2] == ["exp", "run"], words
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    config = load_config(REPO_ROOT, overrides)
    (source,) = config.data.sources
    assert (source.url, config.data.name) == ("../my_photos.tgz", "my_photos")
    assert source.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert config.train.probe_steps > 0, "a small folder gets the linear probe"
