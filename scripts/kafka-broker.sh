#!/usr/bin/env bash
# Start a throwaway Kafka-compatible broker (tansu 0.6.0, in-memory storage) on a free
# loopback port, installing it first when missing. Prints the bootstrap address
# (127.0.0.1:PORT) on stdout; the broker's pid goes to $TANSU_PID_FILE when set.
# TANSU_ADVERTISED=HOST:PORT makes it advertise another address than its own (a proxy
# in front of it, which the broker-outage test cuts): clients connect to that one.
#
#   scripts/kafka-broker.sh --install          # only make sure tansu is installed
#   addr=$(scripts/kafka-broker.sh)            # start
#   kill "$(cat "$TANSU_PID_FILE")"            # stop
#
# tansu 0.6.0 has no topic auto-creation: create topics with
#   tansu topic create --broker tcp://$addr --partitions N NAME
# (the Rust tests create their own topics through the admin API).
set -euo pipefail

TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "== installing tansu $TANSU_VERSION (about 9 minutes on 2 cores; cached afterwards)" >&2
  cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features dynostore >&2
fi

[ "${1:-}" = "--install" ] && exit 0

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=${TANSU_LOG:-/tmp/tansu-$port.log}
# IPv4 on purpose: the advertised address is what clients connect to.
advertised=${TANSU_ADVERTISED:-127.0.0.1:$port}
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://$advertised" \
  --storage-engine memory://tansu/ >"$log" 2>&1 &
pid=$!
[ -n "${TANSU_PID_FILE:-}" ] && echo "$pid" >"$TANSU_PID_FILE"
for _ in $(seq 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "error: tansu exited at startup; see $log" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
echo "error: tansu did not listen on 127.0.0.1:$port within 10 s; see $log" >&2
kill "$pid" 2>/dev/null || true
exit 1
