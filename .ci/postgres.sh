#!/usr/bin/env bash
# Bring up a local PostgreSQL for the store tests (root, Debian/Ubuntu): install it if missing, start the
# cluster, create role infocut/infocut and database infocut_test. Idempotent.
# Run it (`export INFOCUT_TEST_PG_URL=$(.ci/postgres.sh)`) or source it (exports INFOCUT_TEST_PG_URL);
# progress goes to stderr, only the URL to stdout.

_infocut_postgres() (
    set -euo pipefail
    cd /tmp  # psql runs as postgres, which cannot read root's working directory

    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null; then
        echo "installing postgresql..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends postgresql >&2
    fi

    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
        pg_createcluster "$version" main >&2
    fi
    port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
        pg_ctlcluster "$version" main start >&2
    fi
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 1
    done
    pg_isready -h 127.0.0.1 -p "$port" >&2

    runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -p "$port" >&2 <<'SQL'
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'infocut') THEN
        ALTER ROLE infocut LOGIN PASSWORD 'infocut';
    ELSE
        CREATE ROLE infocut LOGIN PASSWORD 'infocut';
    END IF;
END
$$;
SQL
    if ! runuser -u postgres -- psql -p "$port" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'infocut_test'" | grep -q 1; then
        # Explicit UTF8: a cluster made without a locale defaults to SQL_ASCII, where psycopg returns bytes.
        runuser -u postgres -- createdb -p "$port" -O infocut -E UTF8 -T template0 --locale=C infocut_test >&2
    fi
    echo "postgresql+psycopg://infocut:infocut@127.0.0.1:${port}/infocut_test"
)

if INFOCUT_TEST_PG_URL="$(_infocut_postgres)"; then
    export INFOCUT_TEST_PG_URL
    echo "$INFOCUT_TEST_PG_URL"
else
    echo "postgres setup failed" >&2
    return 1 2>/dev/null || exit 1
fi
