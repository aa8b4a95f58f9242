#!/usr/bin/env bash
# Coverage-guided fuzzing of castra's parsers with libFuzzer, on the stable
# toolchain: the sancov instrumentation flags below are stable `-C` flags
# (what cargo-fuzz passes with `--sanitizer none`), libFuzzer itself comes
# from the libfuzzer-sys crate (built with the C++ compiler). No nightly.
#
#   scripts/fuzz.sh                 # CI: every target for FUZZ_SECONDS (20) each
#   scripts/fuzz.sh --runs 10000000 # on demand: 10M executions per target
#   scripts/fuzz.sh --runs N frame  # one target
#
# Targets: frame (frame decoder + frame parsers), hello (handshake line),
# request (host socket request line), config (castra.toml loader). Each
# input is fed whole, split at a point the input picks, and one byte at a
# time; the outcomes must agree (fuzz/src/lib.rs). A crash leaves its input
# in fuzz/artifacts/<target>/ and fails the script; make it a regression
# test (see docs/FUZZING.md). The corpus grows in fuzz/corpus/<target>/
# (ignored by git); the seeds in fuzz/seeds/<target>/ are committed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

runs=""
seconds="${FUZZ_SECONDS:-20}"
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(frame hello request config)

triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the flags off build scripts (they are not linked with libFuzzer).
cargo build --release --quiet --target "$triple" $(printf -- '--bin %s ' "${targets[@]}")

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  limit=(-max_total_time="$seconds")
  [ -n "$runs" ] && limit=(-runs="$runs")
  dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "fuzz.sh: $t ${limit[*]}"
  log="artifacts/$t/last-run.log"
  if ! "target/$triple/release/$t" "${limit[@]}" "${dict[@]}" -max_len=4096 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz.sh: $t FAILED: the crashing input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "fuzz.sh: $t ok: $execs executions, $cov, corpus $(ls "corpus/$t" | wc -l) inputs"
done
