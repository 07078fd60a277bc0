"""Hydra multirun over the `train` stage, for sweeps past one machine.

    python -m flower_model.sweep --multirun train.lr=0.001,0.003 model=small_cnn,resnet18
    python -m flower_model.sweep --multirun hydra/launcher=slurm train.lr=0.001,0.003

The basic (sequential) launcher is the default; `hydra/launcher=slurm` submits one Slurm
job per combination (configs/hydra/launcher/submitit_slurm.yaml). Each job trains on the existing
preprocess outputs and writes its models/reports/plots under its own sweep folder
(multirun/<job number>/), never over the pipeline's outs. `dvc exp run --queue` (see README) is
the DVC-tracked way to sweep on one machine.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flower_model.config import validate
from flower_model.constants import CONFIG_DIR_NAME, CONFIG_NAME

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / CONFIG_DIR_NAME)


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base=None)
def sweep_job(composed: DictConfig) -> float:
    """One combination: train with the job's config; return the best checkpoint's monitored
    validation metric (Hydra logs it; the test split is only for the final model)."""
    from flower_model.training.train import train_model

    root = Path(hydra.utils.get_original_cwd())
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    raw = OmegaConf.to_container(composed, resolve=True)
    for key in ("models_dir", "reports_dir", "plots_dir"):
        raw["paths"][key] = str(job_dir / Path(raw["paths"][key]).name)
    config = validate(raw)
    report = train_model(config, root, raw)
    return float(report["best"][config.train.checkpoint.monitor]) if report else 0.0


def main() -> None:
    sweep_job()


if __name__ == "__main__":
    main()
