"""DVC and Hydra plumbing: the stage runner (`stage`), the stage table (`stages/`, one module per
dvc.yaml stage), params composition (`compose`), DVC helpers (`fetch`, `dvc_outs`) and sweeps
(`multirun`, `slurm_sweep`). It sits above the library it runs (data, models, training, export,
evaluation, serving), which never imports it."""
