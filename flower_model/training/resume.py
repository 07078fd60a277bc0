"""`resume=`: find the checkpoint and check it can continue this config, before any work starts."""

from pathlib import Path

from flower_model.config import Config, ConfigError, flatten, validate
from flower_model.errors import FlowerModelError
from flower_model.io_utils import load_checkpoint

CHECKPOINT_DIR = "checkpoints"
LAST = "last"
# Sections a resumed run takes from its composed config, not from the checkpoint: `resume`
# itself, and the hardware it runs on now (`trainer`: accelerator, devices, precision).
NOT_ADOPTED = ("resume", "trainer")
KEYS_SHOWN = 6


def resolve_resume(resume: str | None, checkpoints: Path, root: Path) -> Path | None:
    if resume is None:
        return None
    path = checkpoints / f"{LAST}.ckpt" if resume == LAST else Path(resume)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise FlowerModelError(
            f"resume={resume!r}: no checkpoint at {path}; train without resume first"
        )
    return path


def load_resume_state(config: Config, root: Path) -> tuple[Path | None, dict | None]:
    """(checkpoint, its state) for config.resume, or (None, None). A damaged file, or one trained
    with other model settings (its weights would not fit), is a one-line error."""
    path = resolve_resume(config.resume, root / config.paths.models_dir / CHECKPOINT_DIR, root)
    if path is None:
        return None, None
    state = load_checkpoint(path, weights_only=False)
    trained = state.get("hyper_parameters", {}).get("model", {})
    wanted = config.model.model_dump(mode="json")
    differ = sorted(
        key for key in wanted.keys() | trained.keys() if wanted.get(key) != trained.get(key)
    )
    if differ:
        changes = ", ".join(
            f"model.{key}: {trained.get(key)!r} -> {wanted.get(key)!r}" for key in differ
        )
        raise FlowerModelError(
            f"resume={config.resume!r}: {path} was trained with other model settings ({changes}); "
            "resume with the same model settings, or train from scratch without resume"
        )
    # The run's own config, which train stores in every checkpoint (FlowerClassifier.run_info).
    recorded = (state.get("resolved_config") or {}).get("train", {}).get("ema_decay")
    averaged = bool(recorded)
    if recorded is not None and averaged != (config.train.ema_decay > 0):
        raise FlowerModelError(
            f"resume={config.resume!r}: {path} was trained "
            f"{'with' if averaged else 'without'} an EMA of the weights and train.ema_decay is "
            f"{config.train.ema_decay}; resume with the run's train.ema_decay, or train without "
            "resume"
        )
    return path, state


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def adopt_run_config(
    config: Config, state: dict, resolved: dict, path: Path
) -> tuple[Config, dict]:
    """The config a resumed run continues with: its own (the checkpoint's `resolved_config`), not
    what configs/ composes to now (`resume=last` from the command line composes configs/, which
    need not be the params.yaml the run was made from). Returns (config, resolved); the keys whose
    composed value was not applied are named in one line."""
    own = {
        key: value
        for key, value in (state.get("resolved_config") or {}).items()
        if key not in NOT_ADOPTED
    }
    composed, recorded = flatten(resolved), flatten(own)
    changed = sorted(key for key, value in recorded.items() if composed.get(key) != value)
    if not changed:
        return config, resolved
    try:
        adopted = validate(_merge(config.model_dump(mode="json"), own))
    except ConfigError as error:
        raise FlowerModelError(
            f"resume={config.resume!r}: {path} holds a config this version cannot read "
            f"({error}); train without resume"
        ) from None
    shown = ", ".join(
        f"{key}={recorded[key]!r} (not {composed.get(key)!r})" for key in changed[:KEYS_SHOWN]
    )
    more = f" and {len(changed) - KEYS_SHOWN} more" if len(changed) > KEYS_SHOWN else ""
    print(f"resume={config.resume!r}: continuing with the run's own {shown}{more}", flush=True)
    return adopted, _merge(resolved, own)
