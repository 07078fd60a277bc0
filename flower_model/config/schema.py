"""The Pydantic schema of configs/, group by group.

Every class here mirrors one file of configs/ (`extra="forbid"`: a key the schema does not know is
an error, so a typo never silently falls back to a default).
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flower_model.errors import FlowerModelError

Probability = float
MODEL_NAMES = (
    "small_cnn",
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
# Families with block stages that `model.freeze_stages` can fix (see models/efficientnet_lite.py).
FREEZABLE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RGB_CHANNELS = 3
FREEZABLE_STAGES = 7  # EfficientNet block stages


class ConfigError(FlowerModelError):
    """A config that cannot be used; the message names the key, the value and the fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    raw_dir: Path
    processed_dir: Path
    download_cache_dir: Path
    models_dir: Path
    reports_dir: Path
    plots_dir: Path


class ArchiveSource(Section):
    name: str = Field(min_length=1)
    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DataConfig(Section):
    name: str = Field(min_length=1)
    sources: list[ArchiveSource] = Field(min_length=1)
    max_archive_members: int = Field(gt=0)
    max_extracted_bytes: int = Field(gt=0)
    http_retries: int = Field(ge=1, le=50)
    http_backoff_s: float = Field(ge=0, le=60)
    http_timeout_s: float = Field(gt=0, le=600)
    chunk_bytes: int = Field(ge=1024)


class PreprocessConfig(Section):
    image_size: int = Field(ge=16, le=1024)
    resize_mode: Literal["crop", "pad"]
    pad_value: int = Field(ge=0, le=255)
    val_fraction: Probability = Field(gt=0, lt=1)
    test_fraction: Probability = Field(gt=0, lt=1)
    seed: int = Field(ge=0)
    max_images_per_class: int | None = Field(default=..., ge=3)
    max_image_pixels: int = Field(gt=0)
    num_workers: int = Field(ge=0, le=64)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "PreprocessConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no "
                "training data; make their sum smaller than 1"
            )
        return self


class ModelConfig(Section):
    name: Literal[MODEL_NAMES]  # type: ignore[valid-type]
    pretrained: bool
    widths: list[int]
    blocks: list[int]
    stem_stride: int = Field(ge=1, le=4)
    stem_pool: bool
    dropout: Probability = Field(ge=0, lt=1)
    input_mean: list[float] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)
    input_std: list[float] = Field(min_length=RGB_CHANNELS, max_length=RGB_CHANNELS)
    freeze_stages: int = Field(ge=0, le=FREEZABLE_STAGES)

    @model_validator(mode="after")
    def _layout_matches_family(self) -> "ModelConfig":
        if min(self.input_std) <= 0:
            raise ValueError(f"model.input_std={self.input_std} must be positive (pixel units)")
        if self.freeze_stages and self.name not in FREEZABLE_MODELS:
            raise ValueError(
                f"{self.name} cannot freeze stages; set model.freeze_stages=0 "
                f"(stages can be frozen in {list(FREEZABLE_MODELS)})"
            )
        if self.freeze_stages and not self.pretrained:
            raise ValueError(
                "model.freeze_stages > 0 would fix random weights; set model.pretrained=true "
                "or model.freeze_stages=0"
            )
        if self.name == "small_cnn":
            if self.pretrained:
                raise ValueError("small_cnn has no pretrained weights; set model.pretrained=false")
            if not self.widths or len(self.widths) != len(self.blocks):
                raise ValueError(
                    f"small_cnn needs widths and blocks of the same non-zero length, got "
                    f"widths={self.widths} blocks={self.blocks}"
                )
            if min(self.widths) < 1 or min(self.blocks) < 1:
                raise ValueError("small_cnn widths and blocks must all be >= 1")
        elif self.widths or self.blocks:
            raise ValueError(f"{self.name} takes no widths/blocks; set them to []")
        return self


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
    seed: int = Field(ge=0)
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
                f"max_epochs={self.max_epochs}"
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
    batch_sizes: list[int] = Field(min_length=1)
    warmup_iterations: int = Field(ge=0)
    timed_iterations: int = Field(ge=1)
    bootstrap_samples: int = Field(ge=10)
    seed: int = Field(ge=0)
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
    max_restarts: int = Field(ge=0)


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
    resume: str | None
