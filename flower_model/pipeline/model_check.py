"""Models checked before use: a DVC out of this project must hold the bytes dvc.lock records.

infer, serve and evaluate call `verify_out` on the ONNX, INT8 ONNX and checkpoint files before
they load them. A file that is one of the project's DVC outs (a `path` under some stage's `outs`
in dvc.lock, relative to the project root) must have the md5 dvc.lock gives it, or the md5 a
stage run by hand last wrote for it (`record_hand_run`: DVC records only runs under `dvc repro`,
and a hand-run `flower-model export_onnx` is a legitimate way to get a new model). Anything else
(bytes flipped in the DVC cache and checked out, a file damaged in place) is refused in one line
naming `dvc checkout` / `dvc pull` / `dvc repro` as the fix.

A file that is not a DVC out of the project (a user's own `--model other.onnx`) has no recorded
hash: it is only checked to load (ONNX Runtime parses it, its metadata is range-checked).

Imports hashlib, PyYAML and the atomic writer only: `flower-model infer` stays light.
"""

import hashlib
import json
from pathlib import Path

import yaml

from flower_model.constants import DVC_LOCK_FILE
from flower_model.errors import FlowerModelError
from flower_model.io_utils import write_text

# Local, untracked state beside DVC's own (`.dvc/tmp` is git-ignored by DVC itself): the md5 of
# each file out a stage run by hand wrote last. Never a DVC out, so outs stay deterministic.
HAND_RUN_RECORD = Path(".dvc") / "tmp" / "flower_model_hand_runs.json"
CHUNK_BYTES = 1 << 20
SHOWN_DIGITS = 8  # how much of an md5 a message shows


class DamagedModelError(FlowerModelError):
    """A model file's bytes are not the ones the project recorded for it."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locked_outs(root: Path) -> dict[str, tuple[str, str]]:
    """{out path: (md5, stage)} for every file out in dvc.lock ({} without a readable lock:
    a truncated or hand-edited lock is reported by the commands that need it)."""
    try:
        lock = yaml.load((root / DVC_LOCK_FILE).read_text(encoding="utf-8"), yaml.CSafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    found: dict[str, tuple[str, str]] = {}
    for name, stage in (stages if isinstance(stages, dict) else {}).items():
        for out in (stage or {}).get("outs") or []:
            md5 = str(out.get("md5", "")) if isinstance(out, dict) else ""
            if md5 and not md5.endswith(".dir"):
                found[str(out.get("path"))] = (md5, str(name))
    return found


def _hand_runs(root: Path) -> dict[str, str]:
    try:
        record = json.loads((root / HAND_RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def verify_out(path: Path, root: Path) -> None:
    """Raise DamagedModelError when `path` is a DVC out of the project at `root` whose bytes
    match neither dvc.lock nor the last hand run of its stage; anything else passes."""
    relative = _relative(path, root)
    locked = locked_outs(root).get(relative or "")
    if locked is None or not path.is_file():
        return  # not a recorded out (a user's own model): only checked to load
    actual = file_md5(path)
    expected, stage = locked
    if actual in (expected, _hand_runs(root).get(relative or "")):
        return
    raise DamagedModelError(
        f"{path} is damaged: its md5 {actual[:SHOWN_DIGITS]}... is not the "
        f"{expected[:SHOWN_DIGITS]}... dvc.lock records; restore it with `dvc checkout "
        f"{relative}` (or `dvc pull {relative}`), or rebuild it with `dvc repro {stage}`"
    )


def record_hand_run(outs: list[Path], root: Path) -> None:
    """After a stage run by hand succeeded: remember the md5 of each file out it wrote, so
    `verify_out` accepts them although dvc.lock does not (yet) record them."""
    if not (root / ".dvc").is_dir():
        return  # not a DVC project: nothing is checked against a lock either
    locked = locked_outs(root)
    record = _hand_runs(root)
    for out in outs:
        relative = _relative(out, root)
        if relative in locked and out.is_file():
            record[relative] = file_md5(out)
    write_text(root / HAND_RUN_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
