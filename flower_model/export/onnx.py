"""Self-contained ONNX export: uint8 NHWC RGB in, `logits` and `probs` out, with a parity gate.

The graph (`ExportWrapper`, models/classifier.py) carries its own preprocessing (cast, scale,
normalise, NHWC->NCHW) and softmax, so a client needs only the decoded, resized photo. Class
names, image size, normalisation, git SHA and config hash ride along as metadata properties.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from flower_model.config import ExportConfig
from flower_model.errors import FlowerModelError
from flower_model.export.runtime import compare, onnx_probs
from flower_model.io_utils import atomic_path, remove_stale, temp_pattern
from flower_model.models.classifier import ExportWrapper, load_classifier
from flower_model.serving.contract import read_metadata  # noqa: F401  (its callers' import)
from flower_model.serving.contract import INPUT, OUTPUTS

BATCH_AXIS = "batch"
EXAMPLE_BATCH = 2
QUANTIZE_SCRATCH_PREFIX = ".quantize."  # quantize_int8's scratch folder beside the output


def config_hash(resolved: dict) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def spread_sample(images: np.ndarray, count: int) -> np.ndarray:
    """`count` images evenly spaced over `images` (all when it holds fewer), read into memory.

    The split arrays are stored class by class, so their first images are one or two classes: the
    INT8 calibration took the first 256 training photos, all daisies, and the parity gate's first
    256 validation photos held no sunflower or tulip. Evenly spaced picks cover every class in
    proportion, and stay deterministic.
    """
    if count >= len(images):
        return np.asarray(images)
    index = np.linspace(0, len(images) - 1, count).round().astype(np.int64)
    return np.asarray(images[index])


def torch_probs(wrapper: ExportWrapper, images: np.ndarray, batch: int = 64) -> np.ndarray:
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            outputs.append(wrapper(torch.from_numpy(np.array(images[start : start + batch])))[1])
    return torch.cat(outputs).numpy()


def remove_killed_runs_temps(output: Path, *scratch_patterns: str) -> None:
    """Delete the temp file (and scratch folders matching `scratch_patterns`) that a killed
    export of `output` left beside it (`kill -9` runs no clean-up: a 13 MB `.quantize.*` folder
    and a `.model.int8.onnx.*.tmp` file stayed for good), saying so."""
    removed = []
    for pattern in (temp_pattern(output), *scratch_patterns):
        removed += remove_stale(output.parent, pattern)
    if removed:
        print(
            f"removed what a killed export left in {output.parent}: {', '.join(removed)}",
            file=sys.stderr,
            flush=True,
        )


def export_model(
    checkpoint: Path,
    output: Path,
    config: ExportConfig,
    parity_images: np.ndarray,
    metadata: dict[str, str],
) -> dict:
    """Export, check, gate on parity; write `output` only when everything passes."""
    wrapper, _ = load_classifier(checkpoint)
    size = parity_images.shape[1]
    example = torch.zeros((EXAMPLE_BATCH, size, size, 3), dtype=torch.uint8)
    remove_killed_runs_temps(output)
    with atomic_path(output) as tmp:
        kwargs = (
            {"dynamic_shapes": ({0: torch.export.Dim(BATCH_AXIS)},)}
            if config.dynamo
            else {"dynamic_axes": {name: {0: BATCH_AXIS} for name in (INPUT, *OUTPUTS)}}
        )
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            opset_version=config.opset,
            dynamo=config.dynamo,
            **kwargs,
        )
        model = onnx.load(str(tmp))
        for key, value in sorted(metadata.items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
        parity = compare(torch_probs(wrapper, parity_images), onnx_probs(tmp, parity_images))
        if (
            parity["max_abs_diff"] > config.parity_atol
            or parity["top1_agreement"] < config.parity_min_top1_agreement
        ):
            raise FlowerModelError(
                f"ONNX parity gate failed: {parity} vs tolerances "
                f"max_abs_diff <= {config.parity_atol}, "
                f"top1_agreement >= {config.parity_min_top1_agreement}; no model written. Try "
                "export.dynamo or another export.opset"
            )
    return {
        "parity": parity,
        "opset": config.opset,
        "exporter": "dynamo" if config.dynamo else "torchscript",
    }


class _CalibrationReader:
    """Feeds training images to ONNX Runtime's static-quantisation calibrator, in batches."""

    def __init__(self, images: np.ndarray, batch: int):
        self.batches = iter(
            [images[start : start + batch] for start in range(0, len(images), batch)]
        )

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch)}


def quantize_int8(
    fp32_model: Path,
    output: Path,
    calibration: np.ndarray,
    reduce_range: bool = True,
    batch: int = 32,
) -> None:
    """Static INT8 (QDQ, per-channel weights) calibrated on `calibration` images.

    `reduce_range` quantises weights to 7 bits. x86 CPUs without VNNI multiply u8 activations by
    s8 weights with instructions that add pairs of products into 16 bits, which saturate with
    full-range weights; on this AVX2 host that cost 2.7 points of test accuracy, 7 bits none.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The pre-processed graph is scratch: it lives in a temporary folder beside the output (it
    # used to be renamed into place and stayed behind as model.int8.pre.onnx, an undeclared out).
    remove_killed_runs_temps(output, f"{QUANTIZE_SCRATCH_PREFIX}*")
    with (
        atomic_path(output) as tmp,
        tempfile.TemporaryDirectory(prefix=QUANTIZE_SCRATCH_PREFIX, dir=output.parent) as scratch,
    ):
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        # Keep the classifier head and softmax in float: quantised probabilities come in 1/255
        # steps that tie the top classes, and the head is a negligible share of the compute.
        graph = onnx.load(str(prepared)).graph
        head = [node.name for node in graph.node if set(node.output) & set(OUTPUTS)]
        quantize_static(
            str(prepared),
            str(tmp),
            _CalibrationReader(calibration, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
            nodes_to_exclude=head,
        )
        # Keep the fp32 model's metadata (class names, image size...) on the INT8 variant too.
        fp32_meta = onnx.load(str(fp32_model), load_external_data=False).metadata_props
        quantized = onnx.load(str(tmp))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(fp32_meta)
        onnx.save(quantized, str(tmp))
