#!/usr/bin/env bash
# CI's reproduction check and model report, one script for .github/workflows/reproduce.yaml and
# tests/test_ci_reproduce.py, so what the test proves is what runs on the forge. Run it in a
# checkout (git, with BASE fetched) whose environment has `dvc` and `flower-model`.
#
# usage: scripts/ci_reproduce.sh REMOTE_URL [BASE]
#   REMOTE_URL  the DVC remote that holds BASE's outs: s3://bucket/path (credentials from
#               AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a non-AWS endpoint from
#               DVC_S3_ENDPOINT) or a folder
#   BASE        what the report compares the workspace with (default main)
# environment:
#   CI_EXPECT_UNCHANGED=1  fail when any stage is out of date before running (a push to main:
#                          dvc.lock must be committed in step with the code and params)
#   CI_REPORT_DIR          where report.md and reran.txt are written (default ci-report)
# Steps:
#   1. REMOTE_URL becomes the default remote `ci`, in .dvc/config.local (never committed)
#   2. `dvc pull --allow-missing`: every out of the committed dvc.lock that the remote holds
#   3. the stages out of date (`dvc repro --dry`); with CI_EXPECT_UNCHANGED=1 any is a failure
#   4. `dvc repro --pull --allow-missing`: reruns only what is out of date
#   5. afterwards `dvc status` is clean (the rerun converged, every out is here)
#   6. `flower-model report BASE workspace` -> $CI_REPORT_DIR/report.md, with the stages rerun
# Exits non-zero naming the step that failed.
set -euo pipefail
remote_url=${1:?usage: scripts/ci_reproduce.sh REMOTE_URL [BASE]}
base=${2:-main}
report_dir=${CI_REPORT_DIR:-ci-report}
mkdir -p "$report_dir"
fail() { echo "ci_reproduce: FAILED at step $1: ${*:2}" >&2; exit 1; }
step() { echo "== ci_reproduce step $1: $2"; }
# The stages a `dvc repro` log ran (or, with --dry, would run), one line each.
stages_in() { grep -oE "Running stage '[a-z_]+'" "$1" | sed -E "s/Running stage '(.*)'/\1/" || true; }

step 1 "DVC remote ci = $remote_url"
dvc remote add --local --force --default ci "$remote_url" >/dev/null
if [ -n "${DVC_S3_ENDPOINT:-}" ]; then
  dvc remote modify --local ci endpointurl "$DVC_S3_ENDPOINT"
fi

step 2 "dvc pull --allow-missing"
dvc pull --allow-missing >"$report_dir/pull.log" 2>&1 \
  || { tail -20 "$report_dir/pull.log"; fail 2 "dvc pull failed (log above): check the remote and credentials"; }

step 3 "stages out of date before running"
dvc repro --dry >"$report_dir/dry.log" 2>&1 \
  || { cat "$report_dir/dry.log"; fail 3 "dvc repro --dry failed (log above)"; }
stale=$(stages_in "$report_dir/dry.log" | paste -sd ' ' -)
echo "out of date: ${stale:-none}"
if [ "${CI_EXPECT_UNCHANGED:-0}" = 1 ] && [ -n "$stale" ]; then
  fail 3 "dvc.lock is not in step with the code and params (would rerun: $stale);" \
    "run \`dvc repro\` and commit dvc.lock"
fi

step 4 "dvc repro --pull --allow-missing"
dvc repro --pull --allow-missing >"$report_dir/repro.log" 2>&1 \
  || { tail -40 "$report_dir/repro.log"; fail 4 "dvc repro failed (log above)"; }
stages_in "$report_dir/repro.log" >"$report_dir/reran.txt"
echo "stages run: $(wc -l <"$report_dir/reran.txt")"

step 5 "dvc status is clean after the run"
dvc status --quiet >/dev/null 2>&1 \
  || fail 5 "dvc status is not clean after dvc repro: $(dvc status 2>&1 | tr '\n' ' ')(an out missing from the remote, or a stage that is not deterministic)"

step 6 "flower-model report $base workspace"
flower-model report "$base" workspace --output "$report_dir/report.md" \
  || fail 6 "flower-model report failed (its error above)"
{
  echo
  echo "### Stages run by this CI job"
  echo
  if [ -s "$report_dir/reran.txt" ]; then paste -sd ' ' "$report_dir/reran.txt"; else echo "none"; fi
} >>"$report_dir/report.md"
echo "report: $report_dir/report.md"
