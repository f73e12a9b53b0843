#!/usr/bin/env bash
# A real, throwaway PostgreSQL server on loopback for test suites.
#
#   postgres-test.sh start DIR          -> prints postgres://ferry@127.0.0.1:PORT/postgres
#   postgres-test.sh createdb URL NAME  -> prints postgres://ferry@127.0.0.1:PORT/NAME
#   postgres-test.sh stop DIR           -> stops the server and removes DIR (idempotent)
#
# The server listens on 127.0.0.1 only (no other address, ever), trusts every local
# connection (superuser "ferry", no password) and trades durability for speed
# (fsync/synchronous_commit/full_page_writes off): it is for tests, never for data.
#
# PostgreSQL refuses to run as root, so as root the server-side tools run as the
# "postgres" user (created by Debian's postgresql package) and DIR is chowned to it.
# That user must be able to reach DIR: every parent directory has to be traversable
# (o+x). /tmp is fine; something under /root (mode 0700) is not, and start says so.
# As a non-root user everything runs as that user instead.
set -euo pipefail

PROG=$(basename "$0")
INSTALL_HINT="apt-get install -y postgresql"
START_ATTEMPTS=5       # a fresh port per attempt, in case another process grabs ours
START_TIMEOUT=60       # seconds pg_ctl waits for the server to accept connections
STOP_TIMEOUT=60        # seconds pg_ctl waits for a fast shutdown
SOCKET_SUFFIX=/.s.PGSQL.65535   # longest socket file name the server may create in DIR
export PGCONNECT_TIMEOUT=10   # bounds every client connection attempt

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: $PROG start DIR
       $PROG createdb URL NAME
       $PROG stop DIR
EOF
  exit 2
}

# Debian puts the real binaries in /usr/lib/postgresql/VERSION/bin (only client wrappers
# are on PATH); take the highest version, fall back to PATH for other layouts.
PG_BIN=""
find_pg_bin() {
  local d best="" best_ver=-1 ver
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/pg_ctl" ]] || continue
    ver=$(basename "$(dirname "$d")")
    [[ "$ver" =~ ^[0-9]+$ ]] || continue
    if (( ver > best_ver )); then best_ver=$ver; best=$d; fi
  done
  PG_BIN=$best
}

# Absolute path of a PostgreSQL program, or a clear error naming the package to install.
pg_tool() {
  local name=$1 p
  if [[ -n "$PG_BIN" && -x "$PG_BIN/$name" ]]; then
    echo "$PG_BIN/$name"
  elif p=$(command -v "$name" 2>/dev/null); then
    echo "$p"
  else
    die "'$name' not found (looked in /usr/lib/postgresql/*/bin and PATH); run: $INSTALL_HINT"
  fi
}

# Runs a server-side command as the postgres user when we are root (the server refuses
# root). cd / first so an unreadable working directory (e.g. /root) cannot trip it up.
# Closes every descriptor above stderr that this script inherited: the server it starts
# would keep them open for its whole life (a `flock LOCK swift test` run's lock stayed held by
# the server of a test process that was killed, and every later build waited for it).
close_inherited() {
  local fd n
  for fd in /proc/$$/fd/*; do
    n=${fd##*/}
    [[ $n =~ ^[0-9]+$ && $n -gt 2 && $n -lt 1024 ]] || continue
    eval "exec $n>&-" 2>/dev/null || true
  done
}

as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

check_pg_user() {
  [[ $EUID -eq 0 ]] || return 0
  command -v runuser >/dev/null || die "'runuser' not found (util-linux) but needed to run PostgreSQL as root"
  id -u postgres >/dev/null 2>&1 || die "user 'postgres' does not exist; run: $INSTALL_HINT"
}

# A free TCP port on 127.0.0.1. Prefer asking the kernel (bind to port 0); without
# python3 try random high ports, a bounded number of times, against ss's listener list.
pick_port() {
  local port i
  if command -v python3 >/dev/null 2>&1 &&
     port=$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null) &&
     [[ "$port" =~ ^[0-9]+$ ]]; then
    echo "$port"
    return 0
  fi
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

log_tail() {
  local log=$1
  if [[ -s "$log" ]]; then
    echo "--- last lines of $log ---" >&2
    tail -n 20 "$log" >&2 || true
  fi
}

# The postmaster PID from DIR/postmaster.pid, only if that process is alive and really is
# the postgres serving DIR (guards against a stale file and a recycled PID).
live_postmaster_pid() {
  local dir=$1 pid
  [[ -r "$dir/postmaster.pid" ]] || return 1
  pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir" || return 1
  echo "$pid"
}

# Stops whatever server runs in DIR: pg_ctl fast shutdown, then (bounded) signals if it
# hangs. Never fails: callers want "stopped", not a diagnosis.
stop_server() {
  local dir=$1 pg_ctl pid i sig
  [[ -e "$dir/postmaster.pid" ]] || return 0
  pg_ctl=$(pg_tool pg_ctl)
  as_pg "$pg_ctl" stop -D "$dir" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1 || true
  for sig in QUIT KILL; do
    pid=$(live_postmaster_pid "$dir") || return 0
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do   # up to 10 s per signal
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.1
    done
  done
  return 0
}

# rm -rf only what looks like one of our data directories (or an empty leftover), so a
# mistyped DIR cannot wipe something else.
remove_dir() {
  local dir=$1
  [[ -e "$dir" ]] || return 0
  [[ "$dir" != "/" ]] || die "refusing to remove /"
  if [[ -f "$dir/PG_VERSION" || -z "$(ls -A "$dir" 2>/dev/null)" ]]; then
    rm -rf -- "$dir"
  else
    die "$dir does not look like a PostgreSQL data directory; not removing it"
  fi
}

cmd_start() {
  [[ $# -eq 1 && -n "$1" ]] || usage
  local dir=$1 initdb pg_ctl port attempt locale out started=0

  find_pg_bin
  initdb=$(pg_tool initdb)
  pg_ctl=$(pg_tool pg_ctl)
  pg_tool postgres >/dev/null
  check_pg_user
  close_inherited

  if [[ -e "$dir" ]]; then
    [[ -d "$dir" ]] || die "$dir exists and is not a directory"
    [[ -z "$(ls -A "$dir")" ]] || die "$dir exists and is not empty"
  else
    # umask 022 so any parents we create stay traversable by the postgres user.
    (umask 022 && mkdir -p -- "$dir") || die "cannot create $dir"
  fi
  dir=$(cd "$dir" && pwd -P)

  # Configuration values are single-quoted strings; keep the path simple.
  [[ "$dir" =~ ^[A-Za-z0-9_./+-]+$ ]] ||
    { rmdir "$dir" 2>/dev/null || true; die "DIR may only contain [A-Za-z0-9_./+-]: $dir"; }
  # The Unix socket lives in DIR and its path must fit sockaddr_un (107 bytes).
  (( ${#dir} + ${#SOCKET_SUFFIX} <= 107 )) ||
    { rmdir "$dir" 2>/dev/null || true; die "DIR path too long for a Unix socket (max 91 chars): $dir"; }

  # From here on, a failure must not leave a running server or a half-made DIR behind.
  trap 'stop_server "$dir"; rm -rf -- "$dir"' EXIT

  chmod 0700 "$dir"
  if [[ $EUID -eq 0 ]]; then
    chown postgres:postgres "$dir"
    as_pg test -w "$dir" ||
      die "user 'postgres' cannot reach $dir: every parent directory must be traversable (chmod o+x), e.g. use a directory under /tmp"
  fi

  # C.UTF-8 where available: deterministic collation, but Unicode-aware upper()/lower().
  locale=C
  if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale=C.UTF-8; fi

  # initdb wants DIR empty, so its output is kept in memory, not in a file there.
  if ! out=$(as_pg "$initdb" -D "$dir" --encoding=UTF8 --locale="$locale" --auth=trust \
        --username=ferry --no-sync --no-instructions 2>&1); then
    echo "$PROG: initdb failed in $dir (output below)" >&2
    tail -n 20 <<<"$out" >&2
    exit 1
  fi

  # Our settings live in their own file, rewritten per attempt with a fresh port.
  echo "include = 'ferry-test.conf'" >>"$dir/postgresql.conf"

  for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
    port=$(pick_port) || die "could not find a free TCP port on 127.0.0.1"
    cat >"$dir/ferry-test.conf" <<EOF
# Written by $PROG: loopback only, socket in the data directory, no durability.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
EOF
    chown --reference="$dir" "$dir/ferry-test.conf"
    rm -f "$dir/log"
    if as_pg "$pg_ctl" start -D "$dir" -l "$dir/log" -w -t "$START_TIMEOUT" >/dev/null 2>&1; then
      started=1
      break
    fi
    # Lost a race for the port (someone bound it after pick_port): try another one.
    # Anything else is a real failure and retrying will not help.
    stop_server "$dir"
    grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets' \
      "$dir/log" 2>/dev/null || break
  done

  if (( !started )); then
    echo "$PROG: PostgreSQL failed to start in $dir (see log below)" >&2
    log_tail "$dir/log"
    exit 1
  fi

  echo "$port" >"$dir/port"
  trap - EXIT
  echo "postgres://ferry@127.0.0.1:$port/postgres"
}

# Port of a URL we printed; only loopback URLs are accepted, nothing else is contacted.
url_port() {
  local url=$1
  [[ "$url" =~ ^postgres(ql)?://[^@/]*@127\.0\.0\.1:([0-9]+)(/.*)?$ ]] ||
    die "expected a URL like postgres://ferry@127.0.0.1:PORT/postgres, got: $url"
  echo "${BASH_REMATCH[2]}"
}

cmd_createdb() {
  [[ $# -eq 2 ]] || usage
  local url=$1 name=$2 port createdb
  port=$(url_port "$url")
  # Plain identifiers only, so NAME needs no quoting in SQL nor escaping in the URL.
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]{0,62}$ ]] ||
    die "database name must match [A-Za-z_][A-Za-z0-9_]* (max 63 chars): $name"
  find_pg_bin
  createdb=$(pg_tool createdb)
  # Client side: no need to be postgres, the server trusts loopback connections.
  "$createdb" -h 127.0.0.1 -p "$port" -U ferry -O ferry --maintenance-db=postgres "$name" ||
    die "could not create database $name on 127.0.0.1:$port"
  echo "postgres://ferry@127.0.0.1:$port/$name"
}

cmd_stop() {
  [[ $# -eq 1 && -n "$1" ]] || usage
  local dir=$1 pid
  [[ -e "$dir" ]] || return 0   # already gone: nothing to do
  [[ -d "$dir" ]] || die "$dir is not a directory"
  dir=$(cd "$dir" && pwd -P)
  find_pg_bin
  if [[ -e "$dir/postmaster.pid" ]]; then
    check_pg_user
    stop_server "$dir"
    if pid=$(live_postmaster_pid "$dir"); then
      die "server in $dir (pid $pid) did not stop"
    fi
  fi
  remove_dir "$dir"
}

[[ $# -ge 1 ]] || usage
sub=$1
shift
case "$sub" in
  start) cmd_start "$@" ;;
  createdb) cmd_createdb "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
esac
