"""The `flower-model` command line (fire): one small function per command.

Stages: `flower-model <stage> [hydra overrides...] [--dry-run]`. Without overrides a stage reads
params.yaml (what DVC tracks); with overrides it composes configs/ + overrides and says so.
"""

import importlib
import sys
from pathlib import Path

from flower_model.errors import FlowerModelError
from flower_model.stage import EXIT_ERROR, stage_command

STAGE_NAMES = ("download", "preprocess", "train", "export_onnx", "build_trt", "evaluate")


def _stage(name: str):
    def command(*overrides: str, dry_run: bool = False) -> None:
        # Imported on use: `flower-model compose` should not pay for torch.
        module = importlib.import_module(f"pipeline_stages.{name}")
        stage_command(module.STAGE)(*overrides, dry_run=dry_run)

    command.__name__ = name
    command.__doc__ = f"Run stage {name}: `flower-model {name} [overrides...] [--dry-run]`."
    return command


def compose(*overrides: str, check: bool = False) -> None:
    """Write params.yaml from configs/ (`--check`: only compare, exit 1 when they differ)."""
    from flower_model.compose import check_params, write_params

    root = Path.cwd()
    try:
        if check:
            problem = check_params(root)
            if problem:
                print(problem, file=sys.stderr)
                sys.exit(1)
            print("params.yaml matches configs/")
            return
        changed = write_params(root, [str(item) for item in overrides])
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    print("params.yaml " + ("updated from configs/" if changed else "already matches configs/"))


def _commands() -> dict:
    commands = {name: _stage(name) for name in STAGE_NAMES}
    commands["compose"] = compose
    return commands


def main() -> None:
    import fire

    fire.Fire(_commands(), name="flower-model")


if __name__ == "__main__":
    main()
