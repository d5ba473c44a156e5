#!/usr/bin/env bash
# check-cuda-lint.sh — keep kiln's kernel code compilable by both nvcc and the g++ SIMT emulator.
#
# Every .cu/.cuh kernel is built twice: by nvcc for the GPU and by g++ against kiln's SIMT
# emulator. A handful of CUDA-only constructs cannot be emulated, so only the wrapper layer
# (kernels/device/) may use them directly; everything else goes through its wrappers.
#
# Usage:
#   tools/scripts/check-cuda-lint.sh [ROOT]        scan the repository (ROOT defaults to this script's ../../)
#   tools/scripts/check-cuda-lint.sh --files F...  scan exactly these files (no allow-list, no skips)
#   tools/scripts/check-cuda-lint.sh --self-test   check the linter against tests/fixtures/lint/
#
# Exit status: 0 clean, 1 violations found (or self-test failed), 2 usage error.
# Findings are printed as `file:line: <construct> is forbidden outside kernels/device/: <why>`.
#
# Comments are ignored: `//` to end of line, `/* ... */` (also across lines); string and
# character literals are blanked before matching (an `#include "cub/..."` is still caught).
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# The one place that says who may use the forbidden constructs (paths relative to the root;
# a trailing / means "everything under this directory").
ALLOWED=(
  "kernels/device/"          # the runtime/wrapper layer: cuda_lang.h, launch.h, mma.h, ...
  "tools/scripts/check-cuda-lint.sh" # this script (it names the constructs it forbids)
)
# Directories scanned, and the file kinds scanned in them.
SCAN_DIRS=(kernels model parallel train tools tests)
SCAN_NAMES=('*.cu' '*.cuh' '*.h' '*.cpp')
# Skipped while scanning the repository: the linter's own deliberately-bad fixtures.
# (Any directory named build* below a scanned directory is skipped too.)
SKIP_DIRS=("tests/fixtures/lint")
# ---------------------------------------------------------------------------------------------

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"

# lint_files FILE... — prints findings (file:line: message) for the given files; status 0.
# Rule ids (first field of each awk message table entry) are used by the self-test.
lint_files() {
  [[ $# -eq 0 ]] && return 0
  LC_ALL=C awk '
    function report(rule, what, why) {
      printf "%s:%d: %s is forbidden outside kernels/device/: %s [%s]\n", FILENAME, FNR, what, why, rule
    }
    # code_of(line): the line with comments removed and string/char literal contents blanked.
    # Carries /* */ state across lines in the global in_block.
    function code_of(s,    out, i, n, c, c2, q) {
      out = ""; n = length(s); i = 1
      while (i <= n) {
        c = substr(s, i, 1); c2 = substr(s, i, 2)
        if (in_block) {
          if (c2 == "*/") { in_block = 0; out = out "  "; i += 2 } else { out = out " "; i++ }
          continue
        }
        if (c2 == "//") break
        if (c2 == "/*") { in_block = 1; out = out "  "; i += 2; continue }
        # A quote right after a hex digit is a C++14 digit separator, not a literal.
        if (c == "\047" && substr(out, length(out), 1) ~ /[0-9A-Fa-f]/) { out = out c; i++; continue }
        if (c == "\"" || c == "\047") {
          q = c; out = out c; i++
          while (i <= n) {
            c = substr(s, i, 1)
            if (c == "\\") { out = out "  "; i += 2; continue }
            if (c == q) break
            out = out " "; i++
          }
          if (i <= n) { out = out q; i++ }
          continue
        }
        out = out c; i++
      }
      return out
    }
    FNR == 1 { in_block = 0 }
    {
      raw = $0
      sub(/\r$/, "", raw)
      block_at_start = in_block
      code = code_of(raw)
      # Identifier boundaries are spelled out: mawk has no \b.
      padded = " " code " "
      if (padded ~ /[^A-Za-z0-9_]__CUDA_ARCH/)
        report("cuda-arch", "__CUDA_ARCH__",
               "arch-dependent code paths do not exist in the g++ SIMT emulator build; select them in a kernels/device/ wrapper")
      if (padded ~ /[^A-Za-z0-9_](asm|__asm|__asm__)[^A-Za-z0-9_]/)
        report("inline-asm", "inline asm",
               "PTX/SASS cannot run in the g++ SIMT emulator; wrap the instruction in kernels/device/ (e.g. mma.h) with an emulated fallback")
      if (code ~ /<<</)
        report("launch", "kernel launch syntax <<<...>>>",
               "g++ cannot parse it; launch through kernels/device/launch.h")
      if (padded ~ /[^A-Za-z0-9_]cooperative_groups[^A-Za-z0-9_]/)
        report("cooperative-groups", "cooperative_groups",
               "the SIMT emulator does not implement it; use the kernels/device/ wrappers for grid/block/warp sync")
      # #include "cub/..." has its path inside a string literal: match it on the comment-free raw line.
      if ((!block_at_start && raw ~ /^[ \t]*#[ \t]*include[ \t]*[<"]cub\//) || padded ~ /[^A-Za-z0-9_]cub::/)
        report("cub", "CUB (#include <cub/...> / cub::)",
               "CUB is nvcc-only; use the kernels/device/ primitives (which the emulator provides)")
    }
  ' "$@"
}

is_allowed() { # is_allowed RELPATH
  local a
  for a in "${ALLOWED[@]}"; do
    if [[ "$a" == */ ]]; then [[ "$1" == "$a"* ]] && return 0
    else [[ "$1" == "$a" ]] && return 0
    fi
  done
  return 1
}

# scan_repo ROOT — lint every matching file under ROOT's scanned directories; returns 1 on findings.
scan_repo() {
  local root="$1" d rel f
  local -a names=() prune=() files=()
  [[ -d "$root" ]] || { echo "cuda-lint: $root is not a directory" >&2; return 2; }
  for f in "${SCAN_NAMES[@]}"; do names+=(-o -name "$f"); done
  names=("${names[@]:1}")
  prune=(-name 'build*')
  for d in "${SKIP_DIRS[@]}"; do prune+=(-o -path "./$d"); done
  for d in "${SCAN_DIRS[@]}"; do
    [[ -d "$root/$d" ]] || continue
    while IFS= read -r -d '' rel; do
      rel="${rel#./}"
      is_allowed "$rel" || files+=("$rel")
    done < <(cd "$root" && find "./$d" -mindepth 1 -type d \( "${prune[@]}" \) -prune \
                            -o -type f \( "${names[@]}" \) -print0 | sort -z)
  done
  local out
  out="$(cd "$root" && lint_files "${files[@]}")"
  if [[ -n "$out" ]]; then
    printf '%s\n' "$out"
    echo "cuda-lint: ${#files[@]} files checked, $(printf '%s\n' "$out" | wc -l) violation(s)" >&2
    return 1
  fi
  echo "cuda-lint: ${#files[@]} files checked, clean"
}

# self_test — the fixtures under tests/fixtures/lint/ say what must be caught:
#   bad.cu:   every line ending in `// LINT-EXPECT: rule[,rule]` must be reported with exactly those
#             rules, and nothing else in the file may be; every rule must be expected somewhere.
#   clean.cu: look-alikes (comments, strings, identifiers) that must not be reported.
# Then a throwaway tree checks the repository mode: the allow-list, the fixture and build* skips.
self_test() {
  local root fx tmp fail=0 rule
  root="$(cd "$SCRIPT_DIR/../.." && pwd)"
  fx="$root/tests/fixtures/lint"
  [[ -f "$fx/bad.cu" && -f "$fx/clean.cu" ]] || { echo "self-test: fixtures missing under $fx" >&2; return 1; }
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN

  # 1. bad.cu: expected (line:rule) pairs versus reported ones.
  awk '/\/\/[ \t]*LINT-EXPECT:[ \t]*[a-z-]+(,[a-z-]+)*[ \t\r]*$/ {
                        s = $0; sub(/.*LINT-EXPECT:[ \t]*/, "", s); sub(/[ \t\r]*$/, "", s);
                        n = split(s, r, ","); for (i = 1; i <= n; i++) print FNR ":" r[i] }' \
      "$fx/bad.cu" | sort > "$tmp/expected"
  (cd "$fx" && lint_files bad.cu) | sed -E 's/^bad\.cu:([0-9]+):.*\[([a-z-]+)\]$/\1:\2/' | sort > "$tmp/got"
  if ! diff -u --label expected "$tmp/expected" --label reported "$tmp/got" > "$tmp/diff"; then
    echo "self-test: bad.cu findings differ from its LINT-EXPECT markers (line:rule):" >&2
    cat "$tmp/diff" >&2; fail=1
  fi
  for rule in cuda-arch inline-asm launch cooperative-groups cub; do
    if ! grep -q ":$rule\$" "$tmp/got"; then echo "self-test: rule $rule never reported on bad.cu" >&2; fail=1; fi
  done
  local rc=0
  "$SELF" --files "$fx/bad.cu" > /dev/null 2>&1 || rc=$?
  if [[ $rc -ne 1 ]]; then echo "self-test: --files on bad.cu exited $rc, not 1" >&2; fail=1; fi

  # 2. clean.cu: no findings, exit 0.
  if ! (cd "$fx" && "$SELF" --files clean.cu > "$tmp/clean.out" 2>&1) || [[ -n "$(grep -v '^cuda-lint: ' "$tmp/clean.out" || true)" ]]; then
    echo "self-test: clean.cu was reported:" >&2; cat "$tmp/clean.out" >&2; fail=1
  fi

  # 3. Repository mode on a throwaway tree.
  local t="$tmp/tree"
  mkdir -p "$t/kernels/device" "$t/kernels/build-x" "$t/tests/fixtures/lint" "$t/model" "$t/docs"
  cp "$fx/bad.cu" "$t/kernels/device/wrapper.cuh"      # allowed: the wrapper layer
  cp "$fx/bad.cu" "$t/kernels/build-x/generated.cu"    # skipped: build* directory
  cp "$fx/bad.cu" "$t/tests/fixtures/lint/bad.cu"      # skipped: the fixtures themselves
  cp "$fx/bad.cu" "$t/docs/notes.cu"                   # not a scanned directory
  cp "$fx/bad.cu" "$t/model/bad.txt"                   # not a scanned file kind
  cp "$fx/clean.cu" "$t/model/clean.cpp"
  printf '%s\n' '#include <cooperative_groups.h>' > "$t/model/leak.h"
  rc=0
  "$SELF" "$t" > "$tmp/repo.out" 2> "$tmp/repo.err" || rc=$?
  if [[ $rc -ne 1 ]] || [[ "$(cut -d: -f1,2 "$tmp/repo.out")" != "model/leak.h:1" ]] \
     || ! grep -q '^cuda-lint: 2 files checked, 1 violation' "$tmp/repo.err"; then
    echo "self-test: repository mode on a throwaway tree: expected exactly model/leak.h:1 of 2 files, exit 1; got exit $rc:" >&2
    cat "$tmp/repo.out" "$tmp/repo.err" >&2; fail=1
  fi
  rm "$t/model/leak.h"
  rc=0
  "$SELF" "$t" > "$tmp/repo.out" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]] || [[ "$(cat "$tmp/repo.out")" != "cuda-lint: 1 files checked, clean" ]]; then
    echo "self-test: clean throwaway tree: expected exit 0 and '1 files checked, clean'; got exit $rc:" >&2
    cat "$tmp/repo.out" >&2; fail=1
  fi

  if [[ $fail -eq 0 ]]; then
    echo "cuda-lint self-test: passed ($(wc -l < "$tmp/expected") expected findings in bad.cu, clean.cu clean, allow-list and skips honoured)"
  fi
  return $fail
}

case "${1:-}" in
  -h|--help)
    sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
    ;;
  --self-test)
    self_test
    ;;
  --files)
    shift
    [[ $# -gt 0 ]] || { echo "usage: $0 --files FILE..." >&2; exit 2; }
    for f in "$@"; do [[ -f "$f" ]] || { echo "cuda-lint: no such file: $f" >&2; exit 2; }; done
    out="$(lint_files "$@")"
    if [[ -n "$out" ]]; then printf '%s\n' "$out"; exit 1; fi
    echo "cuda-lint: $# files checked, clean"
    ;;
  -*)
    echo "usage: $0 [ROOT] | --files FILE... | --self-test" >&2; exit 2
    ;;
  *)
    [[ $# -le 1 ]] || { echo "usage: $0 [ROOT] | --files FILE... | --self-test" >&2; exit 2; }
    scan_repo "${1:-$SCRIPT_DIR/../..}"
    ;;
esac
