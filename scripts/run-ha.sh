#!/usr/bin/env bash
# `make run-ha`: a 3-member etcd cluster on loopback and 3 romanad replicas on it, for a
# person to try. Everything lives under $DATA_DIR/ha; Ctrl-C stops every process by PID.
set -euo pipefail
BIN=${BIN:-.venv/bin}
ROOT=${DATA_DIR:-romana-data}/ha
TOPOLOGY=${TOPOLOGY:-examples/datacenter-4-racks.json}
mkdir -p "$ROOT"
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping: ${pids[*]}"
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
  kill -9 "${pids[@]}" 2>/dev/null || true  # whatever did not stop in 5 s
}
trap stop INT TERM EXIT

cluster="e1=http://127.0.0.1:2381,e2=http://127.0.0.1:2383,e3=http://127.0.0.1:2385"
endpoints="127.0.0.1:2380,127.0.0.1:2382,127.0.0.1:2384"
for i in 1 2 3; do
  client=$((2378 + 2 * i)) peer=$((2379 + 2 * i))
  etcd --name "e$i" --data-dir "$ROOT/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-token romana-ha --initial-cluster-state new \
    >"$ROOT/etcd-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

for i in 1 2 3; do
  # Each replica lists the members starting from a different one.
  order=$(echo "$endpoints" | tr ',' '\n' | tail -n +"$i"; echo "$endpoints" | tr ',' '\n' | head -n $((i - 1)))
  "$BIN/romanad" --listen "127.0.0.1:960$i" --data-dir "$ROOT/romanad-$i" \
    --store "etcd://$(echo "$order" | paste -sd, -)" --topology "$TOPOLOGY" \
    >"$ROOT/romanad-$i.log" 2>&1 &
  pids+=($!)
  until curl -sf "http://127.0.0.1:960$i/healthz" >/dev/null 2>&1; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$ROOT/romanad-$i.log"; exit 1; }
    sleep 0.1
  done
done

cat <<TEXT
etcd members: $endpoints   romanad replicas: http://127.0.0.1:9601, :9602, :9603
logs: $ROOT/*.log   (Ctrl-C stops them all)
Try, in another shell:
  ROMANA_URL=http://127.0.0.1:9601 $BIN/romana host add node-1 192.168.1.11 --label my-location-tag=rack-2
  ROMANA_URL=http://127.0.0.1:9602 $BIN/romana ip allocate pod-1 --host node-1 --tenant default
  ROMANA_URL=http://127.0.0.1:9603 $BIN/romana ip list        # every replica has it at once
  curl -s http://127.0.0.1:9602/healthz | python3 -m json.tool   # store, endpoint, lag
TEXT
wait
