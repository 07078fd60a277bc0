"""What every pipeline stage shares: config, the stage header, dry runs, and restoring the
previous outs when a stage fails under DVC.

A stage is `pipeline_stages/<name>.py`: a `run(config, root, params)` function, optionally a
`preflight(config, root)` (checks of the config against the filesystem beyond its inputs, run by
dry runs too), and `stage_main(run, preflight)` under `if __name__ == "__main__"`. Its name is its
file name and its dvc.yaml key; what it reads and writes (params keys, inputs, outs) is declared
once, in dvc.yaml (read by `config/dvc_yaml.py`).
"""

import inspect
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import yaml

from flower_model.cli import ERROR_PREFIX, EXIT_ERROR, run_command
from flower_model.config import Config, ConfigError, dvc_yaml, load_config
from flower_model.constants import CONSOLE_WIDTH, PARAMS_FILE
from flower_model.errors import MissingInputError
from flower_model.pipeline.dvc_outs import restore_previous_outs, running_under_dvc
from flower_model.pipeline.model_check import record_hand_run
from flower_model.pipeline.workspace import workspace_note

__all__ = ["ERROR_PREFIX", "EXIT_ERROR", "execute", "stage_command", "stage_main"]

Run = Callable[[Config, Path, dict], None]
Preflight = Callable[[Config, Path], None]
HEADER_INDENT = "   "  # the stage header's lines under its first


def reads(name: str, config: Config, root: Path) -> dict:
    """The keys stage `name` reads (its dvc.yaml `params:`), as nested plain data."""
    dumped = config.model_dump(mode="json")
    picked: dict = {}
    for key in dvc_yaml.stage(name, root).params:
        *parents, leaf = key.split(".")
        source, target = dumped, picked
        try:
            for part in parents:
                source = source[part]
                target = target.setdefault(part, {})
            target[leaf] = source[leaf]
        except (KeyError, TypeError):
            raise ConfigError(
                f"dvc.yaml: stage {name} reads params key {key!r}, which the config does not "
                "have; fix the key in dvc.yaml (see configs/) or `git checkout dvc.yaml`"
            ) from None
    return picked


def inputs(name: str, config: Config, root: Path) -> list[Path]:
    """The deps in dvc.yaml that are data, not code, with this config's paths."""
    return [dvc_yaml.resolve(path, config) for path in dvc_yaml.stage(name, root).inputs]


def outputs(name: str, config: Config, root: Path) -> list[Path]:
    """The outs, metrics and plots in dvc.yaml, with this config's paths."""
    return [dvc_yaml.resolve(path, config) for path in dvc_yaml.stage(name, root).outs]


def describe(
    name: str, config: Config, root: Path, overrides: list[str], show_config: bool = False
) -> str:
    """The stage header: where the config came from, the keys read, the outputs; with
    `show_config`, the resolved values of those keys too."""
    origin = f"configs/ composed with overrides {overrides}" if overrides else str(PARAMS_FILE)
    keys = ", ".join(dvc_yaml.stage(name, root).params)
    lines = _wrapped(f"== stage {name}: config from {origin}, reads {keys}")
    if overrides:
        lines.append("   note: overrides differ from params.yaml; DVC will not record this run")
    note = None if running_under_dvc(name) else workspace_note(root)
    if note:  # an applied experiment's params: say so before anything uses them
        lines.append(f"   {note}")
    if show_config:
        resolved = yaml.safe_dump(
            reads(name, config, root),
            sort_keys=False,
            default_flow_style=None,
            width=CONSOLE_WIDTH - len(HEADER_INDENT),
        )
        lines += [f"{HEADER_INDENT}{line}" for line in resolved.splitlines()]
    lines += _wrapped("   outputs: " + ", ".join(str(path) for path in outputs(name, config, root)))
    if not show_config:
        lines.append(f"   (`flower-model {name} --show-config` prints the values read)")
    return "\n".join(lines)


def _wrapped(text: str) -> list[str]:
    """`text` in lines of at most CONSOLE_WIDTH, continued with a deeper indent; a word longer
    than that (a URL) stays whole."""
    return textwrap.wrap(
        text,
        CONSOLE_WIDTH,
        subsequent_indent=HEADER_INDENT * 2,
        break_long_words=False,
        break_on_hyphens=False,
    )


def check_inputs(name: str, config: Config, root: Path, fetch: bool = False) -> None:
    """Inputs present (fetched with `dvc pull` first when `fetch`); raise naming what is missing."""
    missing = [path for path in inputs(name, config, root) if not (root / path).exists()]
    if missing and fetch:
        from flower_model.pipeline.fetch import pull_outs

        reason = pull_outs(missing, root)
        if reason is None:
            missing = []
        else:
            print(f"stage {name}: {reason}", file=sys.stderr)
    if missing:
        names = ", ".join(str(path) for path in missing)
        raise MissingInputError(
            f"stage {name}: missing input(s) {names}; run `dvc repro {name}` "
            "(which runs the stages before it) or `dvc pull` them from a configured remote"
        )


def _load(name: str, root: Path, overrides: list[str]) -> Config:
    try:
        return load_config(root, overrides)
    except ConfigError as error:
        if running_under_dvc(name):
            # Every stage validates the whole params.yaml first, so the first stage DVC runs
            # reports a key another stage reads: say that nothing ran, and where to fix it.
            raise ConfigError(
                f"{error}\n(stage {name} checked params.yaml before doing any work; no stage "
                "ran. Fix the key in configs/ or in `dvc exp run -S`; `dvc exp run -S` left "
                "the value in params.yaml: `flower-model compose` writes configs/' values back)"
            ) from None
        raise


def execute(
    name: str,
    run: Run,
    overrides: list[str],
    dry_run: bool = False,
    show_config: bool = False,
    preflight: Preflight | None = None,
    root: Path | None = None,
) -> None:
    """Run stage `name`. Raises on failure; under DVC the previous outs come back first."""
    root = root or Path.cwd()
    restore = running_under_dvc(name) and not dry_run and not show_config
    try:
        config = _load(name, root, overrides)
        params = reads(name, config, root)  # a dvc.yaml key the config lacks: before any work
        print(describe(name, config, root, overrides, show_config), flush=True)
        if show_config:
            return
        if preflight is not None:  # config-level checks first: a pull of the inputs is work
            preflight(config, root)
        check_inputs(name, config, root, fetch=not dry_run)
        if dry_run:
            print(f"dry run: stage {name} config and inputs OK; nothing done")
            return
        run(config, root, params)
        if not running_under_dvc(name):  # DVC records its own runs in dvc.lock
            record_hand_run(outputs(name, config, root), root)
    except BaseException:  # a known error, a bug, Ctrl-C: the old outs come back, then report
        if restore:
            report_restore(name, root)
        raise


def report_restore(name: str, root: Path) -> None:
    """After a failure under DVC (which deleted the outs before running us): the previous outs
    back from the DVC cache, one stderr line each."""
    try:
        lines = restore_previous_outs(name, root)
    except Exception as error:  # the original failure matters more than this one
        lines = [f"could not restore the previous outs ({type(error).__name__}: {error})"]
    for line in lines:
        print(f"stage {name} failed: {line}", file=sys.stderr)


def stage_command(
    name: str, run: Run, preflight: Preflight | None = None, summary: str = ""
) -> Callable[..., None]:
    """The command `NAME [overrides...] [--dry-run] [--show-config]` of a stage; its help lists
    the config groups it reads (from dvc.yaml and configs/, so it is read when asked for)."""
    from flower_model.pipeline.stage_help import stage_help

    def command(*overrides: str, dry_run: bool = False, show_config: bool = False) -> None:
        execute(name, run, [str(item) for item in overrides], dry_run, show_config, preflight)

    command.__name__ = name
    command.__doc__ = summary
    command.help_text = lambda: stage_help(name, summary, Path.cwd())  # type: ignore[attr-defined]
    return command


def stage_main(run: Run, preflight: Preflight | None = None) -> None:
    """Entry of `python pipeline_stages/<name>.py [overrides...] [--dry-run]` (what DVC runs):
    the stage's name is its file name."""
    module = sys.modules[run.__module__]
    path = Path(inspect.getfile(module))
    command = stage_command(path.stem, run, preflight, module_summary(module))
    run_command(command, sys.argv[1:], f"python pipeline_stages/{path.name}")


def module_summary(module: object) -> str:
    """A stage module's one-line description: its docstring's first line."""
    return (inspect.getdoc(module) or "").strip().partition("\n")[0]
