#!/usr/bin/env bash
# Runs COMMAND [ARGS...] INITIAL_PEER against a one-server swarm on 127.0.0.1 that serves every block
# of MODEL_DIR, then stops the server. The examples' generation demos run under it:
#   examples/with_swarm.sh MODEL_DIR ./target/c/generate MODEL_DIR
# The server is `kwaainet start` ($KWAAINET, default target/debug/kwaainet).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 MODEL_DIR COMMAND [ARGS...]" >&2
    exit 2
fi
model=$1
shift
kwaainet=${KWAAINET:-$(dirname "$0")/../target/debug/kwaainet}
layers=$(sed -n 's/.*"num_hidden_layers": *\([0-9][0-9]*\).*/\1/p' "$model/config.json")
[ -n "$layers" ] || { echo "$model/config.json has no num_hidden_layers" >&2; exit 2; }

# A home of its own, so that a kwaainet node the user runs is neither reused nor in the way.
home=$(mktemp -d)
log=$home/server.log
KWAAINET_HOME=$home "$kwaainet" start --model "$model" --block-indices "0:$layers" --host-maddrs /ip4/127.0.0.1/tcp/0 \
    --throughput 1 --torch-dtype float32 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$home"' EXIT

# The server prints its address once its blocks are served.
peer=
for _ in $(seq 600); do
    peer=$(sed -n 's/^listening on: //p' "$log" | head -1)
    [ -n "$peer" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "the server stopped" >&2; exit 1; }
    sleep 0.1
done
[ -n "$peer" ] || { cat "$log" >&2; echo "the server did not start within 60 s" >&2; exit 1; }
"$@" "$peer"
