#!/usr/bin/env bash
# clang-tidy (16 or later; Debian 12's 14 cannot parse the emulator's headers) with the checks in
# .clang-tidy over kiln's host translation units: every .cpp of the libraries and the CLI in
# compile_commands.json, not the tests and not the generated emulator units of the .cu files.
# Two at a time; fails on any finding, naming it.
#   bash tools/scripts/check-tidy.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$(cd "$1" && pwd) build=$(cd "$2" && pwd)
tidy=$(command -v clang-tidy-19 || command -v clang-tidy-16) ||
  { echo "check-tidy: clang-tidy 16 or 19 not found (tools/scripts/install-deps.sh installs clang-tidy-16)" >&2; exit 1; }
[[ -f "$build/compile_commands.json" ]] || { echo "check-tidy: no $build/compile_commands.json" >&2; exit 1; }
mapfile -t files < <(python3 - "$build/compile_commands.json" "$src" <<'PY'
import json, sys
src = sys.argv[2] + "/"
for entry in json.load(open(sys.argv[1])):
    f = entry["file"]
    if f.startswith(src) and f.endswith(".cpp") and not f.startswith((src + "tests/", src + "build")):
        print(f)
PY
)
# The compile commands are GCC's, whose omp.h clang cannot parse, and clang-tidy's resource
# directory has none: LLVM's omp.h (libomp-dev) alone goes on its path.
omp_h=$(ls /usr/lib/llvm-*/lib/clang/*/include/omp.h 2> /dev/null | tail -1)
[[ -n "$omp_h" ]] || { echo "check-tidy: no LLVM omp.h (install libomp-dev)" >&2; exit 1; }
out=$(mktemp) omp=$(mktemp -d)
trap 'rm -rf "$out" "$omp"' EXIT
ln -s "$omp_h" "$omp/omp.h"
status=0
printf '%s\n' "${files[@]}" | sort -u |
  xargs -P 2 -n 4 "$tidy" -p "$build" --quiet --extra-arg=-isystem"$omp" > "$out" 2>&1 || status=$?
if ((status != 0)) || grep -qE "(warning|error):" "$out"; then
  grep -E "(warning|error):" "$out" >&2 || cat "$out" >&2
  echo "check-tidy: findings above ($("$tidy" --version | grep -o 'version [0-9.]*'), .clang-tidy)" >&2
  exit 1
fi
echo "check-tidy: ${#files[@]} translation units, no findings"
