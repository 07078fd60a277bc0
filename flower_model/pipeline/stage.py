"""What every pipeline stage shares: load + validate config, report, dry-run checks, error exits.

A stage module (flower_model/pipeline/stages/<name>.py) declares a `Stage`: the function that
does the work, the modules it needs and its preflight checks. What it reads and writes (params
keys, inputs, outs) is declared once, in dvc.yaml (read by `config/dvc_yaml.py`). `execute`
runs it the same way from DVC and the CLI.
"""

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flower_model.config import Config, ConfigError, dvc_yaml, load_config
from flower_model.constants import PARAMS_FILE
from flower_model.errors import FlowerModelError, MissingInputError
from flower_model.pipeline.dvc_outs import restore_previous_outs, running_under_dvc

EXIT_ERROR = 2
ERROR_PREFIX = "error: "  # how a known failure starts its one line (sweeps look for it)
# Flags that take no value. fire reads `--dry-run X` as dry_run="X", which would swallow an
# override written after the flag; `fire_command` pins them to `--flag=True` first.
BOOLEAN_FLAGS = ("--dry-run", "--dry_run", "--show-config", "--show_config", "--check", "--raw")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Config, Path], None]
    modules: tuple[str, ...] = field(default_factory=tuple)
    # Checks of the config against the filesystem beyond inputs (a `resume=` path, say): run by
    # dry runs too, so a dry run fails wherever the real run would fail before starting.
    preflight: Callable[[Config, Path], None] = lambda config, root: None

    def sections(self, root: Path) -> tuple[str, ...]:
        """Config keys read, dotted: the stage's `params:` in dvc.yaml."""
        return dvc_yaml.stage(self.name, root).params

    def inputs(self, config: Config, root: Path) -> list[Path]:
        """The deps in dvc.yaml that are data, not code, with this config's paths."""
        declared = dvc_yaml.stage(self.name, root)
        return [dvc_yaml.resolve(path, config) for path in declared.inputs]

    def outputs(self, config: Config, root: Path) -> list[Path]:
        """The outs, metrics and plots in dvc.yaml, with this config's paths."""
        declared = dvc_yaml.stage(self.name, root)
        return [dvc_yaml.resolve(path, config) for path in declared.outs]

    def resolved(self, config: Config, root: Path) -> dict:
        """The keys this stage reads (dotted, as in dvc.yaml `params:`), as nested plain data."""
        dumped = config.model_dump(mode="json")
        picked: dict = {}
        for key in self.sections(root):
            *parents, leaf = key.split(".")
            source, target = dumped, picked
            for part in parents:
                source = source[part]
                target = target.setdefault(part, {})
            target[leaf] = source[leaf]
        return picked


def describe(
    stage: Stage, config: Config, root: Path, overrides: list[str], show_config: bool = False
) -> str:
    """The stage header: where the config came from, the keys read, the outputs; with
    `show_config`, the resolved values of those keys too (35 lines for train, so on request)."""
    origin = f"configs/ composed with overrides {overrides}" if overrides else str(PARAMS_FILE)
    reads = ", ".join(stage.sections(root))
    lines = [f"== stage {stage.name}: config from {origin}, reads {reads}"]
    if overrides:
        lines.append("   note: overrides differ from params.yaml; DVC will not record this run")
    if show_config:
        resolved = yaml.safe_dump(
            stage.resolved(config, root), sort_keys=False, default_flow_style=None
        )
        lines += [f"   {line}" for line in resolved.splitlines()]
    lines.append("   outputs: " + ", ".join(str(path) for path in stage.outputs(config, root)))
    if not show_config:
        lines.append(f"   (`flower-model {stage.name} --show-config` prints the values read)")
    return "\n".join(lines)


def check_ready(stage: Stage, config: Config, root: Path, fetch: bool = False) -> None:
    """Inputs present (fetched with `dvc pull` first when `fetch`) and dependencies importable;
    raise naming what is missing."""
    missing = [path for path in stage.inputs(config, root) if not (root / path).exists()]
    if missing and fetch:
        from flower_model.pipeline.fetch import pull_outs

        reason = pull_outs(missing, root)
        if reason is None:
            missing = []
        else:
            print(f"stage {stage.name}: {reason}", file=sys.stderr)
    if missing:
        names = ", ".join(str(path) for path in missing)
        raise MissingInputError(
            f"stage {stage.name}: missing input(s) {names}; run `dvc repro {stage.name}` "
            "(which runs the stages before it) or `dvc pull` them from a configured remote"
        )
    for module in stage.modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingInputError(
                f"stage {stage.name}: cannot import {module} ({error}); run `make setup`"
            ) from None


def execute(
    stage: Stage,
    overrides: list[str],
    dry_run: bool = False,
    root: Path | None = None,
    show_config: bool = False,
) -> int:
    """Run `stage`; return the process exit code. Known errors print one line, not a traceback."""
    root = root or Path.cwd()
    restore = running_under_dvc(stage.name) and not dry_run
    try:
        config = load_config(root, overrides)
        print(describe(stage, config, root, overrides, show_config), flush=True)
        check_ready(stage, config, root, fetch=not dry_run)
        stage.preflight(config, root)
        if dry_run:
            print(f"dry run: stage {stage.name} config, inputs and dependencies OK; nothing done")
            return 0
        stage.run(config, root)
    except (ConfigError, FlowerModelError) as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        if restore:
            report_restore(stage, root)
        return EXIT_ERROR
    except BaseException:  # a bug, Ctrl-C, sys.exit: the traceback stays, the old outs come back
        if restore:
            report_restore(stage, root)
        raise
    return 0


def report_restore(stage: Stage, root: Path) -> None:
    """After a failure under DVC (which deleted the outs before running us): the previous outs
    back from the DVC cache, one stderr line each."""
    try:
        lines = restore_previous_outs(stage.name, root)
    except Exception as error:  # the original failure matters more than this one
        lines = [f"could not restore the previous outs ({type(error).__name__}: {error})"]
    for line in lines:
        print(f"stage {stage.name} failed: {line}", file=sys.stderr)


def stage_command(stage: Stage) -> Callable[..., None]:
    """A fire command `NAME [overrides...] [--dry-run] [--show-config]` for `stage`."""

    def command(*overrides: str, dry_run: bool = False, show_config: bool = False) -> None:
        require_flag_without_value("--dry-run", dry_run)
        require_flag_without_value("--show-config", show_config)
        items = [str(item) for item in overrides]
        code = execute(stage, items, dry_run=dry_run, show_config=show_config)
        if code:
            sys.exit(code)

    command.__name__ = stage.name
    command.__doc__ = (
        f"Run stage {stage.name}: `{stage.name} [hydra overrides...] [--dry-run] [--show-config]`."
    )
    return command


def require_flag_without_value(flag: str, value: object) -> None:
    """Exit with a one-line error when a flag that takes no value was given one."""
    if not isinstance(value, bool):
        print(
            f"error: {flag} takes no value, got {flag}={value!r}; write {flag} alone, "
            "anywhere among the arguments",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)


def fire_command(component, name: str, argv: list[str] | None = None) -> None:
    """fire.Fire on `argv`, with value-less flags pinned so they never take the next argument."""
    import fire

    words = sys.argv[1:] if argv is None else argv
    fire.Fire(
        component, [f"{word}=True" if word in BOOLEAN_FLAGS else word for word in words], name
    )


def stage_main(stage: Stage) -> None:
    """Entry of `python pipeline_stages/<name>.py [overrides...] [--dry-run]` (what DVC runs,
    through the shim there)."""
    fire_command(stage_command(stage), stage.name)
