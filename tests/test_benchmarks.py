"""benchmarks/backends.py's roofline figure: the multiply-accumulates per image it prints."""

import importlib.util

import torch

from flower_model.models.classifier import load_classifier
from tests.conftest import REPO_ROOT, TINY_SIZE


def _backends():
    spec = importlib.util.spec_from_file_location("backends", REPO_ROOT / "benchmarks/backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _macs_by_hand(net: torch.nn.Module, size: int) -> int:
    """Output elements x (kernel area x input channels per group) for each conv, x inputs for
    each linear layer: the textbook count, from the shapes a forward pass gives."""
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * kernel * module.in_channels // module.groups
        else:
            total += output.numel() * module.in_features

    layers = [
        item for item in net.modules() if isinstance(item, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def test_model_macs_match_the_textbook_count(tiny_checkpoint):
    net = load_classifier(tiny_checkpoint)[0].net.eval()
    macs = _backends().model_macs(tiny_checkpoint, TINY_SIZE)
    assert macs == _macs_by_hand(net, TINY_SIZE) > 0
