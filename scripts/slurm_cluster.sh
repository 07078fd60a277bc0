#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests, CI and trying the Slurm path on a
# laptop: munged, MariaDB + slurmdbd (accounting: without it sacct fails and submitit cannot see
# a job's state), slurmctld and slurmd, all on loopback, no systemd or cgroups.
#   scripts/slurm_cluster.sh install  install the Debian packages (apt-get; only this installs)
#   scripts/slurm_cluster.sh up       start what is not running, wait until the node is idle
#                                     (idempotent; refuses, naming `install`, if packages miss)
#   scripts/slurm_cluster.sh down     stop every daemon by its pid file (idempotent)
#   scripts/slurm_cluster.sh status   `up` or `down`, and sinfo's view of the node
# Needs root (apt-get, daemons, /etc/slurm). The node gets this host's CPUs and its memory minus
# RESERVED_MIB; the partition is `debug`. Job state survives down/up (job ids keep counting).
set -euo pipefail
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
CONF=/etc/slurm
RUN=/run/flower-slurm
MARIADB_PID=/run/mysqld/flower-slurm.pid  # mariadbd runs as mysql: its pid file lives in its dir
LOGS=/var/log/flower-slurm
CLUSTER=flower
DB_USER=slurm
DB_PASS=slurm
DBD_PORT=6819
RESERVED_MIB=1024  # left to the OS and the daemons
WAIT_S=60          # each daemon must answer within this

log() { echo "slurm_cluster: $*"; }
fail() { echo "slurm_cluster: error: $*" >&2; exit 1; }

require_root() {
  [ "$(id -u)" = 0 ] || fail "needs root (apt-get, daemons, $CONF); run it with sudo"
}

install_packages() {
  local missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} = 0 ] && return
  [ "${1:-}" = check ] && fail "not installed: ${missing[*]}; run \`sudo scripts/slurm_cluster.sh install\` first"
  log "installing ${missing[*]} (apt-get)"
  command -v apt-get >/dev/null || fail "no apt-get: install ${missing[*]} yourself"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for WHAT COMMAND...: poll COMMAND (quietly) until it succeeds
  local what=$1
  shift
  for _ in $(seq 1 $((WAIT_S * 4))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  fail "$what did not come up in ${WAIT_S} s (logs in $LOGS)"
}

write_config() {
  local host memory
  host=$(hostname -s)
  memory=$(($(free -m | awk '/^Mem:/ {print $2}') - RESERVED_MIB))
  mkdir -p "$CONF" "$RUN" "$LOGS" /var/spool/slurmctld /var/spool/slurmd
  cat >"$CONF/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a single-node cluster on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
# Written by scripts/slurm_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
  alive "$RUN/munged.pid" && return
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 && chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for munged test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$RUN/munged.pid"
  wait_for munged munge -n
}

start_mariadb() {
  alive "$MARIADB_PID" && return
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$MARIADB_PID" \
    >"$LOGS/mariadbd.log" 2>&1 </dev/null &
  wait_for mariadbd mariadb -e "SELECT 1"
  mariadb -e "CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm() {
  if ! alive "$RUN/slurmdbd.pid"; then
    slurmdbd
    wait_for slurmdbd bash -c "echo >/dev/tcp/127.0.0.1/$DBD_PORT"
  fi
  sacctmgr -i show cluster format=cluster -n 2>/dev/null | grep -qw "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  # A slurmctld that was just told to stop no longer answers but still saves its state (its pid
  # file alive): wait until it answers (starting) or is gone (stopping), then start one if needed.
  wait_for "slurmctld to answer or exit" bash -c "scontrol ping || ! pgrep -x slurmctld"
  scontrol ping >/dev/null 2>&1 || slurmctld
  wait_for slurmctld scontrol ping
  alive "$RUN/slurmd.pid" || slurmd
  wait_for "the node" bash -c "sinfo -h -o %T | grep -qx idle"
}

stop_pid() {  # stop_pid NAME PIDFILE
  alive "$2" || { rm -f "$2"; return 0; }
  local pid
  pid=$(cat "$2")
  kill -TERM "$pid"
  for _ in $(seq 1 $((WAIT_S * 4))); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
    sleep 0.25
  done
  log "$1 ignored SIGTERM for ${WAIT_S} s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$2"
}

up() {
  require_root
  install_packages check
  local started=$SECONDS
  write_config
  start_munge
  start_mariadb
  start_slurm
  log "up in $((SECONDS - started)) s: partition debug, node $(hostname -s), $(nproc) CPUs"
}

down() {
  require_root
  local started=$SECONDS
  stop_pid slurmd "$RUN/slurmd.pid"
  stop_pid slurmctld "$RUN/slurmctld.pid"
  stop_pid slurmdbd "$RUN/slurmdbd.pid"
  stop_pid mariadbd "$MARIADB_PID"
  stop_pid munged "$RUN/munged.pid"
  log "down in $((SECONDS - started)) s"
}

status() {
  if alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" && alive "$RUN/slurmdbd.pid"; then
    echo "up"
    sinfo
  else
    echo "down"
  fi
}

case "${1:-}" in
  install) require_root; install_packages ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) fail "usage: scripts/slurm_cluster.sh install|up|down|status" ;;
esac
