#!/usr/bin/env bash
# Local MLflow tracking server for `make repro`: sqlite + artifacts under .mlflow/, loopback only.
#   scripts/mlflow_server.sh ensure   start one unless a server already answers (left running)
#   scripts/mlflow_server.sh stop     stop the one this script started
# MLFLOW_PORT (default 8080) must match mlflow.tracking_uri in configs/mlflow/default.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
host=127.0.0.1
port=${MLFLOW_PORT:-8080}
url="http://$host:$port"
state=.mlflow
python=.venv/bin/python
wait_s=90

answers() {
  "$python" - "$url" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
except Exception:
    sys.exit(1)
PY
}

case "${1:-ensure}" in
  ensure)
    if answers; then
      echo "mlflow: a server already answers at $url"
      exit 0
    fi
    mkdir -p "$state/artifacts"
    # Job execution off: starts in seconds and uses a quarter of the memory.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup .venv/bin/mlflow server \
      --host "$host" --port "$port" \
      --backend-store-uri "sqlite:///$PWD/$state/mlflow.db" \
      --artifacts-destination "$PWD/$state/artifacts" \
      >"$state/server.log" 2>&1 </dev/null &
    echo $! >"$state/server.pid"
    for _ in $(seq 1 "$wait_s"); do
      if answers; then
        echo "mlflow: started at $url (pid $(cat "$state/server.pid"), log $state/server.log)"
        exit 0
      fi
      sleep 1
    done
    echo "mlflow: no answer from $url after $wait_s s; see $state/server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$state/server.pid" ]; then
      kill -TERM -- "-$(cat "$state/server.pid")" 2>/dev/null || kill -TERM "$(cat "$state/server.pid")" 2>/dev/null || true
      rm -f "$state/server.pid"
      echo "mlflow: stopped"
    fi
    ;;
  *)
    echo "usage: $0 ensure|stop" >&2
    exit 2
    ;;
esac
