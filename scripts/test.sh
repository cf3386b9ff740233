#!/usr/bin/env bash
# scripts/test.sh — the hermetic test pipeline (`npm test`, `.ci/run`).
#
# Starts a throwaway PostgreSQL 15 (unless TEST_DATABASE_URL is set), gives it
# what hosted Supabase has (scripts/bootstrap-supabase.sql), applies
# supabase/migrations with `supabase db push` exactly as an operator does,
# then runs: second push (must be a no-op), `supabase db lint`, pgTAP
# (pg_prove), deno fmt/lint/check, `deno test` and the browser test
# (tests/browser/, Debian's chromium, installed when root and missing).
# PgBouncer (transaction mode, port 6543 when free) stands in front of the
# database for the tests that run many function processes through a pooler.
#
# Every step after the database is up runs even if an earlier one failed; the
# last line of output is always `N passed, N failed`; exit 0 only if N failed = 0.
set -euo pipefail
export RUST_BACKTRACE=0 NO_COLOR=1 DO_NOT_TRACK=1 SUPABASE_TELEMETRY_DISABLED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTIFACTS="$ROOT/.test-artifacts"
# shellcheck source=scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh" # PG_PACKAGES, pg_init, pg_start_on_free_port, pg_discard …
# Schemas that are Supabase's or Postgres's, not ours: never linted.
NOT_OUR_SCHEMAS="'information_schema','extensions','auth','supabase_migrations','cron'"

DENO="$ROOT/node_modules/.bin/deno"
SUPABASE="$ROOT/node_modules/.bin/supabase"
CLUSTER_DIR=""
DB_URL=""
POOLER_DIR=""  # PgBouncer's folder (inside CLUSTER_DIR when the cluster is ours)
POOLER_URL=""
JOB_PID="" # process group of a running run_logged job

# ---------------------------------------------------------------- bookkeeping
# Per-suite counts, in first-seen order, plus per-step timings.
declare -A PASSED=() FAILED=()
SUITES=()
STEP_TIMES=()

log() { printf '==> %s\n' "$*"; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

add() { # add SUITE PASSED FAILED
  if [[ -z "${PASSED[$1]+x}" ]]; then
    SUITES+=("$1"); PASSED[$1]=0; FAILED[$1]=0
  fi
  PASSED[$1]=$((PASSED[$1] + $2))
  FAILED[$1]=$((FAILED[$1] + $3))
}
check_result() { # check_result NAME RC — a pipeline check counts as one test
  if [[ "$2" -eq 0 ]]; then add pipeline 1 0; else add pipeline 0 1; log "FAILED: $1"; fi
}

timed() { # timed LABEL FUNCTION... — runs a step, records its duration
  local label="$1" t0 rc=0
  shift
  t0="$(now)"
  "$@" || rc=$?
  STEP_TIMES+=("$(printf '%-28s %s' "$label" "$(elapsed "$t0")")")
  return "$rc"
}

run_logged() { # run_logged LOGFILE CMD... — stream output and keep a copy
  # Runs as a background job in its own process group (set -m) and is waited
  # for: a trapped INT/TERM then interrupts `wait` at once (bash defers traps
  # while a foreground child runs), and cleanup can stop the whole job.
  local logfile="$1" rc=0
  shift
  set -m
  ( "$@" 2>&1 | tee "$logfile"; exit "${PIPESTATUS[0]}" ) &
  JOB_PID=$!
  set +m
  wait "$JOB_PID" || rc=$?
  JOB_PID=""
  return "$rc"
}

summary() {
  local s tp=0 tf=0
  echo
  log "summary"
  for s in "${STEP_TIMES[@]}"; do printf '    %s\n' "$s"; done
  echo
  printf '    %-12s %8s %8s\n' suite passed failed
  for s in "${SUITES[@]}"; do
    printf '    %-12s %8d %8d\n' "$s" "${PASSED[$s]}" "${FAILED[$s]}"
    tp=$((tp + PASSED[$s])); tf=$((tf + FAILED[$s]))
  done
  echo
  printf '%d passed, %d failed\n' "$tp" "$tf"
  [[ "$tf" -eq 0 ]]
}

# The database could not be set up: nothing later can run.
setup_failed() {
  log "FAILED: $1 (later steps need the database; stopping)"
  add setup 0 1
  summary || true
  exit 1
}

# -------------------------------------------------------------------- cleanup
# Always stop and delete the throwaway cluster: on success, failure, Ctrl-C, kill.
cleanup() {
  local rc=$?
  # Ignore further signals while cleaning up: npm forwards the Ctrl-C it got to this script
  # too, and a second signal must not cut the cleanup short (leaving PostgreSQL running).
  trap - EXIT
  trap '' INT TERM
  if [[ -n "$JOB_PID" ]]; then kill -TERM -- "-$JOB_PID" 2>/dev/null || true; fi
  if [[ -n "$POOLER_DIR" ]]; then pgbouncer_stop "$POOLER_DIR" 2>/dev/null || true; fi
  pg_discard "$CLUSTER_DIR"
  if [[ -n "$POOLER_DIR" && -z "$CLUSTER_DIR" ]]; then rm -rf "$(dirname "$POOLER_DIR")"; fi
  exit "$rc"
}
trap cleanup EXIT
# A signal trap that merely ran cleanup would let bash carry on with the
# script; exiting instead runs the EXIT trap (cleanup) and stops.
trap 'echo; log "interrupted"; exit 130' INT
trap 'echo; log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------- steps
step_node_tools() {
  cd "$ROOT"
  if [[ ! -x "$DENO" || ! -x "$SUPABASE" ]]; then
    log "npm ci (deno and supabase CLI come from package.json)"
    npm ci --no-audit --no-fund || return 1
  fi
  "$DENO" --version | head -n1 && echo "supabase $("$SUPABASE" --version)"
}

step_debian_packages() {
  local missing=()
  mapfile -t missing < <(missing_debian_packages "${PG_PACKAGES[@]}")
  if [[ ${#missing[@]} -gt 0 && "$(id -u)" -ne 0 && -n "${TEST_DATABASE_URL:-}" ]] &&
    command -v pg_prove >/dev/null && command -v psql >/dev/null && [[ -x "$PGBOUNCER_BIN" ]]; then
    # The server behind TEST_DATABASE_URL must provide pgtap, pg_cron and
    # plpgsql_check itself; locally we only need the clients (and PgBouncer).
    echo "not root; missing ${missing[*]}, but psql and pg_prove exist"
    return 0
  fi
  install_debian_packages "${PG_PACKAGES[@]}"
}

step_start_cluster() {
  local port
  CLUSTER_DIR="$(mktemp -d -t pgtest.XXXXXX)"
  pg_init "$CLUSTER_DIR/data" "$CLUSTER_DIR/initdb.log" || return 1
  port="$(pg_start_on_free_port "$CLUSTER_DIR/data" "$CLUSTER_DIR/log" "$CLUSTER_DIR" \
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")" ||
    return 1
  DB_URL="$(pg_url "$port")"
  echo "cluster $CLUSTER_DIR on 127.0.0.1:$port"
}

# PgBouncer in transaction mode on port 6543 (any free port if a parallel run holds it), in
# front of the database, as Supabase's pooler: tests/pooler.test.ts runs four function
# processes through it (POOLER_DATABASE_URL).
step_start_pooler() {
  local port
  if [[ -n "$CLUSTER_DIR" ]]; then
    POOLER_DIR="$CLUSTER_DIR/pgbouncer"
  else
    POOLER_DIR="$(mktemp -d -t pgbouncer-test.XXXXXX)/pgbouncer"
    if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$(dirname "$POOLER_DIR")" || return 1; fi
  fi
  port="$(pgbouncer_start "$POOLER_DIR" "$DB_URL")" || return 1
  POOLER_URL="$(pooler_url "$port")"
  echo "pgbouncer (transaction mode) on 127.0.0.1:$port"
}

step_bootstrap() {
  pg_bootstrap "$DB_URL" "$ROOT"
}

migration_history() { # empty before the first push (the table does not exist yet)
  psql "$DB_URL" -XAtq -c "select count(*), string_agg(version, ',' order by version)
    from supabase_migrations.schema_migrations" 2>/dev/null || true
}

step_db_push() {
  # </dev/null: never wait for a prompt (--yes answers it anyway).
  "$SUPABASE" db push --db-url "$DB_URL" --include-seed --yes </dev/null || return 1
  echo "migration history: $(migration_history)"
}

step_db_push_again() {
  local before after out rc=0
  before="$(migration_history)"
  out="$("$SUPABASE" db push --db-url "$DB_URL" --yes </dev/null 2>&1)" || rc=$?
  after="$(migration_history)"
  printf '%s\n' "$out"
  if [[ "$rc" -ne 0 ]]; then
    echo "second push exited $rc"; return 1
  fi
  if [[ "$before" != "$after" ]]; then
    printf 'migration history changed:\n  before: %s\n  after:  %s\n' "$before" "$after"; return 1
  fi
  if grep -q 'Applying migration' <<<"$out"; then
    echo "second push applied migrations"; return 1
  fi
  echo "no-op: history unchanged ($after)"
}

step_db_lint() {
  # Lint only our schemas: the default (all non-system schemas) includes
  # `extensions`, where pgTAP's own functions fail plpgsql_check.
  local schemas
  schemas="$(psql "$DB_URL" -XAtq -c "select string_agg(nspname, ',' order by nspname)
    from pg_namespace where nspname !~ '^pg_' and nspname not in ($NOT_OUR_SCHEMAS)")" ||
    return 1
  echo "schemas: $schemas"
  "$SUPABASE" db lint --db-url "$DB_URL" --schema "$schemas" --fail-on error </dev/null
}

pg_env() { # DB_URL -> NUL-separated PG*=value (pg_prove mangles a URL containing '=')
  node -e '
    const u = new URL(process.argv[1]);
    const d = decodeURIComponent;
    const env = { PGHOST: d(u.hostname), PGPORT: u.port || "5432", PGUSER: d(u.username),
      PGPASSWORD: d(u.password), PGDATABASE: d(u.pathname.slice(1)) || "postgres",
      PGSSLMODE: u.searchParams.get("sslmode") || "" };
    for (const [k, v] of Object.entries(env)) if (v) process.stdout.write(`${k}=${v}\0`);
  ' "$DB_URL"
}

step_pgtap() {
  local logfile="$ARTIFACTS/pgtap.log" rc=0 ok bad crashed pgvars=()
  if ! find "$ROOT/supabase/tests" -name '*.sql' 2>/dev/null | grep -q .; then
    echo "no pgTAP files under supabase/tests"; return 0
  fi
  # pgTAP goes in `extensions` (as on hosted Supabase), never in a migration;
  # the tests call it unqualified, hence the search_path.
  psql "$DB_URL" -v ON_ERROR_STOP=1 -q \
    -c 'set client_min_messages = warning; create extension if not exists pgtap with schema extensions' ||
    { add pgtap 0 1; return 0; }
  mapfile -d '' -t pgvars < <(pg_env)
  run_logged "$logfile" env "${pgvars[@]}" PGOPTIONS='-c search_path=public,extensions' \
    pg_prove -v --ext .sql -r "$ROOT/supabase/tests" || rc=$?
  ok="$(grep -cE '^\s*ok [0-9]+' "$logfile" || true)"
  # `not ok … # TODO` is an expected failure: prove does not fail on it.
  bad="$(grep -E '^\s*not ok [0-9]+' "$logfile" | grep -cv '# TODO' || true)"
  # A bad plan or a crashed file fails without any `not ok` line; prove's
  # summary report lists such a file with `Failed: 0`: one failure each.
  crashed="$(grep -cE '\(Wstat: [0-9]+.* Tests: [0-9]+ +Failed: 0\)' "$logfile" || true)"
  bad=$((bad + crashed))
  if [[ "$rc" -ne 0 && "$bad" -eq 0 ]]; then bad=1; fi
  add pgtap "$ok" "$bad"
  echo "pgTAP: $ok passed, $bad failed (log: ${logfile#"$ROOT/"})"
}

deno_targets() { # what `deno check` should see
  local f
  for f in "$ROOT"/supabase/functions/*/index.ts; do [[ -f "$f" ]] && echo "${f#"$ROOT/"}"; done
  if find "$ROOT/tests" -name '*.ts' 2>/dev/null | grep -q .; then echo tests/; fi
  local d
  for d in scripts storefront local; do
    if find "$ROOT/$d" -name '*.ts' 2>/dev/null | grep -q .; then echo "$d/"; fi
  done
}

ensure_deno_json() { # the other engineer extends it; never overwrite
  [[ -f "$ROOT/deno.json" ]] && return 0
  cat >"$ROOT/deno.json" <<'EOF'
{"nodeModulesDir":"none","compilerOptions":{"strict":true,"noUncheckedIndexedAccess":true},"fmt":{"lineWidth":100},"lint":{"rules":{"tags":["recommended"]}},"exclude":["node_modules/",".tmp/",".test-artifacts/"],"imports":{}}
EOF
  echo "created a minimal deno.json"
}

step_deno_check() {
  local targets=()
  mapfile -t targets < <(deno_targets)
  if [[ ${#targets[@]} -eq 0 ]]; then
    echo "nothing to type-check yet"; return 0
  fi
  "$DENO" check "${targets[@]}"
}

count_deno_tests() { # count_deno_tests SUITE LOGFILE RC — adds `deno test`'s summary counts
  local line passed failed
  # Summary line: `ok | 12 passed | 0 failed (1s)` / `FAILED | 3 passed | 1 failed (2s)`
  line="$(grep -E '^(ok|FAILED) \| ' "$2" | tail -n1 || true)"
  passed="$(sed -nE 's/.*\| ([0-9]+) passed.*/\1/p' <<<"$line")"
  failed="$(sed -nE 's/.*\| ([0-9]+) failed.*/\1/p' <<<"$line")"
  passed="${passed:-0}" failed="${failed:-0}"
  if [[ "$3" -ne 0 && "$failed" -eq 0 ]]; then failed=1; fi
  add "$1" "$passed" "$failed"
}

step_deno_test() {
  local logfile="$ARTIFACTS/deno-test.log" rc=0
  if ! find "$ROOT/tests" "$ROOT/local" -name '*_test.ts' -o -name '*.test.ts' 2>/dev/null |
    grep -q .; then
    echo "no *_test.ts or *.test.ts files under tests/ or local/"; return 0
  fi
  # tests/browser/ is the next step's; local/ holds the tools' own tests (local/stripe/).
  DATABASE_URL="$DB_URL" POOLER_DATABASE_URL="$POOLER_URL" run_logged "$logfile" \
    "$DENO" test --allow-all --ignore=tests/browser \
    tests/ local/ || rc=$?
  count_deno_tests deno-test "$logfile" "$rc"
}

# The storefront in Debian's Chromium (playwright-core), against the local stack `npm start`
# runs, on this pipeline's database. Screenshots: .test-artifacts/screenshots/.
step_browser_test() {
  local logfile="$ARTIFACTS/browser-test.log" rc=0
  if ! find "$ROOT/tests/browser" -name '*.test.ts' 2>/dev/null | grep -q .; then
    echo "no *.test.ts files under tests/browser/"; return 0
  fi
  if [[ -z "${CHROMIUM_PATH:-}" ]] && ! install_debian_packages chromium; then
    add browser 0 1; return 0
  fi
  rm -rf "$ARTIFACTS/screenshots"
  DATABASE_URL="$DB_URL" run_logged "$logfile" "$DENO" test --allow-all tests/browser/ || rc=$?
  count_deno_tests browser "$logfile" "$rc"
}

# ----------------------------------------------------------------------- main
main() {
  local rc
  cd "$ROOT"
  mkdir -p "$ARTIFACTS"

  log "node tools"
  timed "node tools" step_node_tools || setup_failed "node tools (npm ci)"

  log "debian packages"
  timed "debian packages" step_debian_packages || setup_failed "debian packages"

  if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
    log "database: TEST_DATABASE_URL (no throwaway cluster)"
    DB_URL="$TEST_DATABASE_URL"
  else
    log "start throwaway cluster"
    timed "start cluster" step_start_cluster || setup_failed "cluster start"
  fi

  log "start PgBouncer (transaction pooler)"
  timed "start pooler" step_start_pooler || setup_failed "pgbouncer start"

  log "bootstrap Supabase roles/schemas"
  timed "bootstrap" step_bootstrap || setup_failed "bootstrap"

  log "supabase db push --include-seed"
  if timed "db push" step_db_push; then add pipeline 1 0; else setup_failed "db push"; fi

  log "supabase db push again (must be a no-op)"
  rc=0; timed "db push (again)" step_db_push_again || rc=$?
  check_result "second db push is not a no-op" "$rc"

  log "supabase db lint"
  rc=0; timed "db lint" step_db_lint || rc=$?
  check_result "db lint" "$rc"

  log "pgTAP (pg_prove)"
  timed "pgTAP" step_pgtap || true

  ensure_deno_json

  log "deno fmt --check"
  rc=0; timed "deno fmt" "$DENO" fmt --check || rc=$?
  check_result "deno fmt --check" "$rc"

  log "deno lint"
  rc=0; timed "deno lint" "$DENO" lint || rc=$?
  check_result "deno lint" "$rc"

  log "deno check"
  rc=0; timed "deno check" step_deno_check || rc=$?
  check_result "deno check" "$rc"

  log "deno test"
  timed "deno test" step_deno_test || true

  log "browser test (Chromium + playwright-core)"
  timed "browser test" step_browser_test || true

  summary
}

main "$@"
