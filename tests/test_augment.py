"""Batched augmentation, the progressive-resizing schedule, and early stopping that waits for it."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel

from flower_model.config import AugmentConfig
from flower_model.data.datamodule import (
    SIZE_STEP,
    augment_batch,
    augment_generator,
    first_full_size_epoch,
    resize_batch,
    train_crop_size,
)
from flower_model.errors import FlowerModelError
from flower_model.training.callbacks import EarlyStoppingFrom
from tests.conftest import make_config

IMAGE_SIZE = 32
FULL = 128


def _config(**changes) -> AugmentConfig:
    return make_config().train.augment.model_copy(update=changes)


def _images(count: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (count, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def test_augmentation_off_is_only_the_resize():
    images = _images()
    assert torch.equal(resize_batch(images, IMAGE_SIZE), images.float())
    resized = resize_batch(images, IMAGE_SIZE // 2)
    assert resized.shape == (4, 3, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    # Antialiased bilinear halving of a constant image stays that constant.
    flat = torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 77, dtype=torch.uint8)
    assert torch.allclose(resize_batch(flat, IMAGE_SIZE // 2), torch.tensor(77.0))


def test_flip_mirrors_the_same_crop():
    # The flip coin is drawn whatever its probability, so both calls crop the same windows.
    images = _images()
    plain = augment_batch(images, _config(hflip=0.0, color_jitter=0.0), augment_generator(0, 0, 0))
    flipped = augment_batch(
        images, _config(hflip=1.0, color_jitter=0.0), augment_generator(0, 0, 0)
    )
    assert plain.dtype == torch.float32
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-3, rtol=0)
    assert not torch.allclose(plain, images.float())  # it did crop


def test_same_key_same_batch_other_step_other_batch():
    images, config = _images(), _config()
    first = augment_batch(images, config, augment_generator(7, 3, 0))
    again = augment_batch(images, config, augment_generator(7, 3, 0))
    other = augment_batch(images, config, augment_generator(7, 4, 0))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 255


def test_out_size_resizes_the_crops():
    out = augment_batch(_images(), _config(), augment_generator(0, 0, 0), out_size=24)
    assert out.shape == (4, 3, 24, 24)


def test_schedule_ramps_from_min_size_to_the_full_size():
    config = _config(min_size=96, ramp_start=0.25, ramp_end=0.75)
    epochs = 40
    sizes = [train_crop_size(epoch, epochs, FULL, config) for epoch in range(epochs)]
    assert sizes[: epochs // 4 + 1] == [96] * (epochs // 4 + 1)
    assert sizes[epochs * 3 // 4 :] == [FULL] * (epochs - epochs * 3 // 4)
    assert sizes == sorted(sizes)  # never shrinks
    assert all(size % SIZE_STEP == 0 for size in sizes)
    assert len(set(sizes)) > 2  # it ramps, not jumps


@pytest.mark.parametrize("min_size", [FULL, FULL * 2])
def test_min_size_at_or_above_the_image_size_turns_it_off(min_size):
    config = _config(min_size=min_size)
    assert {train_crop_size(epoch, 10, FULL, config) for epoch in range(10)} == {FULL}


def test_zero_length_ramp_is_a_step():
    config = _config(min_size=64, ramp_start=0.5, ramp_end=0.5)
    assert [train_crop_size(epoch, 4, FULL, config) for epoch in range(4)] == [64, 64, FULL, FULL]


def test_ramp_end_before_start_is_a_config_error():
    with pytest.raises(FlowerModelError, match="ramp_end"):
        make_config(["train.augment.ramp_start=0.8", "train.augment.ramp_end=0.2"])


class _WorseningModel(BoringModel):
    """Lightning's demo model, logging a val/loss that gets worse every epoch."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))
        return super().validation_step(batch, batch_idx)


def _epochs_run(callback: EarlyStopping, tmp_path) -> int:
    trainer = pl.Trainer(
        max_epochs=10,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_WorseningModel())
    return trainer.current_epoch


def test_early_stopping_waits_for_full_size_crops(tmp_path):
    plain = _epochs_run(EarlyStopping(monitor="val/loss", patience=2), tmp_path)
    delayed = _epochs_run(EarlyStoppingFrom(5, monitor="val/loss", patience=2), tmp_path)
    assert plain == 3  # best at epoch 0, patience spent after epochs 1 and 2
    assert delayed == 8  # counting starts at epoch 5: best there, stops after 6 and 7


def test_first_full_size_epoch_matches_the_schedule():
    config = _config(min_size=96, ramp_start=0.25, ramp_end=0.75)
    first = first_full_size_epoch(40, FULL, config)
    assert train_crop_size(first, 40, FULL, config) == FULL
    assert train_crop_size(first - 1, 40, FULL, config) < FULL
    assert first_full_size_epoch(40, FULL, _config(min_size=FULL)) == 0
