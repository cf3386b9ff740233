#!/usr/bin/env bash
# scripts/dev-db.sh — a scratch database for running one test file at a time.
#
#   eval "$(bash scripts/dev-db.sh reset)"   # new cluster, migrations and seed applied
#   deno test --allow-all tests/webhook.test.ts
#   pg_prove --ext .sql supabase/tests/database/006_webhook_lifecycle.test.sql
#   bash scripts/dev-db.sh stop
#
# `reset` throws away the previous scratch cluster (DEV_DB_DIR, default /tmp/scx-dev-db-$UID;
# it must be a folder the postgres user can reach) and prints the export lines for
# DATABASE_URL, POOLER_DATABASE_URL (PgBouncer in transaction mode in front of it, for
# tests/pooler.test.ts) and the PG* variables that pg_prove reads. `npm test` does not use it.
# It runs without fsync; DEV_DB_OPTIONS='' gives a durable one (for timing a commit's cost).
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1 DO_NOT_TRACK=1 SUPABASE_TELEMETRY_DISABLED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
DIR="${DEV_DB_DIR:-/tmp/scx-dev-db-$(id -u)}"

stop() {
  pg_discard "$DIR"
}

reset() {
  local port url pooler
  stop
  install_debian_packages "${PG_PACKAGES[@]}" >&2
  pg_init "$DIR/data" "$DIR/initdb.log" >&2
  port="$(free_port)"
  pg_start "$DIR/data" "$DIR/log" "$port" "" \
    "${DEV_DB_OPTIONS--c fsync=off -c synchronous_commit=off -c full_page_writes=off} -c max_connections=200" >&2
  url="$(pg_url "$port")"
  pg_bootstrap "$url" "$ROOT" >&2
  "$ROOT/node_modules/.bin/supabase" db push --db-url "$url" --include-seed --yes </dev/null >&2
  psql "$url" -XAtq -c 'set client_min_messages = warning;
    create extension if not exists pgtap with schema extensions' >&2
  pooler="$(pgbouncer_start "$DIR/pgbouncer" "$url")"
  printf 'export DATABASE_URL=%q\n' "$url"
  printf 'export POOLER_DATABASE_URL=%q\n' "$(pooler_url "$pooler")"
  printf 'export PGHOST=127.0.0.1 PGPORT=%s PGUSER=postgres PGPASSWORD=postgres PGDATABASE=postgres\n' "$port"
  printf "export PGOPTIONS='-c search_path=public,extensions'\n"
}

case "${1:-reset}" in
  reset) reset ;;
  stop) stop ;;
  *) echo "usage: $0 reset|stop" >&2; exit 2 ;;
esac
