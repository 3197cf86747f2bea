#!/usr/bin/env bash
# The project's test command, as README gives it. Runs everything against all three backends:
# SQLite in-process, PostgreSQL at PG_DATABASE_URL and MySQL/MariaDB at MYSQL_DATABASE_URL
# (defaults: this machine's servers). A server that is down fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_url=${PG_DATABASE_URL:-postgres://root@127.0.0.1:5432/test}
my_url=${MYSQL_DATABASE_URL:-mysql://root@127.0.0.1:3306/test}
fail=0
if ! pg_isready -q -d "$pg_url" 2>/dev/null; then
  echo "PostgreSQL is not reachable at $pg_url." >&2
  echo "  Start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
  fail=1
fi
# The quick check knows the default server only; a custom MYSQL_DATABASE_URL is checked by the
# tests themselves, which fail with the same advice.
if [ -z "${MYSQL_DATABASE_URL:-}" ] \
   && ! mariadb-admin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 \
   && ! mysqladmin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "MySQL/MariaDB is not reachable at $my_url." >&2
  echo "  Start it: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd" >&2
  fail=1
fi
if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "SoftHSM2 is missing (the PKCS#11 provider's tests use it): apt-get install softhsm2" >&2
  fail=1
fi
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo "The sqlite3 shell is missing (the example app's verify test tampers through it): apt-get install sqlite3" >&2
  fail=1
fi
if ! python3 -c 'import moto.server, cryptography' 2>/dev/null; then
  echo "The KMS emulator or the format's reference check is missing: python3 -m pip install 'moto[server]' cryptography" >&2
  fail=1
fi
[ "$fail" = 0 ] || exit 1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
echo "== the library alone and with one backend (feature sets users pick)"
cargo check --locked -p encrypted-types --no-default-features
cargo check --locked -p encrypted-types --no-default-features --features sqlite
cargo check --locked -p encrypted-types --no-default-features --features postgres,keystore
cargo check --locked -p encrypted-types --no-default-features --features mysql,async
echo "== cargo doc (no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps -p encrypted-types -p encrypted-derive --all-features
echo "== the crates as published: cargo package builds the packaged sources (embedded migrations included)"
cargo package --locked --allow-dirty -p encrypted-derive -p encrypted-types \
  --features encrypted-types/migrations,encrypted-types/sqlite,encrypted-types/postgres,encrypted-types/mysql
echo "== the example app's default build links no database client library (SQLite is bundled)"
cargo build --locked -p example-app
if ldd target/debug/clinic | grep -E 'libpq|libmysqlclient|libmariadb'; then
  echo "the default build of clinic links a database client library" >&2
  exit 1
fi
echo "== reference implementation of the format (Python) against the frozen vectors"
python3 tests/vectors/reference.py check
echo "== the mistakes no vector caught before 0.2, each made in the reference: every one must fail"
python3 tests/vectors/mutants.py
echo "== cargo test (all backends, sync and async; doctests)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --no-fail-fast --workspace --all-features 2>&1 | tee "$log"
# `--all-features` seals and opens suites 2 and 3 through AWS-LC (feature `aws-lc`); the
# known-answer vectors, Wycheproof and the tamper suite run once more on the pure-Rust default.
echo "== the format's vectors on the default (pure-Rust) AES-256-GCM-SIV"
cargo test --locked --no-fail-fast -p encrypted-types-tests --test vectors --test wycheproof \
  --test tamper --test row_binding 2>&1 | tee -a "$log"
# Built alone, so no other member's features are unified in: the features README documents
# for a PostgreSQL app with UUID keys are enough for `bind_row` on a `Uuid`.
echo "== bind_row on a UUID key with the documented features only"
cargo test --locked --no-fail-fast -p encrypted-types-uuid-app 2>&1 | tee -a "$log"
# One closing line for the whole run: cargo prints one per test binary, and the last of them
# (a crate with no doctests) says 0 passed.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; if (p == 0 || f > 0) exit 1 }' "$log"
