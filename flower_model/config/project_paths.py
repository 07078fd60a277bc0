"""Which folders a configured path may name, checked before any stage does work.

The stages replace their output folders whole (io_utils.atomic_dir), so a path that names the
project itself (`''`, `.`), an ancestor of it (`..`) or the project's own files (`configs/`,
`.git/`) would let a stage replace the clone: `paths.processed_dir=` once did exactly that. Every
DVC out must lie inside the project (DVC tracks only those), in a folder of its own; only the
download cache, which no stage replaces, may be an absolute path elsewhere, chosen on purpose.
"""

from pathlib import Path, PurePosixPath

# Top-level entries of the project that hold its code, config or history: no output goes there.
PROJECT_OWN = (
    ".git",
    ".dvc",
    ".ci",
    ".github",
    ".venv",
    ".tools",
    "configs",
    "flower_model",
    "pipeline_stages",
    "tests",
    "scripts",
    "docs",
    "benchmarks",
    "reviews",  # the committed label reviews (an input of preprocess)
)
# Files at the top level a path may not name either (a folder written there would replace them).
PROJECT_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", "pyproject.toml", "poetry.lock")
PARENT = ".."


def check_inside(value: Path, output: bool = True) -> Path:
    """`value` as a folder inside the project; an `output` folder also outside the project's own
    folders (an input, like the reviews folder, may be one of them). ValueError if not."""
    text = str(value).strip()
    parts = PurePosixPath(text.replace("\\", "/")).parts if text else ()
    if not parts or parts == (".",):
        raise ValueError(
            "names the project folder itself, which the stage would replace; give a folder "
            "inside it (e.g. data/processed)"
        )
    if value.is_absolute():
        raise ValueError(
            "must be relative to the project root: DVC tracks outs inside the project only"
        )
    if PARENT in parts:
        raise ValueError("leaves the project ('..'); give a folder inside it")
    if output and (parts[0] in PROJECT_OWN or (len(parts) == 1 and parts[0] in PROJECT_FILES)):
        raise ValueError(
            f"is inside {parts[0]}, which holds the project's own files; choose another folder"
        )
    return Path(*parts)


def check_cache(value: Path) -> Path:
    """The download cache: inside the project like an out, or an absolute folder elsewhere on
    purpose (never the filesystem root or the home folder)."""
    if not value.is_absolute():
        return check_inside(value)
    if value == Path(value.anchor) or value == Path.home():
        raise ValueError(f"{value} is not a cache folder of its own; give e.g. {value / 'cache'}")
    return value


def overlapping(paths: dict[str, Path]) -> str | None:
    """A message naming two keys whose folders are the same or one inside the other, or None."""
    items = sorted(paths.items())
    for i, (key, path) in enumerate(items):
        for other_key, other in items[i + 1 :]:
            if path == other or path in other.parents or other in path.parents:
                return (
                    f"paths.{key}={path} and paths.{other_key}={other} overlap: a stage replacing "
                    "one would delete the other; give each a folder of its own"
                )
    return None
