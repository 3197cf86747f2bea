#!/usr/bin/env bash
# Keys at scale against the KMS emulator (tests/kms/emulator.py): readiness of a fresh process
# at 1,000 / 10,000 / 100,000 tenants, fifty concurrent process starts, and the rewrap of
# 10,000 tenants' keys from a local KEK file to KMS, killed mid-way and resumed. KMS requests
# are counted from the emulator's own access log, not from our code. Not part of CI (the
# 100,000-tenant setup alone takes minutes); the numbers are in README.
#
#   bash tests/scale/keys.sh            # SIZES="1000 10000 100000" by default
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release --locked -p encrypted-types --example keys_at_scale \
  --features sqlite,migrations,local-kek,aws-kms
bin=target/release/examples/keys_at_scale
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 tests/kms/emulator.py -H 127.0.0.1 -p "$port" 2>"$work/kms.log" >/dev/null &
kms_pid=$!
trap 'kill $kms_pid 2>/dev/null; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
key=$(python3 - "$url" <<'PY'
import sys, boto3
c = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
print(c.create_key()["KeyMetadata"]["KeyId"])
PY
)
requests() { grep -c '"POST / HTTP' "$work/kms.log" || true; }
settle() { local a b; a=$(requests); while sleep 0.3; b=$(requests); [ "$a" != "$b" ]; do a=$b; done; echo "$a"; }
sql() { python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$@"; }

echo "| tenants | keys | KMS requests at setup | ready, whole table loaded | KMS requests at start | ready, served tenant loaded | KMS requests |"
echo "|---|---|---|---|---|---|---|"
for n in ${SIZES:-1000 10000 100000}; do
  db="$work/t$n.db"
  before=$(settle)
  "$bin" setup "$db" "$n" --kms "$url" "$key" >/dev/null
  setup_requests=$(( $(settle) - before ))
  before=$(settle)
  out=$("$bin" ready "$db" --kms "$url" "$key")
  start_requests=$(( $(settle) - before ))
  ms=$(echo "$out" | sed -E 's/.*served ([0-9]+) ms.*/\1/')
  before=$(settle)
  out=$("$bin" ready "$db" --kms "$url" "$key" --served)
  served_requests=$(( $(settle) - before ))
  served_ms=$(echo "$out" | sed -E 's/.*served ([0-9]+) ms.*/\1/')
  echo "| $n | $(sql "$db" 'SELECT COUNT(*) FROM encrypted_types_keys') | $setup_requests | $ms ms | $start_requests | $served_ms ms | $served_requests |"
  last_db=$db
done

echo
echo "Fifty processes started at once on the last table, each reading a random tenant's row:"
for mode in "" --served; do
  before=$(settle)
  rm -f "$work"/ready.*
  pids=()
  for i in $(seq 1 50); do "$bin" ready "$last_db" --kms "$url" "$key" $mode >"$work/ready.$i" & pids+=($!); done
  wait "${pids[@]}"
  total=$(( $(settle) - before ))
  ok=$(grep -l "^ready:" "$work"/ready.* | wc -l)
  slowest=$(sed -E 's/.*served ([0-9]+) ms.*/\1/' "$work"/ready.* | sort -n | tail -1)
  echo "  ${mode:-whole table}: $ok of 50 ready; slowest first query at $slowest ms; KMS requests in all: $total"
done

echo
echo "Rewrap of 10,000 tenants from a local KEK file to KMS, killed mid-way and resumed:"
db="$work/rewrap.db"
"$bin" setup "$db" 10000 --local "$work/local.kek" >/dev/null
"$bin" rewrap "$db" --kms "$url" "$key" --local "$work/local.kek" >/dev/null 2>&1 &
job=$!
moved_q="SELECT COUNT(*) FROM encrypted_types_keys k WHERE purpose <> 'wrapping' AND kek_ref IN (SELECT 'key:' || key_id FROM encrypted_types_keys WHERE purpose = 'wrapping' AND kek_ref LIKE 'aws-kms:%')"
while kill -0 $job 2>/dev/null; do
  moved=$(sql "$db" "$moved_q" 2>/dev/null || echo 0)
  [ "${moved:-0}" -gt 0 ] && { kill -9 $job; break; }
  sleep 0.05
done
wait $job 2>/dev/null || true
echo "  killed (SIGKILL) with $(sql "$db" "$moved_q") of 20000 keys under the KMS wrapping key"
"$bin" rewrap "$db" --kms "$url" "$key" --local "$work/local.kek" | sed 's/^/  resumed: /'
echo "  SQL: keys under the KMS wrapping key: $(sql "$db" "$moved_q"); live wrapping keys not under KMS: $(sql "$db" "SELECT COUNT(*) FROM encrypted_types_keys WHERE purpose = 'wrapping' AND state <> 'destroyed' AND kek_ref NOT LIKE 'aws-kms:%'")"
rm "$work/local.kek"
"$bin" verify "$db" --kms "$url" "$key" | sed 's/^/  local KEK deleted, fresh process: /'
