"""The stage table: one module per dvc.yaml stage, each declaring its `STAGE` (the code; what it
reads and writes is declared in dvc.yaml). The CLI and the `pipeline_stages/<name>.py` shims DVC
runs both come here; modules load on use, so running one stage never imports another's code."""

import importlib
import pkgutil

from flower_model.pipeline.stage import Stage, stage_main


def names() -> list[str]:
    """The stages the library implements, one module each (dvc.yaml says their order)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__))


def stage(name: str) -> Stage:
    return importlib.import_module(f"{__name__}.{name}").STAGE


def main(name: str) -> None:
    """Entry of `python pipeline_stages/<name>.py [overrides...] [--dry-run]`, what DVC runs."""
    stage_main(stage(name))
