#!/usr/bin/env bash
# scripts/start.sh — `npm start`: the whole product on this machine, in one command.
#
# 1. installs what it needs: the npm tools of package.json (Deno, Supabase CLI) and, as root,
#    Debian's postgresql-15 and postgresql-15-cron when missing;
# 2. unless DATABASE_URL is set, starts a local PostgreSQL 15 whose data is kept in .local/postgres
#    (ignored by git) across restarts, on 127.0.0.1:${DB_PORT:-54322}; as root, when the postgres
#    user cannot reach the checkout (root's home, a `mktemp -d` folder), the data is kept in
#    postgres's home instead, one folder per checkout, and .local/postgres links to it;
# 3. gives it what hosted Supabase has (scripts/bootstrap-supabase.sql) and applies the migrations
#    and the seed with `supabase db push --include-seed` (a no-op when nothing changed);
# 4. runs scripts/start.ts: the functions at http://127.0.0.1:${PORT:-54321}/functions/v1/<name>,
#    the storefront at http://127.0.0.1:${STOREFRONT_PORT:-3000}, and the local Stripe-compatible
#    server unless STRIPE_SECRET_KEY or STRIPE_API_BASE is set.
# Ctrl-C stops everything, the local PostgreSQL included.
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1 DO_NOT_TRACK=1 SUPABASE_TELEMETRY_DISABLED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"

DENO="$ROOT/node_modules/.bin/deno"
SUPABASE="$ROOT/node_modules/.bin/supabase"
LOCAL_DIR="$ROOT/.local"
PG_DIR="" # chosen by choose_pg_dir
DB_PORT="${DB_PORT:-54322}"
OWN_CLUSTER=""  # set once this script has started the local cluster
SERVICES_PID="" # the start.ts job

log() { printf '==> %s\n' "$*"; }
fail() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  # Ignore further signals while cleaning up: npm forwards the Ctrl-C it got to this script
  # too, and a second signal must not cut the cleanup short (leaving PostgreSQL running).
  trap - EXIT
  trap '' INT TERM
  if [[ -n "$SERVICES_PID" ]]; then
    kill -TERM -- "-$SERVICES_PID" 2>/dev/null || true
    wait "$SERVICES_PID" 2>/dev/null || true
  fi
  if [[ -n "$OWN_CLUSTER" ]]; then
    log "stopping the local PostgreSQL (data kept in ${PG_DIR#"$ROOT/"})"
    pg_stop "$PG_DIR/data" fast || pg_stop "$PG_DIR/data" immediate || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_node_tools() {
  if [[ ! -x "$DENO" || ! -x "$SUPABASE" ]]; then
    log "npm ci (Deno and the Supabase CLI come from package.json)"
    (cd "$ROOT" && npm ci --no-audit --no-fund) || fail "npm ci failed"
  fi
}

check_ports_free() {
  local name value
  for name in PORT STOREFRONT_PORT LOCAL_STRIPE_PORT; do
    case "$name" in
      PORT) value="${PORT:-54321}" ;;
      STOREFRONT_PORT) value="${STOREFRONT_PORT:-3000}" ;;
      LOCAL_STRIPE_PORT)
        [[ -n "${STRIPE_SECRET_KEY:-}${STRIPE_API_BASE:-}" ]] && continue
        value="${LOCAL_STRIPE_PORT:-12111}"
        ;;
    esac
    port_is_free "$value" ||
      fail "127.0.0.1:$value is in use (is npm start already running?); set $name to another port"
  done
}

# initdb and the server run as postgres (as_postgres), which must reach the data directory along
# its whole path. A checkout it cannot reach keeps its cluster in postgres's home instead, in a
# folder named after the checkout's path (so data persists across runs), linked from
# .local/postgres: without that link (.local/ deleted to start afresh) the folder is stale.
choose_pg_dir() {
  local link="$LOCAL_DIR/postgres" home name hash
  if [[ "$(id -u)" -ne 0 ]] || { [[ ! -L "$link" ]] && as_postgres test -x "$LOCAL_DIR"; }; then
    PG_DIR="$link"
    return
  fi
  if [[ -L "$link" ]]; then
    PG_DIR="$(readlink "$link")"
    return
  fi
  [[ ! -e "$link" ]] ||
    fail "the postgres user cannot reach $link; delete it to start afresh in postgres's home"
  home="$(getent passwd postgres | cut -d: -f6)"
  [[ -n "$home" && -d "$home" ]] || fail "the postgres user has no home folder for the cluster"
  name="$(printf '%s' "${ROOT##*/}" | tr -c 'A-Za-z0-9._-' '_')"
  hash="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
  PG_DIR="$home/npm-start/$name-$hash"
  if [[ -e "$PG_DIR" ]]; then
    log "removing a stale cluster of this checkout in $PG_DIR (.local/postgres was gone)"
    if pg_running "$PG_DIR/data"; then pg_stop "$PG_DIR/data" immediate || true; fi
    rm -rf "$PG_DIR"
  fi
  # Only postgres and root may look inside, as with a cluster under .local/.
  mkdir -p "$PG_DIR"
  chown postgres "$home/npm-start" "$PG_DIR" && chmod 0700 "$home/npm-start" "$PG_DIR" ||
    fail "cannot prepare $PG_DIR for the postgres user"
  ln -s "$PG_DIR" "$link"
}

start_local_postgres() {
  install_debian_packages "${PG_SERVER_PACKAGES[@]}" || fail "cannot install PostgreSQL"
  choose_pg_dir
  if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
    log "creating the local PostgreSQL cluster in ${PG_DIR#"$ROOT/"}/data"
    rm -rf "$PG_DIR/data"
    pg_init "$PG_DIR/data" "$PG_DIR/initdb.log" || fail "initdb failed (log: $PG_DIR/initdb.log)"
  fi
  if pg_running "$PG_DIR/data"; then
    # Left running by a run that was killed hard: stop it, so it restarts with our settings.
    log "a PostgreSQL from an earlier run is still up; restarting it"
    pg_stop "$PG_DIR/data" fast || fail "cannot stop the PostgreSQL in $PG_DIR/data"
  fi
  port_is_free "$DB_PORT" || fail "127.0.0.1:$DB_PORT is in use; set DB_PORT to another port"
  log "starting PostgreSQL 15 on 127.0.0.1:$DB_PORT"
  OWN_CLUSTER=1
  pg_start "$PG_DIR/data" "$PG_DIR/server.log" "$DB_PORT" "" ||
    { tail -n 20 "$PG_DIR/server.log" >&2; fail "PostgreSQL did not start (log: $PG_DIR/server.log)"; }
  DATABASE_URL="$(pg_url "$DB_PORT")"
  START_DATABASE_NOTE="$DATABASE_URL (data in ${PG_DIR#"$ROOT/"}/data)"
}

needs_bootstrap() { # a server that lacks Supabase's roles or auth schema (plain Postgres)
  local present
  present="$(psql "$DATABASE_URL" -XAtq -c "select (select count(*) from pg_roles
      where rolname in ('anon','authenticated','service_role')) = 3
      and to_regclass('auth.users') is not null")" || fail "cannot connect to DATABASE_URL"
  [[ "$present" != "t" ]]
}

prepare_database() {
  if [[ -n "$OWN_CLUSTER" ]] || needs_bootstrap; then
    log "bootstrap: Supabase roles and schemas (scripts/bootstrap-supabase.sql)"
    pg_bootstrap "$DATABASE_URL" "$ROOT" || fail "bootstrap failed"
  fi
  log "supabase db push --include-seed"
  (cd "$ROOT" && "$SUPABASE" db push --db-url "$DATABASE_URL" --include-seed --yes </dev/null) ||
    fail "supabase db push failed"
}

main() {
  local t0=$SECONDS rc=0
  cd "$ROOT"
  mkdir -p "$LOCAL_DIR"
  ensure_node_tools
  check_ports_free
  if [[ -n "${DATABASE_URL:-}" ]]; then
    log "database: DATABASE_URL (no local PostgreSQL started)"
    START_DATABASE_NOTE="DATABASE_URL (not started by npm start)"
  else
    start_local_postgres
  fi
  prepare_database
  log "database ready in $((SECONDS - t0))s; starting the services"
  # A job in its own process group, waited for: Ctrl-C reaches the trap at once, and cleanup
  # stops the services before the database.
  set -m
  DATABASE_URL="$DATABASE_URL" START_DATABASE_NOTE="$START_DATABASE_NOTE" \
    "$DENO" run --allow-net --allow-env --allow-read --allow-write --allow-run --allow-sys \
    "$ROOT/scripts/start.ts" </dev/null &
  SERVICES_PID=$!
  set +m
  wait "$SERVICES_PID" || rc=$?
  SERVICES_PID=""
  return "$rc"
}

main "$@"
