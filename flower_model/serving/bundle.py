"""The tritonserver that the `nvidia-pytriton` wheel carries: its binary, python backend and
per-Python stubs, prepared in a work folder the way pytriton itself does at start-up (pytriton's
Python proxy is not used), and the command line it runs with."""

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from flower_model.config import ServeConfig
from flower_model.errors import FlowerModelError

CARRIER = "pytriton"  # the nvidia-pytriton wheel's package, which holds tritonserver/
STUB = "triton_python_backend_stub"
# Triton's native onnxruntime backend, built by `make triton-backend` into this checkout's
# build/triton-backend, or into $TRITON_BACKEND_DIR (the build script's variable of that name).
BACKEND_DIR_VARIABLE = "TRITON_BACKEND_DIR"
DEFAULT_BACKEND_DIR = Path(__file__).resolve().parents[2] / "build" / "triton-backend"
NATIVE_BACKEND_FILE = "libtriton_onnxruntime.so"
BUILD_HINT = "`make triton-backend` builds it"
STOP_TIMEOUT_S = 30  # tritonserver's --exit-timeout-secs
SHARED_MEMORY = Path("/dev/shm")
NVIDIA_DEVICE = Path("/dev/nvidiactl")  # present wherever the NVIDIA driver is loaded


class ServeError(FlowerModelError):
    """The server could not start: busy port, missing binary, a repository Triton refused."""


def _carrier() -> Path | None:
    """The installed nvidia-pytriton package folder, found without importing it."""
    spec = importlib.util.find_spec(CARRIER)
    return Path(next(iter(spec.submodule_search_locations))) if spec else None


def bundled_server() -> Path:
    """The tritonserver tree inside the installed nvidia-pytriton wheel."""
    carrier = _carrier()
    root = carrier / "tritonserver" if carrier else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise ServeError(
            "the tritonserver binary was not found: install the nvidia-pytriton wheel "
            "(`make setup`), which carries it"
        )
    return root


def prepare_server(work: Path) -> Path:
    """Copy the tree to `work` with the stub for this Python in backends/python; return it."""
    source = bundled_server()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton has no python-backend stub for Python {version}")
    target = work / "tritonserver"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("python_backend_stubs", STUB))
    shutil.copy2(stub, target / "backends" / "python" / STUB)
    if native_backend_missing() is None:  # its RUNPATH ($ORIGIN) finds libonnxruntime beside it
        native = native_backend().resolve()
        (target / "backends" / "onnxruntime").symlink_to(native, target_is_directory=True)
    return target


def native_backend() -> Path:
    root = Path(os.environ.get(BACKEND_DIR_VARIABLE) or DEFAULT_BACKEND_DIR)
    return root / "backends" / "onnxruntime"


def native_backend_missing() -> str | None:
    """Why the native onnxruntime backend cannot be served, or None when it is built."""
    folder = native_backend()
    if (folder / NATIVE_BACKEND_FILE).is_file():
        return None
    library = folder / NATIVE_BACKEND_FILE
    return f"Triton's onnxruntime backend is not built (no {library}; {BUILD_HINT})"


def server_env() -> dict[str, str]:
    """libpython and the wheel's bundled libraries on LD_LIBRARY_PATH; this venv first on PATH.

    The stub finds this environment's packages (onnxruntime, flower_model) through the `python3`
    on PATH; PYTHONPATH alone is not enough.
    """
    carrier = _carrier()
    site = carrier.parent if carrier else Path()
    libraries = [sysconfig.get_config_var("LIBDIR") or "", str(site / "nvidia_pytriton.libs")]
    current = os.environ.get("LD_LIBRARY_PATH", "")
    path = os.environ.get("PATH", "")
    return {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [*libraries, current])),
        "PATH": os.pathsep.join(filter(None, [str(Path(sys.executable).parent), path])),
    }


def server_command(server: Path, repository: Path, config: ServeConfig) -> list[str]:
    host = config.host
    return [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={server / 'backends'}",
        f"--cache-directory={server / 'caches'}",
        f"--http-address={host}",
        f"--http-port={config.http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={config.grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-address={host}",
        f"--metrics-port={config.metrics_port}",
        "--disable-auto-complete-config",
        f"--exit-timeout-secs={STOP_TIMEOUT_S}",
        # One server's shared-memory regions must not meet another's on the same host.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(os.getpid())}",
        *cpu_only_flags(),
    ]


def shm_prefix(serve_pid: int) -> str:
    """The python backend's shared-memory regions of one serve process (/dev/shm/<prefix>*)."""
    return f"flower_model_{serve_pid}_"


def remove_shared_memory() -> None:
    """The regions a killed server could not remove (a SIGKILLed tritonserver leaks ~1 MB per
    stub each time); only this serve process's own prefix, and only once its server is gone."""
    for region in SHARED_MEMORY.glob(shm_prefix(os.getpid()) + "*"):
        region.unlink(missing_ok=True)


def cpu_only_flags() -> list[str]:
    """Without an NVIDIA driver, no pinned or CUDA memory pools: tritonserver otherwise logs a
    warning and an error about CUDA at every start of a healthy CPU server."""
    if NVIDIA_DEVICE.exists():
        return []
    return ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
