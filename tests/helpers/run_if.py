"""`@run_if(min_gpus=1)`: skip a test, with the reason, where the hardware it needs is absent (as
lightning-hydra-template's RunIf). Pair it with `@pytest.mark.gpu` so `-m "not gpu"` works."""

import pytest


def run_if(min_gpus: int = 0) -> pytest.MarkDecorator:
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = found < min_gpus
    return pytest.mark.skipif(
        missing, reason=f"needs {min_gpus} CUDA GPU(s), this machine has {found}"
    )
