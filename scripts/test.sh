#!/usr/bin/env bash
# Every check castra has: host setup, formatting, lints, unit, CLI, broker and
# end-to-end tests (real QEMU guests under TCG). `.ci/run` runs exactly this,
# inside a brand-new Debian root (scripts/fresh-root.sh).
# Prints how long each phase took (set-up, build, tests) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

phases=()
mark=$(date +%s)
phase_done() { # NAME: the time since the last mark goes to NAME
  local now
  now=$(date +%s)
  phases+=("$1 $((now - mark))s")
  mark=$now
}
log=$(mktemp -d)
report() {
  [ ${#phases[@]} -gt 0 ] && echo "test.sh: phases: ${phases[*]}"
  # What ran: every cargo test binary with its counts (none is optional: a test
  # whose tool is missing fails), then check-nix's optional parts, ran or skipped.
  if [ -s "$log/cargo" ]; then
    echo "test.sh: suites:"
    awk '/^ *Running /{name=($2=="unittests")?$3:$2} /^test result:/{sub(/^test result: /,""); sub(/; finished.*/,""); print "  " name ": " $0}' "$log/cargo"
  fi
  if [ -s "$log/nix" ]; then
    echo "test.sh: optional nix checks:"
    grep -E '^(ok|skip) ' "$log/nix" | sed 's/^/  /'
  fi
  rm -rf "$log"
}
trap report EXIT

./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
phase_done set-up

cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --all-targets -- -D warnings
# castra, the static guest agent and the default image the e2e tests boot.
./scripts/build.sh >/dev/null
# The Debian+Nix guest tests/e2e_nix.rs boots (debootstrap: a few minutes the
# first time, then a no-op until its inputs change; needs root).
./guest/debian-nix/build.sh >/dev/null
cargo test --lib --bins --tests --no-run --quiet
phase_done build

# Nix files: parse every one, evaluate what evaluates offline (docs/NIX.md).
CASTRA_BIN="$PWD/target/debug/castra" ./scripts/check-nix.sh | tee "$log/nix"
# Benchmarks are left out on purpose: they run on demand (cargo bench).
INSTA_UPDATE=no cargo test --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log/cargo"
phase_done tests

# A short coverage-guided fuzz run of every parser (docs/FUZZING.md; the long
# run is `scripts/fuzz.sh --runs 10000000`).
FUZZ_SECONDS=15 ./scripts/fuzz.sh
phase_done fuzz
