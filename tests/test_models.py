"""Every registered model: forward, one training step, one validation step (timm-style smoke)."""

import pytest
import torch

from flower_model.config import MODEL_NAMES
from flower_model.models.registry import available_models, create_model
from flower_model.training.module import FlowerClassifier
from tests.conftest import make_config

CLASSES = ["a", "b", "c"]
SIZE = 64


def test_registry_matches_the_schema():
    assert available_models() == sorted(MODEL_NAMES)


def test_unknown_model_is_refused():
    config = make_config().model.model_copy(update={"name": "vgg"})
    with pytest.raises(KeyError, match="not registered"):
        create_model(config, 3)


@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_forward_train_and_validation_step(name):
    torch.manual_seed(0)
    config = make_config([f"model={name}"])
    module = FlowerClassifier(
        config.model.model_dump(), config.train.model_dump(), CLASSES, steps_per_epoch=4
    )
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    logits = module(images)
    assert logits.shape == (4, len(CLASSES)) and torch.isfinite(logits).all()

    optimizer = module.configure_optimizers()["optimizer"]
    before = [param.detach().clone() for param in module.parameters()]
    module.train()
    loss = module.criterion(module(images), labels)
    loss.backward()
    optimizer.step()
    changed = any(not torch.equal(old, new) for old, new in zip(before, module.parameters()))
    assert torch.isfinite(loss) and changed, "one optimisation step must move the weights"

    module.eval()
    with torch.no_grad():
        module.validation_step((images, labels), 0)
    assert 0.0 <= float(module.metrics["val_acc"].compute()) <= 1.0


def test_pretrained_small_cnn_is_a_config_error():
    from flower_model.config import ConfigError

    with pytest.raises(ConfigError, match="model.pretrained=false"):
        make_config(["model.pretrained=true"])


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
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(config.train.lr, rel=0.05) and min(rates) >= 0
