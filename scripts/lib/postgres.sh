# scripts/lib/postgres.sh — sourced by scripts/test.sh and bench/bench.sh (throwaway clusters),
# scripts/start.sh (the local cluster kept under .local/) and scripts/dev-db.sh. Plain functions,
# no side effects when sourced.
#
# A cluster is Debian's PostgreSQL 15 with pg_cron preloaded (the migrations schedule jobs),
# listening on 127.0.0.1 only, with trust authentication: local and CI use only.

PG_BIN=/usr/lib/postgresql/15/bin
# What the migrations need (pg_cron), and what the test pipeline adds (pgTAP, plpgsql_check).
PG_SERVER_PACKAGES=(postgresql-15 postgresql-15-cron)
PG_PACKAGES=("${PG_SERVER_PACKAGES[@]}" postgresql-15-pgtap postgresql-15-plpgsql-check pgbouncer)
# Debian's PgBouncer stands in for Supabase's transaction pooler (port 6543).
PGBOUNCER_BIN=/usr/sbin/pgbouncer

as_postgres() { # initdb/pg_ctl refuse to run as root
  if [[ "$(id -u)" -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

missing_debian_packages() { # missing_debian_packages PKG... — prints the ones not installed
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      printf '%s\n' "$p"
    fi
  done
}

install_debian_packages() { # install_debian_packages PKG... — installs the missing ones (root)
  local missing=()
  mapfile -t missing < <(missing_debian_packages "$@")
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "all present: $*"
  elif [[ "$(id -u)" -eq 0 ]]; then
    echo "installing ${missing[*]}"
    apt-get update -q || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "ERROR: missing Debian packages: ${missing[*]}" >&2
    echo "       install them as root: apt-get install ${missing[*]}" >&2
    return 1
  fi
}

free_port() { # ask the kernel for a free port on loopback
  node -e 'const s = require("net").createServer();
    s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

port_is_free() { # port_is_free PORT — true when nothing listens on 127.0.0.1:PORT
  node -e 'const s = require("net").createServer();
    s.once("error", () => process.exit(1));
    s.listen(Number(process.argv[1]), "127.0.0.1", () => s.close(() => process.exit(0)));' "$1"
}

pg_url() { # pg_url PORT — the superuser URL of a local cluster
  printf 'postgresql://postgres:postgres@127.0.0.1:%s/postgres?sslmode=disable' "$1"
}

pg_init() { # pg_init DATA_DIR LOGFILE — initdb (as postgres), C.UTF-8 where available
  local data="$1" logfile="$2" parent
  parent="$(dirname "$data")"
  mkdir -p "$parent"
  if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$parent" || return 1; fi
  if ! as_postgres "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
    --locale=C.UTF-8 >"$logfile" 2>&1; then
    rm -rf "$data"
    as_postgres "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
      --locale=C >"$logfile" 2>&1 || { cat "$logfile" >&2; return 1; }
  fi
}

pg_running() { # pg_running DATA_DIR — true when a postmaster serves DATA_DIR
  [[ -f "$1/postmaster.pid" ]] && as_postgres "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1
}

pg_start() { # pg_start DATA_DIR LOGFILE PORT SOCKET_DIR [EXTRA_SERVER_OPTIONS]
  # An empty SOCKET_DIR means TCP only (pg_ctl -w watches postmaster.pid, not a socket).
  # EXTRA_SERVER_OPTIONS come last, so a `-c name=value` there overrides the one set here
  # (the bench preloads pg_stat_statements too).
  local data="$1" logfile="$2" port="$3" sockets="${4:-}" extra="${5:-}"
  as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$logfile" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$sockets' \
        -c shared_preload_libraries=pg_cron -c cron.database_name=postgres $extra" >/dev/null
}

pg_start_on_free_port() { # pg_start_on_free_port DATA_DIR LOGFILE SOCKET_DIR [EXTRA]
  # pg_start on a free port; prints the port. The port is free when asked but could be taken
  # before postgres binds it: retry.
  local data="$1" logfile="$2" sockets="$3" extra="${4:-}" port attempt
  for attempt in 1 2 3; do
    port="$(free_port)" || return 1
    if pg_start "$data" "$logfile" "$port" "$sockets" "$extra"; then
      printf '%s\n' "$port"
      return 0
    fi
    echo "server failed to start (attempt $attempt); log:" >&2
    cat "$logfile" >&2 || true
  done
  return 1
}

pg_stop() { # pg_stop DATA_DIR [MODE] — MODE fast (default, clean) or immediate (throwaway)
  [[ -f "$1/postmaster.pid" ]] || return 0
  as_postgres "$PG_BIN/pg_ctl" -D "$1" -m "${2:-fast}" -w -t 60 stop >/dev/null
}

pg_discard() { # pg_discard CLUSTER_DIR — stop a throwaway cluster (its data/) at once, delete it
  [[ -n "${1:-}" && -d "$1" ]] || return 0
  pgbouncer_stop "$1/pgbouncer" 2>/dev/null || true
  pg_stop "$1/data" immediate 2>/dev/null || true
  rm -rf "$1"
}

# PgBouncer in transaction mode in front of one database, as Supabase's pooler is: port 6543
# when free (else any free port: say so to the functions with DB_TRANSACTION_POOLER=true), trust
# on loopback, run as postgres with its own config, pid and log file in DIR. pg_discard of the
# cluster folder stops it too (DIR = CLUSTER_DIR/pgbouncer).
pgbouncer_start() { # pgbouncer_start DIR DATABASE_URL — prints the pooler's port
  local dir="$1" url="$2" target port attempt
  # host=… port=… dbname=… user=… password=… of the database behind it.
  target="$(node -e '
    const u = new URL(process.argv[1]);
    const d = decodeURIComponent;
    const parts = { host: d(u.hostname), port: u.port || "5432",
      dbname: d(u.pathname.slice(1)) || "postgres", user: d(u.username), password: d(u.password) };
    console.log(Object.entries(parts).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(" "));
  ' "$url")" || return 1
  mkdir -p "$dir"
  if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$dir" || return 1; fi
  port=6543
  port_is_free "$port" || port="$(free_port)" || return 1
  printf '"postgres" "postgres"
' >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<EOF_INI
[databases]
postgres = $target
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
admin_users = postgres
stats_users = postgres
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF_INI
  if [[ "$(id -u)" -eq 0 ]]; then chown postgres "$dir"/*; fi
  as_postgres "$PGBOUNCER_BIN" -d -q "$dir/pgbouncer.ini" || { cat "$dir/pgbouncer.log" >&2; return 1; }
  for attempt in $(seq 1 100); do
    if psql "postgresql://postgres@127.0.0.1:$port/postgres?sslmode=disable" -XAtqc 'select 1' \
      >/dev/null 2>&1; then
      printf '%s\n' "$port"
      return 0
    fi
    sleep 0.1
  done
  echo "pgbouncer did not accept connections on $port; log:" >&2
  cat "$dir/pgbouncer.log" >&2 || true
  return 1
}

pgbouncer_stop() { # pgbouncer_stop DIR — stops the PgBouncer that pgbouncer_start ran there
  local pid attempt
  [[ -f "$1/pgbouncer.pid" ]] || return 0
  pid="$(cat "$1/pgbouncer.pid")"
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for attempt in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

pooler_url() { # pooler_url PORT — the URL the functions use through the pooler
  printf 'postgresql://postgres:postgres@127.0.0.1:%s/postgres?sslmode=disable' "$1"
}

pg_bootstrap() { # pg_bootstrap URL ROOT — what hosted Supabase has (idempotent; local/CI only)
  psql "$1" -v ON_ERROR_STOP=1 -q -f "$2/scripts/bootstrap-supabase.sql"
}
