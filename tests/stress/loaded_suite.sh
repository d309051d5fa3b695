#!/usr/bin/env bash
# The whole suite, RUNS times in a row, with a CPU hog on every core: a test that only
# passes on an idle machine fails here. Builds a GCC build (build-loaded/) and a Clang TSan
# build (build-loaded-tsan/) first unless SKIP_BUILD=1.
#
#   tests/stress/loaded_suite.sh [RUNS]      (default 5; prints one line per run, exit 1 on
#                                             any failure)
set -uo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
jobs=$(nproc)
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cmake -S . -B build-loaded -DSOCKETSERVER_BUILD_TESTS=ON -DSOCKETSERVER_WARNINGS_AS_ERRORS=ON >/dev/null &&
    cmake --build build-loaded -j"$jobs" >/dev/null || exit 1
  cmake -S . -B build-loaded-tsan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug \
    -DSOCKETSERVER_BUILD_TESTS=ON -DSOCKETSERVER_SANITIZE=thread >/dev/null &&
    cmake --build build-loaded-tsan -j"$jobs" >/dev/null || exit 1
fi
hogs=()
for ((i = 0; i < jobs; i++)); do
  (while :; do :; done) &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
failed=0
for ((r = 1; r <= runs; r++)); do
  for build in build-loaded build-loaded-tsan; do
    log=$build/loaded-run-$r.log
    start=$(date +%s)
    if [ "$build" = build-loaded-tsan ]; then
      setarch "$(uname -m)" -R ctest --test-dir "$build" -j"$jobs" --no-tests=error \
        -E '^(compile_fail|package)_' >"$log" 2>&1
    else
      ctest --test-dir "$build" -j"$jobs" --no-tests=error >"$log" 2>&1
    fi
    rc=$?
    summary=$(grep -E 'tests passed' "$log")
    printf 'run %d %-18s rc=%d %4ds  %s\n' "$r" "$build" "$rc" $(($(date +%s) - start)) "$summary"
    if [ $rc -ne 0 ]; then
      failed=1
      grep -E '^\s+[0-9]+ - ' "$log"
    fi
  done
done
exit $failed
