#!/bin/sh
# The NATS cluster's passwords, for docker-compose.yml's nats-init (profile `cluster`). Idempotent: a
# password is made once (random) and kept in $NATS_SECRETS_DIR:
# - ingest.password and ingest.urls: the ingesters' login and their VITALAB_NATS_URLS (every node);
# - device.password: the MQTT login `device` of devices and gateways (nats.conf).
# Read the devices' password with: docker compose exec nats-1 cat /run/vitalab/nats/device.password
set -eu
dir="${NATS_SECRETS_DIR:-/secrets}"
nodes="${NATS_NODES:-nats-1 nats-2 nats-3}"
umask 077
mkdir -p "$dir"

# letters and digits with a letter first: nats.conf takes the passwords from environment variables, whose
# values nats-server parses as config values (one starting with a digit would be read as a number)
secret() {
    printf 'p%s' "$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | head -c 31)"
}

[ -s "$dir/ingest.password" ] || secret > "$dir/ingest.password"
[ -s "$dir/device.password" ] || secret > "$dir/device.password"
urls=""
for node in $nodes; do
    urls="${urls:+$urls,}nats://ingest:$(cat "$dir/ingest.password")@$node:4222"
done
printf '%s' "$urls" > "$dir/ingest.urls"
if [ "$(id -u)" = 0 ]; then
    chown 10002:10002 "$dir/ingest.password" "$dir/device.password"  # the NATS nodes' user
    chown 10001:10001 "$dir/ingest.urls"  # the vitalab image's user (the ingesters)
    chmod 0755 "$dir"
fi
chmod 0400 "$dir/ingest.password" "$dir/device.password" "$dir/ingest.urls"
echo "nats-init: passwords ready in $dir"
