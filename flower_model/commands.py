"""The `flower-model` command line: one small function per command, run by fire inside the one
error boundary of `flower_model/cli.py` (flags checked before work, one-line errors).

`flower-model <stage>` runs `pipeline_stages/<stage>.py`, the module DVC runs for that stage.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

import pipeline_stages
from flower_model.cli import Terminated, run_cli, terminate_as_interrupt
from flower_model.errors import FlowerModelError

ABOUT = "flower-model: a flower photo classifier whose whole life is one DVC pipeline."
DEFAULT_MODEL = "models/model.onnx"
DEFAULT_BASE = "main"  # what `flower-model report` compares against: the branch a PR targets


def _stage(name: str):
    """`flower-model NAME ...` for stage module pipeline_stages/NAME.py (loaded on use, so a
    command never imports another stage's code)."""
    from flower_model.pipeline.stage import module_summary, stage_command

    module = importlib.import_module(f"{pipeline_stages.__name__}.{name}")
    return stage_command(
        name, module.run, getattr(module, "preflight", None), module_summary(module)
    )


def stage_names() -> list[str]:
    """The stages: one module each in pipeline_stages/, in dvc.yaml's order when it is here."""
    from flower_model.config import ConfigError, dvc_yaml

    names = sorted(info.name for info in pkgutil.iter_modules(pipeline_stages.__path__))
    try:
        order = list(dvc_yaml.stages(Path.cwd()))
    except ConfigError:
        return names
    return sorted(names, key=lambda name: order.index(name) if name in order else len(order))


def positive_int(flag: str, value: object) -> int:
    """`value` as an int >= 1, or a one-line error naming the flag."""
    if isinstance(value, bool) or not str(value).isdigit() or int(str(value)) < 1:
        raise FlowerModelError(f"{flag} must be a positive whole number, got {value}")
    return int(str(value))


def compose(*overrides: str, check: bool = False) -> None:
    """Write params.yaml from configs/ (the committed composition DVC tracks).

    usage: flower-model compose [KEY=VALUE ...] [--check]
      --check   only compare: exit 1 and print the difference when params.yaml and configs/ differ
    """
    from flower_model.pipeline.compose import check_params, write_params

    root = Path.cwd()
    if check:
        problem = check_params(root)
        if problem:
            print(problem, file=sys.stderr)
            sys.exit(1)
        print("params.yaml matches configs/")
        return
    changed = write_params(root, [str(item) for item in overrides])
    print("params.yaml " + ("updated from configs/" if changed else "already matches configs/"))


def infer(
    *paths: str,
    model: str = DEFAULT_MODEL,
    output: str | None = None,
    top_k: int = 3,
    backend: str = "onnx",
) -> None:
    """Classify photos (files or folders) with the exported model, in this process.

    usage: flower-model infer PATH... [--model F] [--output F.csv|F.json] [--top-k K]
                                      [--backend onnx|tensorrt]
      --model F     the ONNX model (default models/model.onnx; fetched with `dvc pull` if missing)
      --output F    write the predictions to F (.csv or .json) instead of printing CSV
      --top-k K     how many classes to list per photo (1 to the number of classes; default 3)
      --backend B   onnx (ONNX Runtime, default) or tensorrt (a GPU and models/trt/model.plan)
    Exit code 1 when a photo could not be classified (the others are still written).
    """
    from flower_model.pipeline.model_check import verify_out
    from flower_model.pipeline.workspace import workspace_note
    from flower_model.serving.infer import output_suffix, run_infer

    count = positive_int("--top-k", top_k)
    output_suffix(output)  # before the model is fetched or read
    if not paths:
        raise FlowerModelError("no photo given: flower-model infer PHOTO_OR_FOLDER... (see --help)")
    if backend not in ("onnx", "tensorrt"):
        raise FlowerModelError(f"--backend must be onnx or tensorrt, got {backend!r}")
    model_path = Path(str(model))
    note = workspace_note(Path.cwd())
    if note and model_path == Path(DEFAULT_MODEL):  # the workspace's model: whose it is
        print(note, file=sys.stderr)
    if not model_path.is_file():
        _pull_with_dvc(model_path)
    verify_out(model_path, Path.cwd())
    classifier = None
    if backend == "tensorrt":
        from flower_model.serving.tensorrt_backend import TensorRTClassifier

        classifier = TensorRTClassifier(model_path)
    out = Path(str(output)) if output else None
    sys.exit(run_infer([str(item) for item in paths], model_path, out, count, classifier))


def _pull_with_dvc(target: Path) -> None:
    """Fetch a missing model with `dvc pull`; a one-line error if that fails. Only the project's
    own outs can be pulled: a folder, or a path outside the project, is the flag's mistake."""
    from flower_model.pipeline.fetch import pull_outs

    if target.is_dir():
        raise FlowerModelError(f"--model {target} is a folder; give the .onnx file")
    if not target.resolve().is_relative_to(Path.cwd().resolve()):
        raise FlowerModelError(f"--model {target} does not exist; check the path")

    reason = pull_outs([target], Path.cwd())
    if reason is not None:
        raise FlowerModelError(
            f"{target} does not exist and {reason}. Run `dvc repro` to build it, "
            "or configure the DVC remote that holds it"
        )


def serve(
    *overrides: str,
    model: str = DEFAULT_MODEL,
    backend: str = "onnx",
    repository: str | None = None,
    flavour: str | None = None,
    int8: bool = False,
) -> None:
    """Serve the model on Triton Inference Server (HTTP, gRPC, metrics), supervised.

    usage: flower-model serve [serve.KEY=VALUE ...] [--model F] [--flavour container|python]
                              [--int8] [--backend onnx|tensorrt] [--repository DIR]
      --model F         the ONNX model to serve (default models/model.onnx)
      --flavour F       container: Triton's native onnxruntime backend (the default, built by
                        `make triton-backend`; without it serve falls back to python, saying so);
                        python: a python-backend stub around ONNX Runtime (serve.flavour)
      --int8            serve models/model.int8.onnx instead of the fp32 model (serve.int8)
      --backend B       onnx (default) or tensorrt
      --repository DIR  serve an existing model repository instead of writing one
    Ports, instances and threads are the `serve.*` keys (configs/serve/default.yaml). A server
    that crashes after it was ready is always restarted (after 1, 2, 4, 4... s); serve gives up
    only after serve.max_restarts restarts in a row that never became ready.
    """
    from flower_model.config import load_config
    from flower_model.serving.triton import serve as run_server

    words = [str(item) for item in overrides]
    if flavour is not None:
        if str(flavour) not in ("container", "python"):
            raise FlowerModelError(f"--flavour must be container or python, got {flavour}")
        words.append(f"serve.flavour={flavour}")
    if int8:
        words.append("serve.int8=true")
    model_path = Path(str(model))
    config = load_config(Path.cwd(), words).serve
    if repository is None and not model_path.is_file():
        _pull_with_dvc(model_path)
    folder = Path(str(repository)) if repository else None
    sys.exit(run_server(model_path, config, str(backend), folder))


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
    """Classify photos through a running Triton server.

    usage: flower-model client PATH... [--url HOST:PORT] [--protocol http|grpc] [--raw]
                                       [--model-name NAME] [--output F.csv|F.json] [--top-k K]
                                       [--batch N]
      --url HOST:PORT    the server (default 127.0.0.1:8000; gRPC listens on 8001); a scheme
                         matching --protocol (http://HOST:PORT, grpc://HOST:PORT) is accepted
      --protocol P       http (default) or grpc
      --raw              decode here and send uint8 arrays to flower_classifier (default: send
                         the encoded files to flower_classifier_image, the server decodes)
      --model-name NAME  the served model family (default flower_classifier)
      --output F         write the predictions to F (.csv or .json) instead of printing CSV
      --top-k K          classes listed per photo (default 3)
      --batch N          photos per request (default 16; capped to the server's max_batch_size)
    A server that stops answering is retried for up to 60 s (serve restarts it in seconds); if
    it does not come back, the photos already classified are written, the rest marked.
    """
    from flower_model.io_utils import write_stdout, write_text
    from flower_model.serving.client import TritonClassifier, classify_remote
    from flower_model.serving.infer import GONE_REASON, output_suffix, render

    if not paths:
        raise FlowerModelError(
            "no photo given: flower-model client PHOTO_OR_FOLDER... (see --help)"
        )
    suffix = output_suffix(output)
    count, size = positive_int("--top-k", top_k), positive_int("--batch", batch)
    classifier = TritonClassifier(str(url), str(protocol), str(model_name), raw)
    try:
        results = classify_remote([str(item) for item in paths], classifier, count, size)
    finally:
        classifier.close()
    text = render(results, suffix)
    if output:
        write_text(Path(str(output)), text)
    else:
        write_stdout(text)
    gone = [result for result in results if result.error.startswith(GONE_REASON)]
    for result in results:
        if result.error and not result.error.startswith(GONE_REASON):
            print(f"cannot classify {result.path}: {result.error}", file=sys.stderr)
    if gone:  # one line for all of them: the reason is the same
        print(
            f"error: {gone[0].error.partition(': ')[2]}; {len(gone)} of {len(results)} photos "
            f"were not classified ({GONE_REASON} in the output); run the client again for them",
            file=sys.stderr,
        )
    sys.exit(1 if any(result.error for result in results) else 0)


def triton_repo(
    folder: str,
    model: str = DEFAULT_MODEL,
    flavour: str = "container",
    backend: str = "onnx",
) -> None:
    """Write a Triton model repository for NVIDIA's container (or the python flavour).

    usage: flower-model triton-repo DIR [--model F] [--flavour container|python]
                                        [--backend onnx|tensorrt]
      --model F     the ONNX model (default models/model.onnx)
      --flavour F   container (Triton's onnxruntime backend, default) or python (the stub)
      --backend B   onnx (default) or tensorrt (models/trt/model.plan)
    """
    from flower_model.config import load_config
    from flower_model.serving.model_repository import write_repository

    config = load_config(Path.cwd()).serve
    written = write_repository(
        Path(str(folder)), Path(str(model)), config, str(flavour), str(backend)
    )
    for path in written:
        print(f"wrote {path}")


def multirun(
    *overrides: str,
    jobs: int = 1,
    poll_s: float = 5.0,
    launcher: str = "local",
) -> None:
    """Sweep: one DVC experiment per combination, locally or as Slurm jobs.

    usage: flower-model multirun KEY=V1,V2 ... [--jobs N] [--launcher local|slurm] [--poll-s S]
      --jobs N        experiments run at once (default 1)
      --launcher L    local (default) or slurm (resources: the `slurm.*` keys)
      --poll-s S      seconds between status checks (default 5)
    Combinations that already have results are skipped; run it again to finish a sweep.
    """
    from flower_model.pipeline.multirun import run_multirun

    words = [str(item) for item in overrides]
    if not words:  # one combination is fine (a single Slurm job); none would rerun the defaults
        raise FlowerModelError(
            "multirun needs a sweep: at least one KEY=V1,V2 (e.g. train.seed=1,2,3); for one "
            "experiment use `dvc exp run -S KEY=VALUE`"
        )
    try:
        with terminate_as_interrupt():  # `kill` stops the sweep's experiments as Ctrl-C does
            combinations = run_multirun(
                Path.cwd(),
                words,
                positive_int("--jobs", jobs),
                float(poll_s),
                launcher=str(launcher),
            )
    except KeyboardInterrupt as error:  # the boundary prints this line, exits 130 (SIGTERM 143)
        word = "terminated" if isinstance(error, Terminated) else "interrupted"
        raise type(error)(
            f"{word}: stopped the sweep's queued and running experiments (Slurm jobs "
            "cancelled); run the same command again to finish it (combinations with results "
            "are skipped)"
        ) from None
    sys.exit(1 if any(combination.state == "failed" for combination in combinations) else 0)


def pull(*targets: str, remote: str | None = None) -> None:
    """`dvc pull` with a hint when the remote is down or refuses.

    usage: flower-model pull [TARGET ...] [--remote NAME]
    """
    from flower_model.pipeline.fetch import transfer

    sys.exit(transfer("pull", [str(item) for item in targets], remote, Path.cwd()))


def push(*targets: str, remote: str | None = None) -> None:
    """`dvc push` with a hint when the remote is down or refuses.

    usage: flower-model push [TARGET ...] [--remote NAME]
    """
    from flower_model.pipeline.fetch import transfer

    sys.exit(transfer("push", [str(item) for item in targets], remote, Path.cwd()))


def results(*revisions: str) -> None:
    """Experiments x headline metrics and the params that differ, in <= 100 columns.

    usage: flower-model results [REV ...]
      REV   experiment names or commits to show (default: the workspace, HEAD and HEAD's
            experiments, as `dvc exp show` lists them; with REVs, every commit is searched)
    Under each row, indented: the params in which it differs from the first row.
    """
    from flower_model.pipeline.results import print_results

    print_results(Path.cwd(), [str(item) for item in revisions])


def report(*revisions: str, output: str | None = None) -> None:
    """What a change did: two revisions' metrics and McNemar's test on them, as Markdown.

    usage: flower-model report [BASE] [TARGET] [--output F.md]
      BASE      a branch, commit or DVC experiment (default main)
      TARGET    the same, or `workspace` (default)
      --output  write the Markdown to F.md instead of printing it, and the plots that changed
                (base and target side by side) to F_plots/ beside it
    Headline metrics of both sides and the change; whether the accuracy change is significant
    (McNemar's exact test on the paired test predictions, reports/predictions.csv, read through
    DVC); the params that differ; the stages whose dvc.lock entries differ; the plots that
    changed. <= 100 columns.
    """
    from flower_model.io_utils import write_text
    from flower_model.pipeline.report import WORKSPACE, build_report
    from flower_model.pipeline.report_plots import folder_for

    names = [str(item) for item in revisions]
    if len(names) > 2:
        raise FlowerModelError(f"report compares two revisions, got {len(names)}: {names}")
    base, target = names + [DEFAULT_BASE, WORKSPACE][len(names) :]
    markdown = Path(str(output)) if output else None
    text = build_report(Path.cwd(), base, target, folder_for(markdown) if markdown else None)
    if markdown:
        write_text(markdown, text)
    else:
        sys.stdout.write(text)


def back() -> None:
    """Back from an experiment: HEAD's params and this clone's outputs; runs nothing.

    params.yaml and dvc.lock come back from HEAD; each stage's outputs from DVC's cache or run
    cache (what `make repro` made here); no stage runs.

    usage: flower-model back
    When this clone never made HEAD's outputs, it says so in one line (`dvc pull` them, or `dvc
    repro`) and leaves that stage's outputs as they are (with nothing restored yet, it changes
    nothing: the experiment's params.yaml and dvc.lock stay).
    """
    from flower_model.pipeline.way_back import go_back

    go_back(Path.cwd())


def commands() -> dict:
    """Every command: the stages first, in pipeline order."""
    table = {name: _stage(name) for name in stage_names()}
    table.update(
        {
            "compose": compose,
            "results": results,
            "report": report,
            "back": back,
            "infer": infer,
            "serve": serve,
            "client": client,
            "triton-repo": triton_repo,
            "multirun": multirun,
            "pull": pull,
            "push": push,
        }
    )
    return table


def main(argv: list[str] | None = None) -> None:
    run_cli("flower-model", commands(), ABOUT, argv)


if __name__ == "__main__":
    main()
