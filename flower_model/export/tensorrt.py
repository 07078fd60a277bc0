"""TensorRT engine build from the ONNX model, with the real TensorRT Python API.

When `tensorrt` cannot be imported or no CUDA GPU is visible, the stage records an honest
`skipped` status with the exact reason instead (an error with `trt.required=true`). No engine is
ever faked.
"""

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from flower_model.config import TrtConfig
from flower_model.errors import FlowerModelError
from flower_model.export.runtime import compare, onnx_probs
from flower_model.io_utils import atomic_path
from flower_model.serving.contract import INPUT, OUTPUTS, PROBS

PLAN_FILE = "model.plan"
BUILD_FILE = "build.json"
MIB = 1 << 20
PRECISION_FLAGS = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


def unavailable_reason() -> str | None:
    """Why no engine can be built here, or None when TensorRT and a CUDA GPU are both present."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as error:
        return (
            f"tensorrt cannot be imported ({error}); install NVIDIA TensorRT "
            "or use scripts/build_trt.sh"
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def build_engine(onnx_path: Path, config: TrtConfig, image_size: int, trt: ModuleType) -> bytes:
    """Parse `onnx_path` and build a serialized engine with the configured profile and precision."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10 (the flag is gone); ask for it on older ones.
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise FlowerModelError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors))
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib * MIB)
    if config.precision in PRECISION_FLAGS:
        build_config.set_flag(getattr(trt.BuilderFlag, PRECISION_FLAGS[config.precision]))
    profile = builder.create_optimization_profile()
    shape = (image_size, image_size, 3)
    profile.set_shape(
        INPUT,
        (config.min_batch, *shape),
        (config.opt_batch, *shape),
        (config.max_batch, *shape),
    )
    build_config.add_optimization_profile(profile)
    cache_path = Path(config.timing_cache)
    cache = build_config.create_timing_cache(
        cache_path.read_bytes() if cache_path.is_file() else b""
    )
    build_config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise FlowerModelError(
            f"TensorRT failed to build an engine from {onnx_path} (see its log above)"
        )
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(build_config.get_timing_cache().serialize()))
    return bytes(serialized)


class EngineRunner:
    """Runs a serialized engine on CUDA tensors (torch allocates the device memory)."""

    def __init__(self, plan: bytes, trt: ModuleType):
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        batch = torch.from_numpy(np.ascontiguousarray(images)).cuda()
        self.context.set_input_shape(INPUT, tuple(batch.shape))
        outputs = {}
        for name in OUTPUTS:
            outputs[name] = torch.empty(
                tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda"
            )
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        self.context.set_tensor_address(INPUT, batch.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise FlowerModelError("TensorRT execution failed")
        stream.synchronize()
        return outputs[PROBS].cpu().numpy()


def build_and_check(
    onnx_path: Path, plan_path: Path, config: TrtConfig, images: np.ndarray, trt: ModuleType
) -> dict:
    """Build, check parity against ONNX Runtime, then write the plan; return the build record."""
    import torch

    plan = build_engine(onnx_path, config, int(images.shape[1]), trt)
    batch = images[: config.max_batch]
    parity = compare(onnx_probs(onnx_path, batch), EngineRunner(plan, trt)(batch))
    if parity["max_abs_diff"] > config.parity_atol:
        raise FlowerModelError(
            f"TensorRT parity failed: {parity}, tolerance {config.parity_atol}; no engine written"
        )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(plan)
    return {
        "status": "built",
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "parity": parity,
    }
