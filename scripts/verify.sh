#!/usr/bin/env bash
# make verify: prove the pipeline reproduces, on a scratch clone with a small, fast config
# (the try-it preset experiment=quick: 250 photos, 2 epochs). Steps:
#   1. dvc repro runs every stage
#   2. a second dvc repro runs nothing and dvc status is clean
#   3. dvc repro -f of download and preprocess reproduces byte-identical outs (dvc.lock unchanged)
#   4. dvc exp run -S train.lr=... reruns train -> evaluate only
#   5. a forced retrain gives identical metrics (same seed, CPU)
#   6. dvc plots diff HEAD <experiment> draws every plot offline, in headless Chromium
#   7. flower-model multirun skips the combination step 4 already ran, queues and runs the other,
#      and started again runs nothing
#   8. running a combination that already ran restores every stage from DVC's run cache
#   9. (root, or a Slurm cluster already up) the same sweep command with --launcher slurm on a
#      local single-node cluster: two combinations as two Slurm jobs (in sacct), both in
#      `dvc exp show` and MLflow, started again nothing submitted; a combination that fails in
#      training is reported with its job id and log, and the command exits non-zero
# Exits non-zero with a message naming the step and stage that broke. KEEP_VERIFY=1 keeps the
# scratch clone for a look afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
mlflow_pid=""
cleanup() {
  if [ -n "$mlflow_pid" ]; then kill -TERM -- "-$mlflow_pid" 2>/dev/null || kill "$mlflow_pid" 2>/dev/null || true; fi
  if [ "${KEEP_VERIFY:-0}" = 1 ]; then echo "verify: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "verify: FAILED at step $1: $2" >&2; exit 1; }
step() { echo; echo "== verify step $1: $2"; }
ran_stages() { grep -oE "Running stage '[a-z_]+'" "$1" | sed -E "s/Running stage '(.*)'/\1/" | sort | tr '\n' ' '; }

# The clone runs its own code (PYTHONPATH) with this checkout's environment; ../shared must sit
# beside it like it sits beside this checkout.
git clone -q "$root" "$work/flower-model"
ln -s "$(cd "$root/.." && pwd)/shared" "$work/shared"
cd "$work/flower-model"
export PATH="$root/.venv/bin:$PATH" PYTHONPATH="$work/flower-model"
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p .mlflow
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$PWD/.mlflow/mlflow.db" --artifacts-destination "$PWD/.mlflow/artifacts" \
  >.mlflow/server.log 2>&1 </dev/null &
mlflow_pid=$!
for _ in $(seq 1 90); do
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
  sleep 1
done
# The try-it preset (experiment=quick) and this run's tracking server, in configs/ so
# `dvc exp run` composes them too.
sed -i -e 's/^  - experiment: null/  - experiment: quick/' configs/config.yaml
grep -q '^  - experiment: quick' configs/config.yaml || fail 0 "configs/config.yaml has no experiment default"
sed -i "s|^tracking_uri: .*|tracking_uri: http://127.0.0.1:$port # verify run|" configs/mlflow/default.yaml
flower-model compose >/dev/null
git -c user.name=verify -c user.email=verify@localhost commit -qam "verify: small config"
# Every stage dvc.yaml declares, as `ran_stages` prints them (sorted, space-separated).
all="$(dvc stage list --name-only | sort | tr '\n' ' ')"

step 1 "dvc repro runs every stage in dvc.yaml"
dvc repro >repro1.log 2>&1 || { tail -30 repro1.log; fail 1 "dvc repro failed (log above)"; }
[ "$(ran_stages repro1.log)" = "$all" ] || fail 1 "expected stages '$all', ran '$(ran_stages repro1.log)'"
cp dvc.lock lock.after-repro
cp reports/train.json train.after-repro.json
git -c user.name=verify -c user.email=verify@localhost commit -qam "verify: lock of the small run"

step 2 "a second dvc repro runs nothing; dvc status is clean"
dvc repro >repro2.log 2>&1 || fail 2 "dvc repro failed"
[ -z "$(ran_stages repro2.log)" ] || fail 2 "stages reran without a change: $(ran_stages repro2.log)"
dvc status --quiet || fail 2 "dvc status is not clean: $(dvc status)"

step 3 "forced download + preprocess reproduce byte-identical outs"
dvc repro -f -s download >repro3.log 2>&1 || fail 3 "stage download failed"
dvc repro -f -s preprocess >>repro3.log 2>&1 || fail 3 "stage preprocess failed"
for stage in download preprocess; do
  python - "$stage" <<'PY' || fail 3 "stage $stage: outs differ from the first run (see above)"
import sys, yaml
stage = sys.argv[1]
before = yaml.safe_load(open("lock.after-repro"))["stages"][stage]["outs"]
after = yaml.safe_load(open("dvc.lock"))["stages"][stage]["outs"]
for old, new in zip(before, after):
    if old != new:
        print(f"{old['path']}: {old.get('md5')} -> {new.get('md5')}")
        sys.exit(1)
PY
done
dvc status --quiet || fail 3 "forcing download/preprocess left later stages out of date: $(dvc status)"

step 4 "dvc exp run -S train.lr=0.002 reruns train -> evaluate only"
dvc exp run -S train.lr=0.002 >exp.log 2>&1 || { tail -30 exp.log; fail 4 "dvc exp run failed"; }
expected="build_trt evaluate export_onnx train "
[ "$(ran_stages exp.log)" = "$expected" ] || fail 4 "expected '$expected', ran '$(ran_stages exp.log)'"
git checkout -q -- . && dvc checkout -q >/dev/null || fail 4 "cannot restore the workspace after the experiment"
flower-model compose --check >/dev/null || fail 4 "params.yaml and configs/ disagree after the experiment"

step 5 "a forced retrain on CPU gives identical metrics"
dvc repro -f -s train >repro5.log 2>&1 || fail 5 "stage train failed"
python - <<'PY' || fail 5 "stage train: metrics differ between two runs of the same config"
import json, sys
first, second = (json.load(open(name)) for name in ("train.after-repro.json", "reports/train.json"))
print("first :", first["best"]); print("second:", second["best"])
sys.exit(0 if first == second else 1)
PY

step 6 "dvc plots diff HEAD <experiment> draws every plot offline (headless Chromium)"
experiment=$(dvc exp ls --name-only | head -n 1)
[ -n "$experiment" ] || fail 6 "no experiment from step 4 in \`dvc exp ls\`"
dvc plots diff HEAD "$experiment" --html-template "$root/.tools/plots/template.html" \
  -o plots_diff >plots.log 2>&1 || { cat plots.log; fail 6 "dvc plots diff failed"; }
python "$root/scripts/plots_browser.py" plots_diff/index.html --screenshot plots_diff.png \
  || fail 6 "plots did not draw offline (evaluate/train plot definitions in dvc.yaml)"

step 7 "flower-model multirun: skips finished combinations, runs the rest, resumes to nothing"
flower-model multirun train.lr=0.002,0.001 --poll_s=2 >multirun1.log 2>&1 \
  || { cat multirun1.log; fail 7 "the sweep failed (dvc queue logs <name> shows the stage)"; }
cat multirun1.log
grep -q "1 of 2 already have results: skipped" multirun1.log \
  || fail 7 "train.lr=0.002 (step 4's experiment) was not recognised as done"
flower-model multirun train.lr=0.002,0.001 --poll_s=2 >multirun2.log 2>&1 || fail 7 "rerun failed"
grep -q "2 of 2 already have results: skipped" multirun2.log && ! grep -q "^queued" multirun2.log \
  || { cat multirun2.log; fail 7 "a finished sweep queued work again"; }

step 8 "a combination that already ran is restored from DVC's run cache, not recomputed"
dvc exp run -S train.lr=0.001 >exp8.log 2>&1 || { tail -30 exp8.log; fail 8 "dvc exp run failed"; }
[ -z "$(ran_stages exp8.log)" ] || fail 8 "stages recomputed: $(ran_stages exp8.log)"
for stage in train export_onnx build_trt evaluate; do
  grep -q "Stage '$stage' is cached - skipping run" exp8.log \
    || { cat exp8.log; fail 8 "stage $stage was not restored from the run cache"; }
done

step 9 "flower-model multirun --launcher slurm: the real pipeline as Slurm jobs, DVC experiments, MLflow runs"
if ! command -v sbatch >/dev/null; then
  echo "skipped: Slurm is not installed (\`sudo make ci-deps\` installs it)"
elif [ "$(id -u)" != 0 ] && ! sinfo -h >/dev/null 2>&1; then
  echo "skipped: no Slurm cluster up and not root (scripts/slurm_cluster.sh up needs root)"
else
  slurm_started=0
  if ! sinfo -h >/dev/null 2>&1; then
    "$root/scripts/slurm_cluster.sh" up >slurm.log 2>&1 || { cat slurm.log; fail 9 "the local Slurm cluster did not start"; }
    slurm_started=1
  fi
  # Two combinations at once on this machine (one CPU each, one epoch; the other resources are
  # configs/slurm/'s defaults), then one that composition accepts and the train stage refuses (a
  # checkpoint to resume that is not there).
  fits_here="slurm.cpus_per_task=1 slurm.timeout_min=20"
  sweep="train.lr=0.0015,0.0012 train.max_epochs=1 train.warmup_epochs=0 $fits_here"
  flower-model multirun $sweep --launcher slurm --poll_s=2 >slurm1.log 2>&1 \
    || { cat slurm1.log; fail 9 "the Slurm sweep failed"; }
  cat slurm1.log
  names=$(awk '$2 == "success" && ($3 == "0.0015" || $3 == "0.0012") {print $1}' slurm1.log)
  [ "$(echo "$names" | wc -w)" = 2 ] || fail 9 "expected 2 successful combinations, got: $names"
  jobs=$(grep -oE "submitted Slurm job [0-9]+" slurm1.log | grep -oE "[0-9]+$" | paste -sd, -)
  [ "$(sacct -n -X -P -o JobID -j "$jobs" | wc -l)" = 2 ] || fail 9 "sacct does not list both jobs ($jobs)"
  shown=$(dvc exp show --json)
  for name in $names; do
    echo "$shown" | grep -q "\"$name\"" || fail 9 "experiment $name is not in dvc exp show"
  done
  python - "$port" $names <<'PY' || fail 9 "an experiment of the sweep has no MLflow run (tag dvc_experiment)"
import sys
from mlflow import MlflowClient
client = MlflowClient(f"http://127.0.0.1:{sys.argv[1]}")
experiment = client.get_experiment_by_name("flower-model")
for name in sys.argv[2:]:
    runs = client.search_runs([experiment.experiment_id], f"tags.dvc_experiment = '{name}'")
    assert runs and runs[0].data.metrics.get("test/accuracy") is not None, (name, runs)
    print(f"MLflow run {runs[0].info.run_id} of experiment {name}: test/accuracy", runs[0].data.metrics["test/accuracy"])
PY
  flower-model multirun $sweep --launcher slurm --poll_s=2 >slurm2.log 2>&1 \
    || { cat slurm2.log; fail 9 "the rerun failed"; }
  grep -q "2 of 2 already have results: skipped" slurm2.log && ! grep -q "submitted" slurm2.log \
    || { cat slurm2.log; fail 9 "a finished Slurm sweep submitted work again"; }
  status=0
  flower-model multirun resume=models/absent.ckpt $fits_here --launcher slurm --poll_s=2 \
    >slurm3.log 2>&1 || status=$?
  cat slurm3.log
  [ "$status" != 0 ] || fail 9 "a sweep with a failed combination exited 0"
  grep -qE "^failed: .*resume=models/absent.ckpt.*: Slurm job [0-9]+: .*no checkpoint at .*; log .+" slurm3.log \
    || fail 9 "the failed combination was not reported with its Slurm job id and log"
  if [ "$slurm_started" = 1 ]; then "$root/scripts/slurm_cluster.sh" down >>slurm.log 2>&1 || true; fi
fi

echo
echo "verify: all 9 steps passed"
