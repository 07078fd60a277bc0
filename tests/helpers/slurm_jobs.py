"""Functions that Slurm jobs run (submitit pickles them by module name, so they live in an
importable module, not in a test file)."""

import os
from pathlib import Path


def where_am_i() -> dict:
    import submitit

    environment = submitit.JobEnvironment()
    return {"rank": environment.global_rank, "tasks": environment.num_tasks}


def train_in_task(project: str, overrides: list[str]) -> int:
    """One Slurm task: run the train stage the way DVC would, from the project root; return this
    task's rank."""
    import submitit

    from flower_model.config import load_config
    from flower_model.pipeline.stage import reads
    from pipeline_stages import train

    root = Path(project)
    os.chdir(root)
    config = load_config(root, overrides)
    train.run(config, root, reads("train", config, root))
    return submitit.JobEnvironment().global_rank
