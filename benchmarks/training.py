"""Benchmark: the default fine-tune's training step fed by the real data path vs synthetic batches.

    python benchmarks/training.py [--sizes 160,224] [--steps 10] [--warmup 3] [--rounds 2]
                                  [--processed data/processed] [--threads N] [OVERRIDE ...]

One process, the same model, threads and Lightning loop for every row. For each training crop
size it fits `warmup + steps` optimisation steps of the default recipe (configs/, plus any Hydra
OVERRIDE such as `train.num_workers=1`), fed by:
- real: FlowerDataModule over the preprocess arrays, augmentation on (the path `train` uses);
- no-augment: the same loader with `train.augment.enabled=false` (the loader alone);
- synthetic: float batches of that size already in memory (no loader, no augmentation).
Paths alternate within each round, so a shared machine's load hits them alike. It prints each
path's images/s (median over every timed step of every round: a load spike moves a median
less than a mean), real / synthetic, the load average, and the data-wait
share: the time from one step's end to the next step's start (fetch, transfer and
`on_after_batch_transfer`, where augmentation runs) over the whole step time.
Goals (issue 28): real >= 95% of synthetic at 224 px, data wait < 5%.
Needs `flower-model preprocess` (data/processed). Compare figures within one run only.
"""

import os
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks.serving import cpu_flags
from flower_model.config import Config, compose_raw, validate
from flower_model.data.datamodule import FlowerDataModule
from flower_model.training.console import quiet_lightning_notices
from flower_model.training.module import FlowerClassifier

PATHS = ("real", "no-augment", "synthetic")
PIXEL_MAX = 255.0
GOAL_SHARE, GOAL_WAIT = 0.95, 0.05


class StepClock(pl.Callback):
    """Wait before and compute of every training step (the same split as training's StepTimer)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.computes: list[float] = []
        self.images: list[int] = []
        self._last_end = self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        self.waits.append(self._start - self._last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_end = time.perf_counter()
        self.computes.append(self._last_end - self._start)
        self.images.append(len(batch[1]))


def _config(root: Path, processed: str, size: int, path: str, overrides: list[str]) -> Config:
    """The default recipe with every training crop at `size` (no progressive resizing)."""
    fixed = [
        f"paths.processed_dir={processed}",
        f"train.augment.min_size={size}",
        "train.augment.ramp_start=1.0",
        "train.augment.ramp_end=1.0",
        "trainer.accelerator=cpu",
        *overrides,
    ]
    if path == "no-augment":
        fixed.append("train.augment.enabled=false")
    return validate(compose_raw(root, fixed))


class InMemoryBatches:
    """Float batches made before the fit; one iterable (a plain list would be read by Lightning
    as several dataloaders)."""

    def __init__(self, config: Config, size: int, batches: int, classes: int) -> None:
        generator = torch.Generator().manual_seed(config.train.seed)
        shape = (config.train.batch_size, 3, size, size)
        self.batches = [
            (
                torch.rand(shape, generator=generator) * PIXEL_MAX,
                torch.randint(0, classes, (config.train.batch_size,), generator=generator),
            )
            for _ in range(batches)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def measure(root: Path, processed: str, size: int, path: str, steps: int, warmup: int, overrides):
    """(images/s, data-wait share) of each of `steps` timed steps after `warmup` untimed ones."""
    config = _config(root, processed, size, path, overrides)
    pl.seed_everything(config.train.seed)
    datamodule = FlowerDataModule(root / config.paths.processed_dir, config.train)
    module = FlowerClassifier(
        model=config.model.model_dump(mode="json"),
        train=config.train.model_dump(mode="json"),
        class_names=datamodule.class_names,
        steps_per_epoch=datamodule.steps_per_epoch(1),
    )
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        deterministic=config.trainer.deterministic,
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        callbacks=[clock],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if path == "synthetic":
        batches = InMemoryBatches(config, size, warmup + steps, len(datamodule.class_names))
        trainer.fit(module, train_dataloaders=batches)
    else:
        trainer.fit(module, datamodule=datamodule)
    timed = zip(clock.images[warmup:], clock.waits[warmup:], clock.computes[warmup:])
    return [(images / (wait + compute), wait / (wait + compute)) for images, wait, compute in timed]


def _settings(overrides: list[str], root: Path) -> str:
    config = validate(compose_raw(root, list(overrides)))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"torch {torch.__version__}: intra-op threads {torch.get_num_threads()}, inter-op "
        f"{torch.get_num_interop_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"usable cores {affinity}; train.num_workers={config.train.num_workers}, batch "
        f"{config.train.batch_size}, channels_last={config.train.channels_last}, "
        f"deterministic={config.trainer.deterministic}"
    )


def _listed(value) -> list:
    """fire gives `--sizes 224` as an int, `--sizes 160,224` as a tuple, `--paths real` a str."""
    if isinstance(value, str):
        return value.split(",")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def main(
    *overrides: str,
    sizes: str | int | tuple = (160, 224),
    steps: int = 10,
    warmup: int = 3,
    rounds: int = 2,
    processed: str = "data/processed",
    threads: int = 0,
    paths: str | tuple = PATHS,
) -> None:
    """Print the table; `threads` > 0 sets torch's intra-op threads first (0: torch's choice);
    `paths` picks some of real, no-augment, synthetic (synthetic is always measured)."""
    quiet_lightning_notices()
    if threads:
        torch.set_num_threads(threads)
    root = Path.cwd()
    size_list = [int(size) for size in _listed(sizes)]
    chosen = {str(path) for path in _listed(paths)} | {"synthetic"}
    path_list = [path for path in PATHS if path in chosen]
    print(f"host: {cpu_flags()}; load average {os.getloadavg()[0]:.1f} at the start")
    print(_settings(list(overrides), root))
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}  # per step
    for _ in range(rounds):
        for size in size_list:
            for path in path_list:
                figures = measure(root, processed, size, path, steps, warmup, list(overrides))
                results.setdefault((size, path), []).extend(figures)
    print(
        f"medians over {rounds} rounds x {steps} timed steps (after {warmup} warm-up steps); "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'size':>5} {'path':<11} {'images/s':>9} {'of synthetic':>13} {'data wait':>10}")
    for size in size_list:
        synthetic = statistics.median(rate for rate, _ in results[(size, "synthetic")])
        for path in path_list:
            rate = statistics.median(rate for rate, _ in results[(size, path)])
            wait = statistics.median(share for _, share in results[(size, path)])
            print(f"{size:>5} {path:<11} {rate:>9.1f} {rate / synthetic:>12.0%} {wait:>10.1%}")
    print(f"goals: real >= {GOAL_SHARE:.0%} of synthetic at full size, wait < {GOAL_WAIT:.0%}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
