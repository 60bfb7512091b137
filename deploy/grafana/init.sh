#!/bin/sh
# Grafana's secrets and its read-only database login, for docker-compose.yml's grafana-init (psql of the
# TimescaleDB image; PGHOST, PGUSER, PGPASSWORD, PGDATABASE say where). Idempotent: runs on every `up`.
#
# - admin.password: GRAFANA_ADMIN_PASSWORD when set, else a random one made once (Grafana applies it when it
#   first creates its admin user; later changes: `grafana cli admin reset-admin-password`);
# - db.password: a random password made once, for the login GRAFANA_DB_USER (grafana_reader), a member of
#   vitalab_readonly (migration 0009), whose transactions are read-only and bounded in time.
# Read the admin password with: docker compose exec grafana cat /run/vitalab/grafana/admin.password
set -eu
dir="${GRAFANA_SECRETS_DIR:-/secrets}"
user="${GRAFANA_DB_USER:-grafana_reader}"
umask 077
mkdir -p "$dir"

secret() {
    head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | head -c 32
}

if [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
    printf '%s' "$GRAFANA_ADMIN_PASSWORD" > "$dir/admin.password"
elif [ ! -s "$dir/admin.password" ]; then
    secret > "$dir/admin.password"
fi
[ -s "$dir/db.password" ] || secret > "$dir/db.password"
if [ "$(id -u)" = 0 ]; then
    chown 472:0 "$dir/admin.password" "$dir/db.password"  # Grafana's user in its image
fi
chmod 0400 "$dir/admin.password" "$dir/db.password"

psql -X -q -v ON_ERROR_STOP=1 -v user="$user" -v pw="$(cat "$dir/db.password")" <<'SQL'
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN', :'user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'user', :'pw') \gexec
SELECT format('GRANT vitalab_readonly TO %I', :'user') \gexec
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'user') \gexec
SELECT format('ALTER ROLE %I SET statement_timeout = %L', :'user', '30s') \gexec
SQL
echo "grafana-init: login $user ready; secrets in $dir"
