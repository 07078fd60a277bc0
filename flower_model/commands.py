"""The `flower-model` command line (fire): one small function per command.

Stages: `flower-model <stage> [hydra overrides...] [--dry-run]`. Without overrides a stage reads
params.yaml (what DVC tracks); with overrides it composes configs/ + overrides and says so.
"""

import sys
from pathlib import Path

from flower_model.errors import FlowerModelError
from flower_model.pipeline import stages
from flower_model.pipeline.stage import (
    EXIT_ERROR,
    fire_command,
    require_flag_without_value,
    stage_command,
)


def _stage(name: str):
    def command(*overrides: str, dry_run: bool = False, show_config: bool = False) -> None:
        # The stage table loads the stage's module on use: `flower-model compose` pays no torch.
        stage_command(stages.stage(name))(*overrides, dry_run=dry_run, show_config=show_config)

    command.__name__ = name
    command.__doc__ = (
        f"Run stage {name}: `flower-model {name} [overrides...] [--dry-run] [--show-config]`."
    )
    return command


def compose(*overrides: str, check: bool = False) -> None:
    """Write params.yaml from configs/ (`--check`: only compare, exit 1 when they differ)."""
    from flower_model.pipeline.compose import check_params, write_params

    require_flag_without_value("--check", check)
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


def infer(
    *paths: str,
    model: str = "models/model.onnx",
    output: str | None = None,
    top_k: int = 3,
    backend: str = "onnx",
) -> None:
    """Classify photos: `infer PATH... [--model F] [--output F.csv|F.json] [--top-k K]`."""
    model_path = Path(model)
    if not model_path.is_file():
        _pull_with_dvc(model_path)
    from flower_model.serving.infer import run_infer

    out = Path(output) if output else None
    try:
        classifier = None
        if backend == "tensorrt":
            from flower_model.serving.tensorrt_backend import TensorRTClassifier

            classifier = TensorRTClassifier(model_path)
        elif backend != "onnx":
            raise FlowerModelError(f"--backend must be onnx or tensorrt, got {backend!r}")
        code = run_infer([str(item) for item in paths], model_path, out, int(top_k), classifier)
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(code)


def _pull_with_dvc(target: Path) -> None:
    """Fetch a missing model with `dvc pull`; exit with a clear message if that fails."""
    from flower_model.pipeline.fetch import pull_outs

    reason = pull_outs([target], Path.cwd())
    if reason is not None:
        print(
            f"error: {target} does not exist and {reason}. Run `dvc repro` to build it, "
            "or configure the DVC remote that holds it",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)


def serve(
    *overrides: str,
    model: str = "models/model.onnx",
    backend: str = "onnx",
    repository: str | None = None,
) -> None:
    """Run tritonserver: `serve [overrides...] [--model F] [--backend B] [--repository DIR]`."""
    from flower_model.config import load_config
    from flower_model.serving.triton import serve as run_server

    model_path = Path(model)
    try:
        config = load_config(Path.cwd(), [str(item) for item in overrides]).serve
        if repository is None and not model_path.is_file():
            _pull_with_dvc(model_path)
        code = run_server(
            model_path, config, str(backend), Path(repository) if repository else None
        )
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(code)


def client(
    *paths: str,
    url: str = "127.0.0.1:8000",
    protocol: str = "http",
    raw: bool = False,
    model_name: str = "flower_classifier",
    output: str | None = None,
    top_k: int = 3,
    batch: int = 16,
) -> None:
    """Classify photos via Triton: `client PATH... --url HOST:PORT [--protocol grpc] [--raw]`."""
    from flower_model.serving.client import TritonClassifier, classify_remote
    from flower_model.serving.infer import OUTPUT_FORMATS, render

    require_flag_without_value("--raw", raw)
    suffix = Path(output).suffix.lower() if output else ".csv"
    if suffix not in OUTPUT_FORMATS:
        print(f"error: --output must end in .csv or .json, got {output}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    try:
        classifier = TritonClassifier(str(url), str(protocol), str(model_name), raw)
        try:
            results = classify_remote(
                [str(item) for item in paths], classifier, int(top_k), int(batch)
            )
        finally:
            classifier.close()
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    text = render(results, suffix)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for result in results:
        if result.error:
            print(f"cannot classify {result.path}: {result.error}", file=sys.stderr)
    sys.exit(1 if any(result.error for result in results) else 0)


def triton_repo(
    output: str, model: str = "models/model.onnx", flavour: str = "container", backend: str = "onnx"
) -> None:
    """Write a Triton model repository: `triton-repo DIR [--flavour container|python]`."""
    from flower_model.config import load_config
    from flower_model.serving.model_repository import write_repository

    try:
        config = load_config(Path.cwd()).serve
        written = write_repository(Path(output), Path(model), config, str(flavour), str(backend))
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    for path in written:
        print(f"wrote {path}")


def multirun(
    *overrides: str,
    jobs: int = 1,
    poll_s: float = 5.0,
    launcher: str = "local",
) -> None:
    """Sweep as DVC experiments: `multirun train.lr=0.001,0.003 model=a,b [--jobs N]
    [--launcher local|slurm]` (Slurm resources: the `slurm.*` keys, e.g. slurm.gpus_per_node=0)."""
    from flower_model.errors import FlowerModelError
    from flower_model.pipeline.multirun import run_multirun

    root = Path.cwd()
    combinations: list = []
    words = [str(item) for item in overrides]
    try:
        combinations = run_multirun(root, words, int(jobs), poll_s, launcher=str(launcher))
    except FlowerModelError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(
            "interrupted: stopped the sweep's queued and running experiments (Slurm jobs "
            "cancelled); run the same command again to finish it (combinations with results "
            "are skipped)",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)
    sys.exit(1 if any(combination.state == "failed" for combination in combinations) else 0)


def pull(*targets: str, remote: str | None = None) -> None:
    """`dvc pull` with a hint when the remote is down or refuses: `pull [TARGETS] [--remote R]`."""
    from flower_model.pipeline.fetch import transfer

    sys.exit(transfer("pull", [str(item) for item in targets], remote, Path.cwd()))


def push(*targets: str, remote: str | None = None) -> None:
    """`dvc push` with a hint when the remote is down or refuses: `push [TARGETS] [--remote R]`."""
    from flower_model.pipeline.fetch import transfer

    sys.exit(transfer("push", [str(item) for item in targets], remote, Path.cwd()))


def _commands() -> dict:
    commands = {name: _stage(name) for name in stages.names()}
    commands["compose"] = compose
    commands["infer"] = infer
    commands["serve"] = serve
    commands["client"] = client
    commands["triton-repo"] = triton_repo
    commands["multirun"] = multirun
    commands["pull"] = pull
    commands["push"] = push
    return commands


def main() -> None:
    fire_command(_commands(), "flower-model")


if __name__ == "__main__":
    main()
