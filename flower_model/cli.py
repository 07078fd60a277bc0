"""The command-line boundary shared by `flower-model` and `python pipeline_stages/<name>.py`.

fire parses each command's arguments from its signature. Around it sits the one error boundary:
- `--help` anywhere prints the command's own help (its docstring), not fire's pager page;
- flags are checked against the signature before any work: an unknown flag is refused, naming
  the valid ones (fire would only complain after the command had run);
- a flag that takes no value (a bool parameter) is pinned to `=True`: fire would otherwise take
  the next word, an override, as its value;
- `--` ends the flags: every word after it is an argument, even `-leading.jpg` (fire itself
  would refuse it), and is passed after the arguments before it;
- expected failures (`FlowerModelError`, an `OSError` on a named path) print one line and exit
  2; a bug keeps its traceback, and FLOWER_MODEL_TRACEBACK=1 shows every traceback.
"""

import contextlib
import errno
import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable, Iterator

from flower_model.errors import FlowerModelError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
EXIT_TERMINATED = 143  # and for SIGTERM
ERROR_PREFIX = "error: "  # how a known failure starts its one line (sweeps look for it)
HELP_FLAGS = ("--help", "-h")
END_OF_FLAGS = "--"
TRACEBACK_ENV = "FLOWER_MODEL_TRACEBACK"
OS_ERROR_FIXES = {
    errno.ENOSPC: "free space there or choose another path",
    errno.EDQUOT: "free space there or choose another path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "choose a writable path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "give a file, not a folder",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM inside `terminate_as_interrupt`: a KeyboardInterrupt, so whatever Ctrl-C cleans up
    (a sweep's queued experiments, its Slurm jobs) is cleaned up for it too."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated where the program is (main thread only)."""

    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def flag_name(parameter: str) -> str:
    """`top_k` -> `--top-k`: how users type a keyword parameter."""
    return "--" + parameter.replace("_", "-")


def flags_of(function: Callable) -> dict[str, inspect.Parameter]:
    """The flags a command takes, by their typed name (`--top-k`)."""
    return {
        flag_name(name): parameter
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        or (
            parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            and parameter.default is not inspect.Parameter.empty
        )
    }


def _is_flag(word: str) -> bool:
    """`--x` or `-x`, but not a negative number (`-3`) and not fire's `--` separator."""
    return word.startswith("-") and word != END_OF_FLAGS and not word.lstrip("-")[:1].isdigit()


def _takes_value(word: str, flags: dict[str, inspect.Parameter]) -> bool:
    """Whether `word` is a valued flag written without `=` (the next word is its value)."""
    if not _is_flag(word) or "=" in word:
        return False
    parameter = flags.get(flag_name(word.lstrip("-")))
    return parameter is not None and not isinstance(parameter.default, bool)


def checked_arguments(
    words: list[str], function: Callable, usage: str, trailing: int = 0
) -> list[str]:
    """`words` as fire should see them; raise FlowerModelError for an unknown or misused flag.
    `trailing`: how many arguments came after `--` (they count as given)."""
    flags = flags_of(function)
    valid = ", ".join(flags) or "none"
    required = [
        name.upper()
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and parameter.default is inspect.Parameter.empty
    ]
    given = [  # positional words: neither a flag nor the separate value of a valued flag
        word
        for index, word in enumerate(words)
        if not _is_flag(word) and not (index and _takes_value(words[index - 1], flags))
    ]
    if len(given) + trailing < len(required):
        raise FlowerModelError(f"`{usage}` needs {' '.join(required)} (see `{usage} --help`)")
    result = []
    for index, word in enumerate(words):
        if not _is_flag(word):
            result.append(word)
            continue
        name, has_value, value = word.partition("=")
        name = flag_name(name.lstrip("-"))  # `--top_k` and `--top-k` are the same flag
        if name not in flags:
            raise FlowerModelError(f"unknown flag {word} for `{usage}`; its flags: {valid}")
        is_switch = isinstance(flags[name].default, bool)
        if is_switch and has_value:
            raise FlowerModelError(f"{name} takes no value, got {word}; write {name} alone")
        following = words[index + 1] if index + 1 < len(words) else None
        if not is_switch and not has_value and (following is None or _is_flag(following)):
            raise FlowerModelError(f"{name} needs a value: {name} VALUE or {name}=VALUE")
        result.append(f"{name}=True" if is_switch else f"{name}{has_value}{value}")
    return result


def _oserror_line(error: OSError) -> str:
    where = error.filename or ""
    fix = OS_ERROR_FIXES.get(error.errno or 0, "check the path")
    reason = "no space left" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return f"{reason} on {where}; {fix}"


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Expected failures as one line and exit 2; bugs keep their traceback."""
    verbose = os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    try:
        yield
    except FlowerModelError as error:
        if verbose:
            raise
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:  # `flower-model ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
    except OSError as error:
        if verbose or not error.filename:
            raise
        print(f"{ERROR_PREFIX}{_oserror_line(error)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as error:  # Ctrl-C; SIGTERM where it is Terminated; a note if any
        if verbose:
            raise
        terminated = isinstance(error, Terminated)
        print(str(error) or ("terminated" if terminated else "interrupted"), file=sys.stderr)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def command_help(function: Callable) -> str:
    """A command's help: its `help_text()` when it builds one, else its docstring."""
    builder = getattr(function, "help_text", None)
    text = builder() if builder is not None else inspect.cleandoc(function.__doc__ or "")
    return text.strip() + "\n"


def overview(program: str, commands: dict[str, Callable], about: str) -> str:
    width = max(len(name) for name in commands)
    lines = [about, "", f"usage: {program} COMMAND [ARGS...] [--help]", "", "commands:"]
    for name, function in commands.items():
        summary = inspect.cleandoc(function.__doc__ or "-").splitlines()[0]
        lines.append(f"  {name:<{width}}  {summary}")
    lines += ["", f"`{program} COMMAND --help` shows a command's arguments and flags."]
    return "\n".join(lines) + "\n"


def _with_trailing(function: Callable, trailing: list[str]) -> Callable:
    """`function` with `trailing` (the words after `--`) appended to its positional arguments;
    fire still reads the flags from `function`'s own signature (functools.wraps)."""
    if not trailing:
        return function

    @functools.wraps(function)
    def call(*args, **kwargs):
        return function(*args, *trailing, **kwargs)

    return call


def run_command(function: Callable, words: list[str], usage: str) -> None:
    """Run one command with `words` (its arguments), inside the error boundary."""
    import fire

    cut = words.index(END_OF_FLAGS) if END_OF_FLAGS in words else len(words)
    head, trailing = words[:cut], words[cut + 1 :]
    if any(word in HELP_FLAGS for word in head):
        sys.stdout.write(command_help(function))
        return
    with error_boundary():
        arguments = checked_arguments(head, function, usage, len(trailing))
        fire.Fire(_with_trailing(function, trailing), arguments, usage)


def run_cli(
    program: str, commands: dict[str, Callable], about: str, argv: list[str] | None = None
) -> None:
    """`program COMMAND ARGS...`: dispatch to `commands`, or print the overview."""
    words = sys.argv[1:] if argv is None else list(argv)
    if not words or words[0] in HELP_FLAGS:
        sys.stdout.write(overview(program, commands, about))
        return
    name, rest = words[0], words[1:]
    if name not in commands:
        print(
            f"{ERROR_PREFIX}unknown command {name!r}; commands: {', '.join(commands)} "
            f"(`{program} --help` says what each does)",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)
    run_command(commands[name], rest, f"{program} {name}")
