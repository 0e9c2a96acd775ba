#!/usr/bin/env bash
# A real single-node SLURM cluster (Debian's slurm-wlm 22.05 + munge) on this machine, for CI and for
# trying `hydra/launcher=slurm` locally. Runs as root; needs no systemd (every daemon is started here).
#
#   scripts/slurm_cluster.sh install   # apt packages, only those missing (safe to run again)
#   scripts/slurm_cluster.sh start     # munged, mariadbd + slurmdbd (sacct), slurmctld, slurmd; waits for an idle node
#   scripts/slurm_cluster.sh status    # the daemons this script started, and the node state (exit 1 if not up)
#   scripts/slurm_cluster.sh stop      # cancel all jobs, then stop exactly the daemons that `start` started
#
# The cluster: one node (this host, all its CPUs, 80 % of its memory, no GPUs), partition `debug`.
# `start` writes /etc/slurm/slurm.conf and wipes the previous cluster's job state and accounting database.
# Env: BARLAB_SLURM_DIR  pid and log files of the daemons (default /tmp/barlab-slurm)
# Measured recipe, with the reason for every setting: ../shared/reference/slurm.md (kept in sync here).
set -euo pipefail

DIR=${BARLAB_SLURM_DIR:-/tmp/barlab-slurm}
HOST=$(hostname -s)
PARTITION=debug
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
DAEMONS_STOP_ORDER="slurmd slurmctld slurmdbd mariadbd munged"
MYSQL_SOCKET=/run/mysqld/mysqld.sock

log() { echo "[slurm_cluster $(date +%T)] $*"; }

die() { echo "error: scripts/slurm_cluster.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (fix: sudo $0 $1)"; }

alive() {  # alive PID: running and not a zombie (an orphan's zombie lingers until PID 1 reaps it)
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s; on timeout print the daemon logs and fail
  local tries=$(( $1 * 10 )) what=$2
  shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  for f in "$DIR"/*.log /var/log/slurm/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
  die "timed out waiting for $what"
}

spawn() {  # spawn NAME CMD...: run CMD in the background, log to $DIR/NAME.log, record its PID in $DIR/NAME.pid
  local name=$1
  shift
  nohup "$@" > "$DIR/$name.log" 2>&1 &
  echo $! > "$DIR/$name.pid"
}

do_install() {
  # shellcheck disable=SC2086
  if dpkg -s $PACKAGES >/dev/null 2>&1; then
    log "packages present: $PACKAGES"
    return
  fi
  need_root install
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $PACKAGES
  # postinst scripts cannot start services without systemd ("policy-rc.d denied"): harmless, start does it
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # must not exceed what slurmd detects
  mkdir -p /etc/slurm
  cat > /etc/slurm/slurm.conf <<EOF
# Written by barlab's scripts/slurm_cluster.sh: a single-node CI cluster.
ClusterName=barlab
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may restart cred_expire + 1 s after its requeue (default 120 s).
AuthInfo=cred_expire=10
MailProg=/bin/true
MpiDefault=none
# No cgroup plugins: they move job processes out of the caller's cgroup and leave folders behind.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# sacct is needed: without it submitit never learns that a killed job is over, and waits forever.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start queued and requeued jobs within ~2 s (defaults: 3 s, 60 s, 30 s).
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
ReturnToService=2
# Refuse at sbatch time a job larger than the node, instead of leaving it PENDING forever.
EnforcePartLimits=ALL
# submitit's job ignores SIGTERM: an scancel/requeue SIGKILLs it after KillWait (default 30 s).
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/slurmdbd.conf <<'EOF'
# Written by barlab's scripts/slurm_cluster.sh: accounting for sacct, in a local MariaDB.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=barlab-ci
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
}

start_munged() {
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  # munged refuses to run as root; setpriv execs it as user munge in the foreground, so $! is munged itself
  spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
  wait_for 10 munged munge -n
  log "munged up"
}

start_accounting() {
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  spawn mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking --socket=$MYSQL_SOCKET \
    --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900
  wait_for 30 mariadbd mariadb-admin --socket=$MYSQL_SOCKET ping
  mariadb --socket=$MYSQL_SOCKET -e "DROP DATABASE IF EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'barlab-ci';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'barlab-ci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  log "mariadbd up"
  spawn slurmdbd /usr/sbin/slurmdbd -D
  wait_for 30 slurmdbd sacctmgr -n -P show cluster
  log "slurmdbd up"
}

node_idle() { sinfo -h -N -o %T | grep -qx idle; }

do_start() {
  need_root start
  command -v slurmctld >/dev/null || die "slurm is not installed (fix: $0 install)"
  mkdir -p "$DIR" /run/slurm /var/log/slurm
  if ls "$DIR"/*.pid >/dev/null 2>&1; then
    log "stopping the daemons of an earlier start"
    do_stop
  fi
  rm -rf /var/spool/slurmctld /var/spool/slurmd  # no stale jobs; job ids restart at 1
  mkdir -p /var/spool/slurmctld /var/spool/slurmd
  write_config
  start_munged
  start_accounting
  spawn slurmctld /usr/sbin/slurmctld -D -i
  spawn slurmd /usr/sbin/slurmd -D -N "$HOST"
  wait_for 60 "node $HOST idle" node_idle
  log "up: $(sinfo -h -N -o '%P %N %T %c CPUs %m MB')"
}

do_stop() {
  if [ -f "$DIR/slurmctld.pid" ] && alive "$(cat "$DIR/slurmctld.pid")"; then
    scancel --partition=$PARTITION 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  local pid
  for name in $DAEMONS_STOP_ORDER; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pid"
    log "$name ($pid) stopped"
  done
}

do_status() {
  local up=0 name pid
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if [ -f "$DIR/$name.pid" ] && alive "$(cat "$DIR/$name.pid")"; then
      echo "$name: running (pid $(cat "$DIR/$name.pid"))"
      up=$((up + 1))
    else
      echo "$name: not running"
    fi
  done
  if [ "$up" = 5 ] && sinfo -h >/dev/null 2>&1; then
    sinfo -h -N -o 'node %N: %T, partition %P, %c CPUs, %m MB'
    return 0
  fi
  return 1
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
