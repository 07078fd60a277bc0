"""Where a training run came from (git SHA, data version) and where it is tracked (MLflow)."""

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from flower_model.config import MlflowConfig
from flower_model.constants import DVC_LOCK_FILE
from flower_model.errors import FlowerModelError

UNKNOWN = "unknown"
HTTP_SCHEMES = ("http://", "https://")
HASH_BLOCK = 1 << 20


def git_state(root: Path = Path(__file__).parent) -> tuple[str, bool]:
    """(HEAD SHA, whether tracked files differ) of the checkout holding the code that runs."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN, False
    return sha, bool(status.strip())


def content_hash(folder: Path) -> str:
    """sha256 over the sorted relative names and bytes of every file below `folder`."""
    digest = hashlib.sha256()
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def dvc_lock_hash(root: Path, out_path: str) -> str:
    """The md5 dvc.lock records for `out_path` (any stage), or 'unknown'."""
    lock = root / DVC_LOCK_FILE
    if not lock.is_file():
        return UNKNOWN
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
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


def require_tracking_server(config: MlflowConfig) -> None:
    """Fail before training if an HTTP tracking server does not answer, saying how to start one."""
    uri = config.tracking_uri
    if not uri.startswith(HTTP_SCHEMES):
        return  # sqlite:/file: stores need no server
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


class TolerantMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that lets training finish when the tracking server goes away mid-run.

    The first failed call (after MLflow's bounded retries) prints one warning and stops all
    further tracking of the run; training, checkpoints and every DVC out go on. `lost` says what
    could not be logged, or is None.
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
            self.lost = f"{what}: {error}".splitlines()[0]
            print(
                f"warning: MLflow at {self.uri} stopped answering ({self.lost}); training goes "
                "on and writes every out, but nothing more is logged to this run",
                file=sys.stderr,
                flush=True,
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
        self.guarded("finalize", super().finalize, status)
