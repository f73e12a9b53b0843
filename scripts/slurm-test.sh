#!/usr/bin/env bash
# A real, throwaway one-node Slurm cluster on loopback with burst_buffer/lua, for the
# prestaging tests (Ferry's #FERRY directives, contrib/slurm/burst_buffer.lua).
#
#   slurm-test.sh start DIR LUA_FILE   -> prints SLURM_CONF=DIR/etc/slurm.conf (export it)
#   slurm-test.sh restart-ctld DIR     -> kills slurmctld and starts it again keeping its state
#   slurm-test.sh stop DIR             -> stops slurmd and slurmctld (idempotent)
#
# Must run as root (Debian 12: apt-get install munge slurmctld slurmd slurm-client
# slurm-wlm-basic-plugins, see scripts/install-deps.sh). Everything the cluster writes
# (configuration, state, spool, logs, pid files) lives under DIR; slurmctld and slurmd
# listen on 127.0.0.1 only (NoInAddrAny,NoCtldInAddrAny), on two free ports picked at
# start, so several clusters can run side by side. No systemd: the daemons are started
# by hand and stopped through their pid files.
#
# start:
# - starts munged (as user munge) unless `munge -n` already answers; it is left running
#   by stop (other clusters on the machine share it); DIR/munged-started records that
#   this start launched it.
# - creates the ordinary user "ferryjob" (with a home directory) if missing: Slurm
#   refuses burst buffers to root, so tests submit as that user:
#   runuser -u ferryjob -- sbatch ...  (runuser keeps SLURM_CONF in the environment).
# - copies LUA_FILE to DIR/etc/burst_buffer.lua beside slurm.conf and writes
#   DIR/etc/burst_buffer.conf with Directive=FERRY (so "#FERRY" lines are the burst
#   buffer directives), Flags=DisablePersistent,TeardownFailure and stage timeouts
#   (FERRY_SLURM_STAGE_TIMEOUT seconds, default 180).
# - enables job_submit/lua (JobSubmitPlugins=lua) with contrib/slurm/job_submit.lua of
#   this repository copied to DIR/etc/job_submit.lua: sbatch refuses a #FERRY line
#   after the first command (which Slurm itself would silently ignore).
# - writes DIR/etc/ferry-bb.env: PATH and every FERRY_* variable of start's environment
#   (FERRY_BIN, FERRY_API, FERRY_TOKEN_FILE, FERRY_CA, FERRY_BB_STATE, ...), one
#   KEY=VALUE a line. burst_buffer.lua reads the ferry-bb.env beside itself on every
#   hook and passes those variables to the ferry command it runs. (slurmctld's script
#   helper, slurmscriptd, does inherit slurmctld's environment, but a restart from
#   another shell or a systemd unit would not carry it, so the file is the contract.)
#   FERRY_BB_STATE defaults to DIR/ferry-bb-state.
# - waits (at most 30 s) until sinfo shows the node idle, then prints the SLURM_CONF
#   line on stdout; everything else goes to stderr. On failure it exits non-zero and
#   shows the end of slurmctld.log / slurmd.log.
set -euo pipefail

PROG=$(basename "$0")
INSTALL_HINT="apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins"
JOB_USER=ferryjob
READY_TIMEOUT_S=30       # start: slurmctld answering + node idle
STOP_TIMEOUT_S=15        # per daemon, after SIGTERM, before SIGKILL
MUNGE_TIMEOUT_S=10
PORT_ATTEMPTS=50
STAGE_TIMEOUT_S=${FERRY_SLURM_STAGE_TIMEOUT:-180}
JOB_SUBMIT_LUA="$(dirname "$0")/../contrib/slurm/job_submit.lua"

die() {
  echo "$PROG: $*" >&2
  exit 1
}

say() {
  echo "$PROG: $*" >&2
}

usage() {
  cat >&2 <<EOF
usage: $PROG start DIR LUA_FILE
       $PROG restart-ctld DIR
       $PROG stop DIR
EOF
  exit 2
}

need_root() {
  [[ $EUID -eq 0 ]] || die "must run as root (slurmd starts jobs as other users)"
}

need_tools() {
  local t
  for t in slurmctld slurmd sinfo scontrol munge munged runuser; do
    command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] || die "'$t' not found; run: $INSTALL_HINT"
  done
}

abs_dir() {
  local d=$1
  [[ -n "$d" ]] || usage
  case "$d" in
    /*) ;;
    *) d="$PWD/$d" ;;
  esac
  # No spaces or shell metacharacters: the path ends up in slurm.conf and in eval'd output.
  [[ "$d" =~ ^[A-Za-z0-9_./+-]+$ ]] || die "DIR '$d' must consist of letters, digits and _ . / + - only"
  echo "${d%/}"
}

# A TCP port on 127.0.0.1 that nothing listens on right now (and not in `avoid`).
free_port() {
  local avoid=${1:-0} i p
  for ((i = 0; i < PORT_ATTEMPTS; i++)); do
    p=$(( (RANDOM % 20000) + 20000 ))
    [[ $p -ne $avoid ]] || continue
    # Probe: connect fails -> nothing listens. /dev/tcp is bash's, bounded by timeout.
    if ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
      if command -v python3 >/dev/null 2>&1; then
        # Make sure we could bind it too (a port in TIME_WAIT or held by a non-listening socket).
        python3 - "$p" <<'PY' 2>/dev/null || continue
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
PY
      fi
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port found on 127.0.0.1 after $PORT_ATTEMPTS attempts"
}

# Runs a command (a daemon that forks away) with every descriptor above 2 closed. A daemon
# keeps what it inherits (munged does): a caller's pipe or socket would stay open for as long
# as the daemon lives, and a caller that waits for it to close (a CI reading our output, or
# Foundation's Process, which learns of a child's exit through such a socket) would wait
# forever.
without_inherited_fds() {
  (
    local fd
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)) && { exec {fd}>&-; } 2>/dev/null
    done
    exec "$@"
  )
}

pid_alive() {
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null
}

read_pid() {
  local f=$1
  [[ -s "$f" ]] || return 0
  tr -dc '0-9' <"$f"
}

# Stops the process in pid file $1 (SIGTERM, bounded wait, then SIGKILL).
stop_pidfile() {
  local f=$1 name=$2 sig=${3:-TERM} pid i
  pid=$(read_pid "$f")
  if ! pid_alive "$pid"; then
    rm -f "$f"
    return 0
  fi
  kill -s "$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    say "$name (pid $pid) still running after ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill -s KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_alive "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$f"
}

show_logs() {
  local dir=$1 f
  for f in "$dir/log/slurmctld.stdout" "$dir/log/slurmctld.log" "$dir/log/slurmd.stdout" "$dir/log/slurmd.log"; do
    [[ -s "$f" ]] || continue
    echo "---- last lines of $f ----" >&2
    tail -n 25 "$f" >&2
  done
}

fail_start() {
  local dir=$1
  shift
  echo "$PROG: $*" >&2
  show_logs "$dir"
  exit 1
}

start_munge() {
  local dir=$1 i
  if munge -n >/dev/null 2>&1; then
    return 0
  fi
  id -u munge >/dev/null 2>&1 || die "user 'munge' does not exist; run: $INSTALL_HINT"
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key >&2 || die "mungekey failed"
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  without_inherited_fds runuser -u munge -- /usr/sbin/munged >&2 || die "munged failed to start (see /var/log/munge/munged.log)"
  echo "munged started by $PROG start" >"$dir/munged-started"
  for ((i = 0; i < MUNGE_TIMEOUT_S * 10; i++)); do
    munge -n >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged does not answer 'munge -n' after ${MUNGE_TIMEOUT_S}s"
}

ensure_job_user() {
  if ! id -u "$JOB_USER" >/dev/null 2>&1; then
    say "creating user $JOB_USER"
    useradd --create-home --shell /bin/bash "$JOB_USER" || die "useradd $JOB_USER failed"
  fi
  local home
  home=$(getent passwd "$JOB_USER" | cut -d: -f6)
  if [[ -n "$home" && ! -d "$home" ]]; then
    install -d -o "$JOB_USER" -g "$(id -g "$JOB_USER")" -m 0755 "$home"
  fi
}

# Every parent of DIR must be traversable by the job user (slurmd runs the job script
# from its spool directory under DIR as that user).
check_traversable() {
  local d=$1
  while [[ "$d" != "/" && -n "$d" ]]; do
    d=$(dirname "$d")
    if [[ -d "$d" ]] && ! runuser -u "$JOB_USER" -- test -x "$d" 2>/dev/null; then
      die "user $JOB_USER cannot traverse $d (a parent of DIR); use a DIR under /tmp"
    fi
  done
}

write_env_file() {
  local file=$1 state_dir=$2 name
  {
    echo "# Written by $PROG start: the environment burst_buffer.lua passes to the ferry command."
    printf 'PATH=%s\n' "$PATH"
    while IFS= read -r name; do
      [[ "$name" == FERRY_BB_STATE ]] && continue
      printf '%s=%s\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^FERRY_[A-Za-z0-9_]*$' | sort)
    printf 'FERRY_BB_STATE=%s\n' "${FERRY_BB_STATE:-$state_dir}"
  } >"$file"
  # Values must stay on one line each.
  if grep -qv -E '^(#.*|[A-Za-z_][A-Za-z0-9_]*=.*)$' "$file"; then
    die "an environment value for $file contains a newline"
  fi
  chmod 0644 "$file"
}

write_configs() {
  local dir=$1 ctld_port=$2 slurmd_port=$3 cpus
  cpus=$(nproc 2>/dev/null || echo 1)
  cat >"$dir/etc/slurm.conf" <<EOF
# Written by $PROG start: a one-node test cluster on 127.0.0.1.
ClusterName=ferrytest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
DebugFlags=BurstBuffer
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
MinJobAge=300
BurstBufferType=burst_buffer/lua
JobSubmitPlugins=lua
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$dir/etc/burst_buffer.conf" <<EOF
# Written by $PROG start. "#FERRY" lines in a job script's leading comment block are
# this plugin's directives; burst_buffer.lua beside this file implements them.
Directive=FERRY
Flags=DisablePersistent,TeardownFailure
StageInTimeout=$STAGE_TIMEOUT_S
StageOutTimeout=$STAGE_TIMEOUT_S
OtherTimeout=$STAGE_TIMEOUT_S
EOF
  chmod 0644 "$dir/etc/slurm.conf" "$dir/etc/burst_buffer.conf"
}

start_ctld() {
  local dir=$1 clean=$2
  local args=()
  [[ "$clean" == clean ]] && args+=(-c)
  # slurmctld daemonizes; its environment (this one) is what slurmscriptd and so the
  # burst_buffer.lua hooks inherit.
  (cd / && SLURM_CONF="$dir/etc/slurm.conf" without_inherited_fds slurmctld "${args[@]}") >>"$dir/log/slurmctld.stdout" 2>&1 ||
    fail_start "$dir" "slurmctld failed to start"
}

wait_ctld() {
  local dir=$1 i
  for ((i = 0; i < READY_TIMEOUT_S * 4; i++)); do
    if SLURM_CONF="$dir/etc/slurm.conf" timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
      return 0
    fi
    # The pid file appears once slurmctld has daemonized (give it 2 s).
    if ((i >= 8)) && ! pid_alive "$(read_pid "$dir/run/slurmctld.pid")"; then
      fail_start "$dir" "slurmctld exited"
    fi
    sleep 0.25
  done
  fail_start "$dir" "slurmctld does not answer 'scontrol ping' after ${READY_TIMEOUT_S}s"
}

cmd_start() {
  [[ $# -eq 2 ]] || usage
  need_root
  need_tools
  local dir lua i state
  dir=$(abs_dir "$1")
  lua=$2
  [[ -f "$lua" && -r "$lua" ]] || die "LUA_FILE '$lua' is not a readable file"
  [[ -f "$JOB_SUBMIT_LUA" && -r "$JOB_SUBMIT_LUA" ]] || die "'$JOB_SUBMIT_LUA' is not a readable file"
  if pid_alive "$(read_pid "$dir/run/slurmctld.pid")" || pid_alive "$(read_pid "$dir/run/slurmd.pid")"; then
    die "a cluster from $dir is still running; run: $PROG stop $dir"
  fi

  install -d -m 0755 "$dir" "$dir/etc" "$dir/log" "$dir/run" "$dir/spool"
  install -d -m 0700 "$dir/state"
  rm -rf "${dir:?}/state/"* "${dir:?}/spool/"* "${dir:?}/log/"* "${dir:?}/run/"*
  ensure_job_user
  check_traversable "$dir/etc"
  start_munge "$dir"

  local ctld_port slurmd_port
  ctld_port=$(free_port)
  slurmd_port=$(free_port "$ctld_port")
  write_configs "$dir" "$ctld_port" "$slurmd_port"
  install -m 0644 "$lua" "$dir/etc/burst_buffer.lua"
  install -m 0644 "$JOB_SUBMIT_LUA" "$dir/etc/job_submit.lua"
  install -d -m 0755 "${FERRY_BB_STATE:-$dir/ferry-bb-state}"
  write_env_file "$dir/etc/ferry-bb.env" "$dir/ferry-bb-state"

  start_ctld "$dir" clean
  wait_ctld "$dir"
  (cd / && SLURM_CONF="$dir/etc/slurm.conf" without_inherited_fds slurmd -N localhost) >>"$dir/log/slurmd.stdout" 2>&1 ||
    fail_start "$dir" "slurmd failed to start"

  for ((i = 0; i < READY_TIMEOUT_S * 4; i++)); do
    state=$(SLURM_CONF="$dir/etc/slurm.conf" timeout 5 sinfo -h -n localhost -o '%T' 2>/dev/null || true)
    if [[ "$state" == idle ]]; then
      say "cluster up: slurmctld 127.0.0.1:$ctld_port, slurmd 127.0.0.1:$slurmd_port, logs in $dir/log"
      echo "SLURM_CONF=$dir/etc/slurm.conf"
      return 0
    fi
    sleep 0.25
  done
  fail_start "$dir" "node not idle after ${READY_TIMEOUT_S}s (sinfo state: '${state:-none}')"
}

cmd_restart_ctld() {
  [[ $# -eq 1 ]] || usage
  need_root
  local dir
  dir=$(abs_dir "$1")
  [[ -f "$dir/etc/slurm.conf" ]] || die "no cluster in $dir (missing etc/slurm.conf)"
  stop_pidfile "$dir/run/slurmctld.pid" slurmctld
  # This shell's environment need not hold the FERRY_* variables: burst_buffer.lua
  # reads them from DIR/etc/ferry-bb.env, written by start.
  start_ctld "$dir" keep
  wait_ctld "$dir"
  say "slurmctld restarted with its saved state"
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  need_root
  local dir
  dir=$(abs_dir "$1")
  [[ -d "$dir" ]] || return 0
  stop_pidfile "$dir/run/slurmd.pid" slurmd
  stop_pidfile "$dir/run/slurmctld.pid" slurmctld
  if [[ -f "$dir/munged-started" ]]; then
    say "munged (started by $PROG start) is left running for other clusters on this machine"
  fi
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case "$cmd" in
  start) cmd_start "$@" ;;
  restart-ctld) cmd_restart_ctld "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
esac
