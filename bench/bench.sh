#!/usr/bin/env bash
# bench/bench.sh — `npm run bench`: every benchmark of issue 6 in one run, written to BENCHMARKS.md.
#
# Starts its own throwaway PostgreSQL 15 (fsync on, as in production; pg_cron and
# pg_stat_statements preloaded), applies the migrations exactly as an operator does
# (`supabase db push --include-seed`), then runs bench/main.ts, which starts the local
# Stripe-compatible server, the guest-checkout function and a bare baseline in their own
# processes, drives them with autocannon and Deno clients, and writes BENCHMARKS.md.
# The cluster and every process started here are stopped and deleted at the end, on failure
# and on Ctrl-C too. Raw results go to .bench-artifacts/.
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1 DO_NOT_TRACK=1 SUPABASE_TELEMETRY_DISABLED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTIFACTS="$ROOT/.bench-artifacts"
PG_BIN=/usr/lib/postgresql/15/bin
PG_PACKAGES=(postgresql-15 postgresql-15-cron)
DENO="$ROOT/node_modules/.bin/deno"
SUPABASE="$ROOT/node_modules/.bin/supabase"
BENCH_DIR=""
DB_URL=""
JOB_PID=""

log() { printf '==> %s\n' "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$JOB_PID" ]]; then kill -TERM -- "-$JOB_PID" 2>/dev/null || true; fi
  if [[ -n "$BENCH_DIR" && -d "$BENCH_DIR" ]]; then
    if [[ -f "$BENCH_DIR/data/postmaster.pid" ]]; then
      as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$BENCH_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; log "interrupted"; exit 130' INT
trap 'echo; log "terminated"; exit 143' TERM

as_postgres() { # initdb/pg_ctl refuse to run as root
  if [[ "$(id -u)" -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  node -e 'const s = require("net").createServer();
    s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

node_tools() {
  if [[ ! -x "$DENO" || ! -x "$SUPABASE" || ! -d "$ROOT/node_modules/autocannon" ]]; then
    log "npm ci (deno, supabase CLI and autocannon come from package.json)"
    (cd "$ROOT" && npm ci --no-audit --no-fund)
  fi
}

debian_packages() {
  local missing=() p
  for p in "${PG_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "ERROR: missing Debian packages: ${missing[*]} (install them as root)" >&2
    return 1
  fi
  log "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# Production-like durability: fsync, synchronous_commit and full_page_writes stay on (the
# defaults). shared_buffers 256MB holds the cleanup benchmark's 1.1M-row table; autovacuum
# stays on. Statement counting needs pg_stat_statements preloaded.
start_cluster() {
  local port attempt
  BENCH_DIR="$(mktemp -d -t pgbench-checkout.XXXXXX)"
  if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$BENCH_DIR"; fi
  if ! as_postgres "$PG_BIN/initdb" -D "$BENCH_DIR/data" -U postgres --auth=trust -E UTF8 \
    --locale=C.UTF-8 >"$BENCH_DIR/initdb.log" 2>&1; then
    rm -rf "$BENCH_DIR/data"
    as_postgres "$PG_BIN/initdb" -D "$BENCH_DIR/data" -U postgres --auth=trust -E UTF8 \
      --locale=C >"$BENCH_DIR/initdb.log" 2>&1 || { cat "$BENCH_DIR/initdb.log"; return 1; }
  fi
  for attempt in 1 2 3; do
    port="$(free_port)"
    if as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/postgres.log" -w -t 30 \
      start -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$BENCH_DIR \
        -c shared_preload_libraries=pg_cron,pg_stat_statements -c cron.database_name=postgres \
        -c pg_stat_statements.max=5000 \
        -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
        -c shared_buffers=256MB -c max_connections=300 -c max_wal_size=4GB \
        -c track_io_timing=on -c track_wal_io_timing=on" >/dev/null; then
      DB_URL="postgresql://postgres:postgres@127.0.0.1:$port/postgres?sslmode=disable"
      echo "cluster $BENCH_DIR on 127.0.0.1:$port"
      return 0
    fi
    echo "server failed to start (attempt $attempt)" >&2
    cat "$BENCH_DIR/postgres.log" >&2 || true
  done
  return 1
}

main() {
  local started="$EPOCHREALTIME" rc=0
  cd "$ROOT"
  mkdir -p "$ARTIFACTS"
  log "node tools"
  node_tools
  log "debian packages"
  debian_packages
  log "start throwaway cluster (fsync on)"
  start_cluster
  log "bootstrap Supabase roles/schemas"
  psql "$DB_URL" -v ON_ERROR_STOP=1 -q -f "$ROOT/scripts/bootstrap-supabase.sql"
  log "supabase db push --include-seed"
  "$SUPABASE" db push --db-url "$DB_URL" --include-seed --yes </dev/null >"$ARTIFACTS/db-push.log" 2>&1 ||
    { cat "$ARTIFACTS/db-push.log"; return 1; }
  log "bench/main.ts"
  # Own process group, waited for: Ctrl-C reaches the trap at once, and cleanup stops every
  # process main.ts started (servers, load generators) with the group.
  set -m
  DATABASE_URL="$DB_URL" BENCH_DIR="$BENCH_DIR" BENCH_ARTIFACTS="$ARTIFACTS" \
    "$DENO" run --allow-all "$ROOT/bench/main.ts" &
  JOB_PID=$!
  set +m
  wait "$JOB_PID" || rc=$?
  JOB_PID=""
  [[ "$rc" -eq 0 ]] || { log "bench failed (exit $rc)"; return "$rc"; }
  log "done in $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f s", b - a }')"
}

main "$@"
