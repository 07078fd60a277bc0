"""Short names for hyperparameters, used to build readable run names such as `cnn-lr0.003-bs64`."""

from flower_model.config import Config, flatten

# The groups whose keys shape a trained model: each of their keys has a short name in run names.
TUNABLE_GROUPS = ("model", "preprocess", "train", "trainer")
# Chosen short names; a key not listed gets the initials of its last part (`train.augment.foo_bar`
# -> `fb`), so a new config key needs no edit here. A test keeps the names unique.
SHORT_NAMES: dict[str, str] = {
    "model.family": "",  # implied by model.name: never shown on its own
    "model.name": "",
    "model.pretrained": "pre",
    "model.widths": "w",
    "model.blocks": "blk",
    "model.stem_stride": "ss",
    "model.stem_pool": "sp",
    "model.dropout": "do",
    "model.input_mean": "mean",
    "model.input_std": "std",
    "model.freeze_stages": "fz",
    "preprocess.image_size": "px",
    "preprocess.resize_mode": "rm",
    "preprocess.pad_value": "pv",
    "preprocess.val_fraction": "vf",
    "preprocess.test_fraction": "tf",
    "preprocess.seed": "ps",
    "preprocess.max_images_per_class": "mpc",
    "preprocess.max_image_pixels": "mip",
    "preprocess.num_workers": "pw",
    "preprocess.label_reviews_dir": "rev",
    "preprocess.reviews_in_training": "rit",
    "train.seed": "s",
    "train.max_epochs": "ep",
    "train.batch_size": "bs",
    "train.eval_batch_size": "ebs",
    "train.optimizer": "opt",
    "train.lr": "lr",
    "train.weight_decay": "wd",
    "train.momentum": "mom",
    "train.scheduler": "sch",
    "train.warmup_epochs": "wu",
    "train.label_smoothing": "ls",
    "train.channels_last": "cl",
    "train.compile": "cmp",
    "train.num_workers": "nw",
    "train.pin_memory": "pin",
    "train.augment.enabled": "aug",
    "train.augment.scale_min": "smin",
    "train.augment.hflip": "hf",
    "train.augment.color_jitter": "cj",
    "train.augment.min_size": "rmin",
    "train.augment.ramp_start": "rs",
    "train.augment.ramp_end": "re",
    "train.checkpoint.monitor": "mon",
    "train.checkpoint.mode": "mm",
    "train.checkpoint.every_n_epochs": "ckn",
    "train.early_stopping.enabled": "es",
    "train.early_stopping.patience": "pat",
    "train.limit_train_batches": "ltb",
    "train.backbone_lr_scale": "blr",
    "train.probe_steps": "lps",
    "train.probe_lr": "lplr",
    "train.freeze_bn_stats": "fbn",
    "trainer.accelerator": "acc",
    "trainer.devices": "dev",
    "trainer.strategy": "str",
    "trainer.num_nodes": "nn",
    "trainer.precision": "prec",
    "trainer.deterministic": "det",
    "trainer.log_every_n_steps": "log",
}
MODEL_SHORT_NAMES = {
    "small_cnn": "cnn",
    "resnet18": "r18",
    "mobilenet_v3_small": "mnv3s",
    "efficientnet_lite0": "effl0",
    "efficientnet_lite1": "effl1",
    "efficientnet_lite2": "effl2",
}
# The keys a run name always shows; others appear only when they differ from `baseline`.
RUN_NAME_KEYS = ("model.name", "train.lr", "train.batch_size", "train.max_epochs")


def short_name(key: str) -> str:
    """The run-name prefix of a dotted config key."""
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    return "".join(part[0] for part in key.split(".")[-1].split("_") if part)


def tunable_keys(config: Config) -> list[str]:
    """The dotted keys of the groups that shape a trained model, in config order."""
    flat = flatten(config.model_dump(mode="json"))
    return [key for key in flat if key.split(".")[0] in TUNABLE_GROUPS]


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return "x".join(str(item) for item in value)
    return str(value)


def run_name(config: Config, baseline: Config | None = None) -> str:
    """`cnn-lr0.003-bs64-ep40`, plus `key<value>` for each tunable that differs from `baseline`
    (or that `baseline`'s model family does not have)."""
    flat = flatten(config.model_dump(mode="json"))
    keys = list(RUN_NAME_KEYS)
    if baseline is not None:
        base = flatten(baseline.model_dump(mode="json"))
        keys += [
            key
            for key in tunable_keys(config)
            if key not in keys and SHORT_NAMES.get(key) != "" and flat[key] != base.get(key)
        ]
    parts = []
    for key in keys:
        if key == "model.name":
            parts.append(MODEL_SHORT_NAMES.get(str(flat[key]), str(flat[key])))
        else:
            parts.append(f"{short_name(key)}{_format(flat[key])}")
    return "-".join(parts)
