"""The report's pictures: the pipeline's PNG outs (training curves, confusion matrix, error
gallery) whose bytes differ between the two sides, saved in a folder beside the Markdown and
shown side by side (base | target) through relative paths."""

from pathlib import Path

import yaml

from flower_model.errors import FlowerModelError
from flower_model.io_utils import atomic_path
from flower_model.pipeline.report import Side, read_out

PICTURE_SUFFIX = ".png"
ROLES = ("base", "target")
NOT_AVAILABLE = "not available"  # a picture in neither the cache nor the remote


def _pictures(lock: str | None) -> dict[str, str | None]:
    """PNG out path -> its hash, as a dvc.lock lists them (pipeline order)."""
    stages = (yaml.safe_load(lock or "") or {}).get("stages", {})
    return {
        out["path"]: out.get("md5")
        for stage in stages.values()
        for out in stage.get("outs", [])
        if str(out.get("path", "")).endswith(PICTURE_SUFFIX)
    }


def changed_pictures(base_lock: str | None, target_lock: str | None) -> list[str]:
    """The PNG outs of the target whose hash differs from the base's (or that it lacks)."""
    base = _pictures(base_lock)
    return [path for path, digest in _pictures(target_lock).items() if base.get(path) != digest]


def folder_for(markdown: Path) -> Path:
    """Where the pictures of the report `markdown` go: `<stem>_plots/` beside it."""
    return markdown.with_name(f"{markdown.stem}_plots")


def picture_section(root: Path, sides: tuple[Side, Side], paths: list[str], folder: Path | None):
    """Markdown lines; with a folder, the pictures are saved there first."""
    lines = ["", "### Plots that changed", ""]
    if not paths:
        return lines + ["none"]
    if folder is None:
        note = "(`--output F.md` saves them side by side in F_plots/)"
        return lines + [f"- `{path}`" for path in paths] + ["", note]
    lines += ["| base | target |", "|---|---|"]
    for path in paths:
        cells = []
        for role, side in zip(ROLES, sides):
            name = f"{role}-{Path(path).name}"
            try:
                data = read_out(root, side, path, binary=True)
            except FlowerModelError:
                cells.append(f"{Path(path).name}: {NOT_AVAILABLE}")
                continue
            with atomic_path(folder / name) as staging:
                staging.write_bytes(bytes(data))
            cells.append(f"![{role}]({folder.name}/{name})")
        lines.append(f"| {cells[0]} | {cells[1]} |")
    return lines
