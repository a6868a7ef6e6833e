# PostgreSQL for tests/hpo/test_postgres.py (sourced by .ci/system-deps.sh, as root).
#
# Installs Debian's `postgresql` only when missing, starts its cluster on 127.0.0.1 only (never
# on another interface) when it is not running, and creates the test role and database when
# they do not exist. Tests reach it at the fixed URL
#   postgresql://sweep:sweep-test-pw@127.0.0.1:5432/sweeps_test
# and skip themselves when nothing answers there. Nothing is exported.

_pg_setup() {
  local version cluster=main port=5432 conf
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres \
      >/dev/null 2>&1; then
    echo "postgres.sh: installing postgresql from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
      >/dev/null
  fi
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if [ ! -d "/etc/postgresql/$version/$cluster" ]; then
    pg_createcluster "$version" "$cluster" --port "$port" >/dev/null
  fi
  # Loopback only, on the port the tests use (conf.d is read after postgresql.conf).
  conf="/etc/postgresql/$version/$cluster/conf.d/sd-lora-sweep-tests.conf"
  if [ ! -f "$conf" ]; then
    printf "listen_addresses = '127.0.0.1'\nport = %s\n" "$port" > "$conf"
    chown postgres:postgres "$conf"
    pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1 \
      && pg_ctlcluster "$version" "$cluster" restart
  fi
  if ! pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
    echo "postgres.sh: starting PostgreSQL $version/$cluster on 127.0.0.1:$port"
    pg_ctlcluster "$version" "$cluster" start
  fi
  local tries=0
  until pg_isready -q -h 127.0.0.1 -p "$port"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 30 ]; then
      echo "postgres.sh: PostgreSQL did not answer on 127.0.0.1:$port" >&2
      return 1
    fi
    sleep 1
  done
  # Role and database for the tests, created once (the password is a test fixture only).
  runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 -d postgres <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sweep') THEN
    CREATE ROLE sweep LOGIN PASSWORD 'sweep-test-pw';
  END IF;
END
$$;
SQL
  if [ "$(runuser -u postgres -- psql -p "$port" -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'sweeps_test'")" != "1" ]; then
    runuser -u postgres -- createdb -p "$port" -O sweep sweeps_test
  fi
}

_pg_setup
unset -f _pg_setup
