"""ONNX export and parity gate, INT8 variant, TensorRT skip path and (stand-in) build path."""

import json
import sys
import types

import numpy as np
import onnx
import pytest

from flower_model.data.layout import images_path
from flower_model.errors import FlowerModelError, OutputError
from flower_model.export.onnx import (
    export_model,
    quantize_int8,
    read_metadata,
    spread_sample,
    torch_probs,
)
from flower_model.export.runtime import onnx_probs, session
from flower_model.export.tensorrt import build_engine, unavailable_reason
from tests.conftest import CLASS_NAMES as CLASSES
from tests.conftest import TINY_SIZE, make_config
from tests.helpers.disk import full_disk, leftovers


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def val_images(tiny_processed):
    return np.load(images_path(tiny_processed / "data" / "processed", "val"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint, val_images):
    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_model(
        checkpoint,
        output,
        make_config().export,
        val_images,
        {"class_names": json.dumps(CLASSES), "image_size": "32"},
    )
    return output, report


def test_onnx_contract(exported):
    path, report = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [dim.dim_param or dim.dim_value for dim in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", TINY_SIZE, TINY_SIZE, 3]
    assert [output.name for output in model.graph.output] == ["logits", "probs"]
    assert json.loads(read_metadata(path)["class_names"]) == CLASSES
    assert report["parity"]["top1_agreement"] == 1.0 and report["parity"]["max_abs_diff"] <= 1e-4


def test_dynamic_batch_and_probabilities(exported, val_images):
    path, _ = exported
    runner = session(path)
    for batch in (1, 5):
        logits, probs = runner.run(None, {"images": val_images[:batch]})
        assert logits.shape == probs.shape == (batch, len(CLASSES))
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_parity_gate_failure_leaves_no_model(tmp_path, checkpoint, val_images):
    config = make_config(["export.parity_atol=1e-12"]).export
    output = tmp_path / "model.onnx"
    with pytest.raises(FlowerModelError, match="parity gate failed"):
        export_model(checkpoint, output, config, val_images, {})
    assert list(tmp_path.iterdir()) == []


def test_int8_variant(tmp_path, exported, val_images, checkpoint):
    path, _ = exported
    output = tmp_path / "model.int8.onnx"
    quantize_int8(path, output, val_images)
    assert [item.name for item in tmp_path.iterdir()] == [output.name], "no scratch file left"
    quantized = onnx.load(str(output))
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    assert read_metadata(output)["class_names"] == read_metadata(path)["class_names"]
    probs = onnx_probs(output, val_images)
    assert probs.shape == (len(val_images), len(CLASSES)) and np.allclose(
        probs.sum(1), 1, atol=1e-3
    )
    from flower_model.models.classifier import load_classifier

    reference = torch_probs(load_classifier(checkpoint)[0], val_images)
    assert np.abs(probs - reference).max() < 0.2, "INT8 must stay close to fp32"


def test_export_removes_what_a_killed_export_left(
    tmp_path, exported, checkpoint, val_images, capsys
):
    """`kill -9` runs no clean-up; the next run removes the temp names it makes itself, only."""
    path, _ = exported
    stale_scratch = tmp_path / ".quantize.k1ll3d"
    stale_scratch.mkdir()
    (stale_scratch / "prepared.onnx").write_bytes(b"\0" * 1024)
    stale_files = [tmp_path / ".model.int8.onnx.k1ll3d.tmp", tmp_path / ".model.onnx.k1ll3d.tmp"]
    for stale in stale_files:
        stale.write_bytes(b"partial")
    others = [tmp_path / ".model.onnx.keep", tmp_path / "notes.tmp", tmp_path / ".other.x.tmp"]
    for other in others:
        other.write_text("not ours")
    quantize_int8(path, tmp_path / "model.int8.onnx", val_images[:4])
    assert not stale_scratch.exists() and not stale_files[0].exists()
    assert stale_files[1].exists(), "model.onnx's temp is the ONNX export's to remove"
    assert "removed what a killed export left" in capsys.readouterr().err
    export_model(checkpoint, tmp_path / "model.onnx", make_config().export, val_images, {})
    assert not stale_files[1].exists()
    assert all(other.read_text() == "not ours" for other in others)
    assert sorted(item.name for item in tmp_path.iterdir()) == sorted(
        [other.name for other in others] + ["model.int8.onnx", "model.onnx"]
    )


def test_trt_skip_path_is_real(tmp_path, tiny_processed):
    # This machine has no TensorRT and no GPU: the stage must say so and write no engine.
    import shutil

    from pipeline_stages import build_trt

    assert unavailable_reason() is not None
    project = tmp_path / "p"
    shutil.copytree(tiny_processed / "data", project / "data")
    config = make_config()
    build_trt.run(config, project, {})
    record = json.loads((project / "models" / "trt" / "build.json").read_text())
    assert record["status"] == "skipped" and record["reason"] == unavailable_reason()
    assert not (project / "models" / "trt" / "model.plan").exists()
    with pytest.raises(FlowerModelError, match="trt.required=true"):
        build_trt.run(make_config(["trt.required=true"]), project, {})


class StandInTensorRT(types.SimpleNamespace):
    """STAND-IN for the `tensorrt` module (not installable here): records every API call.

    It checks that our build path calls the real TensorRT API in the right order with the right
    arguments; it builds nothing, and no test treats its bytes as an engine.
    """

    def __init__(self):
        calls: list[tuple] = []
        record = calls.append

        class Obj:
            def __init__(self, name):
                self.name = name

            def __getattr__(self, attr):
                def method(*args, **kwargs):
                    record((f"{self.name}.{attr}", args + tuple(sorted(kwargs.items()))))
                    if attr == "parse":
                        return True
                    if attr == "build_serialized_network":
                        return b"stand-in plan bytes"
                    if attr == "serialize":
                        return b"cache"
                    return Obj(attr)

                return method

        enum = types.SimpleNamespace
        super().__init__(
            calls=calls,
            Logger=type(
                "Logger",
                (),
                {"WARNING": 2, "__init__": lambda self, level: record(("Logger", (level,)))},
            ),
            Builder=lambda logger: Obj("builder"),
            OnnxParser=lambda network, logger: Obj("parser"),
            NetworkDefinitionCreationFlag=enum(),  # TensorRT 10: no EXPLICIT_BATCH flag
            MemoryPoolType=enum(WORKSPACE="WORKSPACE"),
            BuilderFlag=enum(FP16="FP16", BF16="BF16", INT8="INT8"),
        )


def test_trt_build_path_with_stand_in(tmp_path, exported):
    path, _ = exported
    stand_in = StandInTensorRT()
    config = make_config([f"trt.timing_cache={tmp_path / 'cache'}", "trt.precision=fp16"]).trt
    plan = build_engine(path, config, TINY_SIZE, stand_in)
    names = [name for name, _ in stand_in.calls]
    assert names[:2] == ["Logger", "builder.create_network"]
    assert ("parser.parse", (path.read_bytes(),)) in stand_in.calls
    assert ("create_builder_config.set_flag", ("FP16",)) in stand_in.calls
    assert (
        "create_builder_config.set_memory_pool_limit",
        ("WORKSPACE", config.workspace_mib << 20),
    ) in stand_in.calls
    shape = (TINY_SIZE, TINY_SIZE, 3)
    profile = (
        "images",
        (config.min_batch, *shape),
        (config.opt_batch, *shape),
        (config.max_batch, *shape),
    )
    assert ("create_optimization_profile.set_shape", profile) in stand_in.calls
    assert names.index("builder.build_serialized_network") > names.index(
        "create_builder_config.add_optimization_profile"
    )
    assert plan == b"stand-in plan bytes" and (tmp_path / "cache").read_bytes() == b"cache"
    assert "tensorrt" not in sys.modules, "the stand-in must not leak into the real import path"


def test_calibration_and_parity_samples_cover_every_class():
    # Split arrays are stored class by class; their first images are a single class.
    labels = np.repeat(np.arange(5), [40, 60, 45, 50, 55])
    picked = spread_sample(labels, 20)
    assert len(picked) == 20 and set(picked) == set(range(5))
    assert np.array_equal(picked, spread_sample(labels, 20)), "deterministic"
    assert len(set(spread_sample(np.arange(250), 250))) == 250, "no index twice"
    assert np.array_equal(spread_sample(labels[:7], 20), labels[:7]), "fewer than asked: all"


def test_full_disk_export_is_one_line_and_keeps_the_old_model(
    tmp_path, exported, checkpoint, val_images
):
    config = make_config().export
    with full_disk(tmp_path / "disk", {"model.onnx": b"old model"}) as disk:
        output = disk / "model.onnx"
        with pytest.raises(OutputError) as caught:
            export_model(checkpoint, output, config, val_images, {})
        assert str(caught.value) == f"no space left on {output}; free space or choose another path"
        with pytest.raises(OutputError, match=f"^no space left on {disk / 'int8.onnx'};"):
            quantize_int8(exported[0], disk / "int8.onnx", val_images[:4])
        assert output.read_bytes() == b"old model"
        assert leftovers(disk, "model.onnx") == []
