#!/usr/bin/env bash
# memcheck.sh PROGRAM [ARGS...]: runs PROGRAM under valgrind memcheck and fails unless every
# process of the run - the program and each child it forks - reports no error and no leak.
#
# valgrind's --error-exitcode only reaches us from the first process: a forked child's exit
# status goes to the server that reaps it. So each process writes its own log, and this
# script reads them all.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed"; exit 1; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,possible \
  --errors-for-leak-kinds=definite,possible --error-exitcode=99 \
  --suppressions="$here/valgrind.supp" --log-file="$logs/vg.%p.log" "$@"
status=$?

processes=0
bad=0
for log in "$logs"/vg.*.log; do
  [ -e "$log" ] || continue
  processes=$((processes + 1))
  if ! grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
    bad=$((bad + 1))
    echo "---- memcheck: errors in $(basename "$log") ----"
    cat "$log"
  fi
done
echo "memcheck: $processes process(es) checked, $bad with errors; program exit status $status"
[ "$processes" -gt 0 ] && [ "$bad" -eq 0 ] && [ "$status" -eq 0 ]
