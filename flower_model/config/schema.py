"""The Pydantic schema of configs/, group by group.

Every class here mirrors one file of configs/ (`extra="forbid"`: a key the schema does not know is
an error, so a typo never silently falls back to a default).
"""

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from flower_model.config.project_paths import check_cache, check_inside, overlapping
from flower_model.errors import FlowerModelError

Probability = float
RGB_CHANNELS = 3
EFFICIENTNET_STAGES = 7  # block stages of EfficientNet(-Lite): what `freeze_stages` counts
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit: a larger one fails after the stage began its work
# A name that becomes one folder (data.name under paths.raw_dir): no separators, not `.`/`..`.
FOLDER_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$"
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class ConfigError(FlowerModelError):
    """A config that cannot be used; the message names the key, the value and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    """Folders relative to the project root; see config/project_paths.py for what they may name."""

    raw_dir: Path
    processed_dir: Path
    download_cache_dir: Path
    models_dir: Path
    reports_dir: Path
    features_dir: Path
    plots_dir: Path

    @field_validator(
        "raw_dir", "processed_dir", "models_dir", "reports_dir", "features_dir", "plots_dir"
    )
    @classmethod
    def _inside_project(cls, value: Path) -> Path:
        return check_inside(value)

    @field_validator("download_cache_dir")
    @classmethod
    def _cache_folder(cls, value: Path) -> Path:
        return check_cache(value)

    @model_validator(mode="after")
    def _folders_of_their_own(self) -> "PathsConfig":
        clash = overlapping(dict(self))
        if clash:
            raise ValueError(clash)
        return self


class ArchiveSource(Section):
    name: str = Field(min_length=1)
    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DataConfig(Section):
    name: str  # the folder under paths.raw_dir the photos are extracted to
    sources: list[ArchiveSource] = Field(min_length=1)
    max_archive_members: int = Field(gt=0)
    max_extracted_bytes: int = Field(gt=0)
    http_retries: int = Field(ge=1, le=50)
    http_backoff_s: float = Field(ge=0, le=60)
    http_timeout_s: float = Field(gt=0, le=600)
    chunk_bytes: int = Field(ge=1024)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        if not re.fullmatch(FOLDER_NAME, value):
            raise ValueError(
                "becomes a folder under paths.raw_dir: use letters, digits, '_', '-', '.' "
                "(no '/', not '.' or '..'), e.g. my_photos"
            )
        return value


class PreprocessConfig(Section):
    image_size: int = Field(ge=16, le=1024)
    resize_mode: Literal["crop", "pad"]
    pad_value: int = Field(ge=0, le=255)
    val_fraction: Probability = Field(gt=0, lt=1)
    test_fraction: Probability = Field(gt=0, lt=1)
    seed: Seed
    max_images_per_class: int | None = Field(default=..., ge=3)
    max_image_pixels: int = Field(gt=0)
    num_workers: int = Field(ge=0, le=64)
    label_reviews_dir: Path  # <data.name>.csv in it: the committed review decisions (reviews.py)
    reviews_in_training: bool  # train/val reviews change the training data (test: never)

    @field_validator("label_reviews_dir")
    @classmethod
    def _reviews_inside(cls, value: Path) -> Path:
        return check_inside(value, output=False)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "PreprocessConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no "
                "training data; make their sum smaller than 1"
            )
        return self


class ModelBase(Section):
    """The keys every model family has.

    `name` is checked against the model registry (flower_model/models/registry.py) lazily, by
    `registry.check_model` (first thing in training) and `registry.create_model`, in one line naming
    `model.name` and the registered names. Not here: the registry is filled by importing the
    family modules, which import torch, and every stage validates the whole config, download and
    preprocess included (a second list of names here is what drifted from the registry before).
    """

    family: str  # each family's class narrows it to its own tag
    name: str = Field(min_length=1)
    dropout: Probability = Field(ge=0, lt=1)
    input_mean: list[float] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)
    input_std: list[float] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)

    @model_validator(mode="after")
    def _std_positive(self) -> "ModelBase":
        if min(self.input_std) <= 0:
            raise ValueError(f"model.input_std={self.input_std} must be positive (pixel units)")
        return self


class SmallCnnConfig(ModelBase):
    """models/small_cnn.py: a compact ResNet trained from scratch (no pretrained weights)."""

    family: Literal["small_cnn"] = "small_cnn"
    widths: list[PositiveInt] = Field(min_length=1)
    blocks: list[PositiveInt] = Field(min_length=1)
    stem_stride: int = Field(ge=1, le=4)
    stem_pool: bool

    @model_validator(mode="after")
    def _one_width_per_stage(self) -> "SmallCnnConfig":
        if len(self.widths) != len(self.blocks):
            raise ValueError(
                f"model.widths={self.widths} and model.blocks={self.blocks} need one entry per "
                "stage each; give them the same length"
            )
        return self


class PretrainedModel(ModelBase):
    """A family that can start from ImageNet weights."""

    pretrained: bool


class TorchvisionConfig(PretrainedModel):
    """models/torchvision_models.py: torchvision architectures, optionally ImageNet weights."""

    family: Literal["torchvision"] = "torchvision"


class EfficientNetLiteConfig(PretrainedModel):
    """models/efficientnet_lite.py: timm's EfficientNet-Lite with Google's ImageNet weights."""

    family: Literal["efficientnet_lite"] = "efficientnet_lite"
    freeze_stages: int = Field(ge=0, le=EFFICIENTNET_STAGES)

    @model_validator(mode="after")
    def _freeze_needs_weights(self) -> "EfficientNetLiteConfig":
        if self.freeze_stages and not self.pretrained:
            raise ValueError(
                "model.freeze_stages > 0 would fix random weights; set model.pretrained=true "
                "or model.freeze_stages=0"
            )
        return self


# One config class per family, picked by `model.family` (each configs/model/*.yaml sets it).
ModelConfig = Annotated[
    SmallCnnConfig | TorchvisionConfig | EfficientNetLiteConfig, Field(discriminator="family")
]
MODEL_FAMILIES: tuple[type[ModelBase], ...] = get_args(get_args(ModelConfig)[0])
FAMILY_NAMES = tuple(family.model_fields["family"].default for family in MODEL_FAMILIES)


class AugmentConfig(Section):
    enabled: bool
    scale_min: Probability = Field(gt=0, le=1)
    hflip: Probability = Field(ge=0, le=1)
    color_jitter: float = Field(ge=0, le=1)
    min_size: int = Field(ge=16, le=4096)
    ramp_start: Probability = Field(ge=0, le=1)
    ramp_end: Probability = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ramp_ordered(self) -> "AugmentConfig":
        if self.ramp_end < self.ramp_start:
            raise ValueError(
                f"train.augment.ramp_end ({self.ramp_end}) is before ramp_start "
                f"({self.ramp_start}); set ramp_end >= ramp_start"
            )
        return self


class CheckpointConfig(Section):
    monitor: Literal["val/loss", "val/acc", "val/f1"]
    mode: Literal["min", "max"]
    every_n_epochs: int = Field(ge=1)


class EarlyStoppingConfig(Section):
    enabled: bool
    patience: int = Field(ge=1)


class TrainConfig(Section):
    seed: Seed
    max_epochs: int = Field(ge=1, le=10000)
    batch_size: int = Field(ge=1, le=4096)
    eval_batch_size: int = Field(ge=1, le=4096)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1)
    momentum: float = Field(ge=0, lt=1)
    scheduler: Literal["onecycle", "cosine"]
    warmup_epochs: int = Field(ge=0)
    label_smoothing: Probability = Field(ge=0, lt=1)
    channels_last: bool
    compile: bool
    num_workers: int = Field(ge=0, le=64)
    pin_memory: bool
    augment: AugmentConfig
    checkpoint: CheckpointConfig
    early_stopping: EarlyStoppingConfig
    limit_train_batches: float | int = Field(gt=0)
    backbone_lr_scale: float = Field(gt=0, le=1)
    probe_steps: int = Field(ge=0, le=100000)
    freeze_bn_stats: bool
    probe_lr: float = Field(gt=0, le=10)
    ema_decay: float = Field(ge=0, lt=1)
    zero_head: bool = False

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than "
                f"max_epochs={self.max_epochs}; lower train.warmup_epochs or raise train.max_epochs"
            )
        return self


class TrainerConfig(Section):
    accelerator: Literal["auto", "cpu", "gpu"]
    devices: int = Field(ge=1)
    strategy: Literal["auto", "ddp"]
    num_nodes: int = Field(ge=1)
    precision: Literal["auto", "bf16-mixed", "32-true", "16-mixed"]
    deterministic: bool
    log_every_n_steps: int = Field(ge=1)


class ExportConfig(Section):
    opset: int = Field(ge=13, le=23)
    dynamo: bool
    parity_atol: float = Field(gt=0, le=1)
    parity_min_top1_agreement: Probability = Field(ge=0, le=1)
    parity_images: int = Field(ge=1)
    calibration_images: int = Field(ge=1)
    int8_reduce_range: bool


class TrtConfig(Section):
    required: bool
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    min_batch: int = Field(ge=1)
    opt_batch: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    workspace_mib: int = Field(ge=1)
    timing_cache: Path
    parity_atol: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _profile_is_ordered(self) -> "TrtConfig":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, "
                f"{self.opt_batch}, {self.max_batch}"
            )
        return self


class EvaluateConfig(Section):
    batch_sizes: list[PositiveInt] = Field(min_length=1)
    warmup_iterations: int = Field(ge=0)
    timed_iterations: int = Field(ge=1)
    bootstrap_samples: int = Field(ge=10)
    seed: Seed
    baseline_predictions: Path | None
    gallery_size: int = Field(ge=1, le=100)


class MlflowConfig(Section):
    tracking_uri: str = Field(min_length=1)
    experiment_name: str = Field(min_length=1)
    registered_model_name: str = Field(min_length=1)
    connect_timeout_s: float = Field(gt=0, le=300)
    request_timeout_s: int = Field(gt=0, le=300)
    max_retries: int = Field(ge=0, le=10)
    retry_backoff_s: int = Field(ge=0, le=10)
    register_model: Literal["auto", "always", "never"]


class ServeConfig(Section):
    model_name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    http_port: int = Field(ge=1, le=65535)
    grpc_port: int = Field(ge=1, le=65535)
    metrics_port: int = Field(ge=1, le=65535)
    max_batch_size: int = Field(ge=1)
    max_queue_delay_us: int = Field(ge=0)
    instances: int = Field(ge=1)
    ort_spinning: bool
    ort_threads: int = Field(ge=0)
    # The native onnxruntime backend's documented model parameters (r24.10 onnxruntime.cc),
    # besides intra_op_thread_count, which is ort_threads.
    ort_backend: dict[
        Literal[
            "execution_mode", "inter_op_thread_count", "enable_mem_arena", "enable_mem_pattern"
        ],
        int | bool,
    ]
    flavour: Literal["container", "python"]
    int8: bool
    max_restarts: int = Field(ge=0)
    restart_reset_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ports_differ(self) -> "ServeConfig":
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port}
        ports["metrics_port"] = self.metrics_port
        if len(set(ports.values())) < len(ports):
            shown = ", ".join(f"serve.{key}={port}" for key, port in ports.items())
            raise ValueError(f"the three ports must differ, got {shown}; give each its own")
        return self


class LabelIssuesConfig(Section):
    """configs/label_issues: the label-issue search (evaluation/label_issues.py)."""

    backbone: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    input_mean: list[float] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)
    input_std: list[PositiveFloat] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)
    batch_size: int = Field(ge=1, le=1024)
    folds: int = Field(ge=2, le=20)
    seed: Seed
    regularization: float = Field(gt=0)
    filter_by: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
    ]
    gallery_size: int = Field(ge=1, le=100)


class SlurmConfig(Section):
    timeout_min: int = Field(ge=1)
    nodes: int = Field(ge=1)
    tasks_per_node: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    cpus_per_task: int = Field(ge=1)
    mem_gb: float = Field(gt=0)
    partition: str | None


class Config(Section):
    paths: PathsConfig
    data: DataConfig
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    trainer: TrainerConfig
    export: ExportConfig
    trt: TrtConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    serve: ServeConfig
    slurm: SlurmConfig
    label_issues: LabelIssuesConfig
    resume: str | None
