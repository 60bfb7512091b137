#!/bin/sh
# Entry point of the compose stack's broker: runs mosquitto and turns changes of the vitalab account store
# into SIGHUP reloads. Whoever changes the accounts (the API registering a device, `python -m vitalab.broker
# revoke ...`) rewrites passwd/acl in the shared state directory and then bumps its `generation` file
# (vitalab.broker.reload.GenerationReload); this loop notices within VITALAB_BROKER_POLL_S seconds, sends
# SIGHUP (mosquitto rereads passwd/acl and disconnects clients whose account is gone) and writes the
# generation it applied to `applied`, which the writer may wait for.
#
#   MOSQUITTO_CONF          config file            (default /mosquitto/config/mosquitto.conf)
#   VITALAB_BROKER_STATE    account state directory (default /mosquitto/auth)
#   VITALAB_BROKER_POLL_S   poll interval, seconds  (default 1)
#   MOSQUITTO_BIN           the broker binary       (default mosquitto)
# tests/deploy/test_mosquitto_config.py runs this script against a real broker.
set -u
conf="${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}"
state="${VITALAB_BROKER_STATE:-/mosquitto/auth}"
poll="${VITALAB_BROKER_POLL_S:-1}"

generation() { cat "$state/generation" 2>/dev/null || echo 0; }
applied() { printf '%s\n' "$1" > "$state/.applied.tmp" && mv -f "$state/.applied.tmp" "$state/applied"; }

# read before the broker starts: a change made while it starts up triggers one (harmless) extra reload
seen=$(generation)
"${MOSQUITTO_BIN:-mosquitto}" -c "$conf" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
applied "$seen"

while kill -0 "$pid" 2>/dev/null; do
  sleep "$poll" &
  wait $!  # returns early on TERM/INT (the trap forwards it to the broker)
  now=$(generation)
  if [ "$now" != "$seen" ] && kill -HUP "$pid" 2>/dev/null; then
    seen=$now
    applied "$now"
  fi
done
wait "$pid"
