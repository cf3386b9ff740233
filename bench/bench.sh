#!/usr/bin/env bash
# bench/bench.sh — `npm run bench`: every benchmark in one run, written to BENCHMARKS.md.
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
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh" # PG_SERVER_PACKAGES, pg_init, pg_start_on_free_port …
ARTIFACTS="$ROOT/.bench-artifacts"
DENO="$ROOT/node_modules/.bin/deno"
SUPABASE="$ROOT/node_modules/.bin/supabase"
BENCH_DIR=""
DB_URL=""
POOLER_URL=""
JOB_PID=""

log() { printf '==> %s\n' "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$JOB_PID" ]]; then kill -TERM -- "-$JOB_PID" 2>/dev/null || true; fi
  pg_discard "$BENCH_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; log "interrupted"; exit 130' INT
trap 'echo; log "terminated"; exit 143' TERM

node_tools() {
  if [[ ! -x "$DENO" || ! -x "$SUPABASE" || ! -d "$ROOT/node_modules/autocannon" ]]; then
    log "npm ci (deno, supabase CLI and autocannon come from package.json)"
    (cd "$ROOT" && npm ci --no-audit --no-fund)
  fi
}

# Production-like durability: fsync, synchronous_commit and full_page_writes stay on (the
# defaults). shared_buffers 256MB holds the cleanup benchmark's 1.1M-row table; autovacuum
# stays on. Statement counting needs pg_stat_statements preloaded (beside pg_cron).
BENCH_SERVER_OPTIONS="-c shared_preload_libraries=pg_cron,pg_stat_statements \
  -c pg_stat_statements.max=5000 \
  -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
  -c shared_buffers=256MB -c max_connections=300 -c max_wal_size=4GB \
  -c track_io_timing=on -c track_wal_io_timing=on"

start_cluster() {
  local port
  BENCH_DIR="$(mktemp -d -t pgbench-checkout.XXXXXX)"
  pg_init "$BENCH_DIR/data" "$BENCH_DIR/initdb.log" || return 1
  port="$(pg_start_on_free_port "$BENCH_DIR/data" "$BENCH_DIR/postgres.log" "$BENCH_DIR" \
    "$BENCH_SERVER_OPTIONS")" || return 1
  DB_URL="$(pg_url "$port")"
  echo "cluster $BENCH_DIR on 127.0.0.1:$port"
  # PgBouncer in transaction mode in front of it (stopped by pg_discard with the cluster).
  port="$(pgbouncer_start "$BENCH_DIR/pgbouncer" "$DB_URL")" || return 1
  POOLER_URL="$(pooler_url "$port")"
  echo "pgbouncer (transaction mode) on 127.0.0.1:$port"
}

main() {
  local started="$EPOCHREALTIME" rc=0
  cd "$ROOT"
  mkdir -p "$ARTIFACTS"
  log "node tools"
  node_tools
  log "debian packages"
  install_debian_packages "${PG_SERVER_PACKAGES[@]}" pgbouncer
  log "start throwaway cluster (fsync on)"
  start_cluster
  log "bootstrap Supabase roles/schemas"
  pg_bootstrap "$DB_URL" "$ROOT"
  log "supabase db push --include-seed"
  "$SUPABASE" db push --db-url "$DB_URL" --include-seed --yes </dev/null >"$ARTIFACTS/db-push.log" 2>&1 ||
    { cat "$ARTIFACTS/db-push.log"; return 1; }
  log "bench/main.ts"
  # Own process group, waited for: Ctrl-C reaches the trap at once, and cleanup stops every
  # process main.ts started (servers, load generators) with the group.
  set -m
  DATABASE_URL="$DB_URL" POOLER_DATABASE_URL="$POOLER_URL" BENCH_DIR="$BENCH_DIR" \
    BENCH_ARTIFACTS="$ARTIFACTS" \
    "$DENO" run --allow-all "$ROOT/bench/main.ts" &
  JOB_PID=$!
  set +m
  wait "$JOB_PID" || rc=$?
  JOB_PID=""
  [[ "$rc" -eq 0 ]] || { log "bench failed (exit $rc)"; return "$rc"; }
  log "done in $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f s", b - a }')"
}

main "$@"
