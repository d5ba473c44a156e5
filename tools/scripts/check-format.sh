#!/usr/bin/env bash
# Fails when a C++ or CUDA file tracked in git is not as clang-format 14 would write it
# (.clang-format), naming each such file; `--fix` formats them in place instead.
#   bash tools/scripts/check-format.sh SOURCE_DIR [--fix]
set -euo pipefail
cd "$1"
format=$(command -v clang-format-14 || command -v clang-format) ||
  { echo "check-format: clang-format 14 not found (tools/scripts/install-deps.sh installs it)" >&2; exit 1; }
"$format" --version | grep -q "version 14\." ||
  { echo "check-format: $format is not clang-format 14: $("$format" --version)" >&2; exit 1; }
# Fixtures are inputs of other checks, kept as they are.
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cu' | grep -v '/fixtures/')
if [[ "${2:-}" == --fix ]]; then
  "$format" -i "${files[@]}"
  exit 0
fi
unformatted=()
for f in "${files[@]}"; do
  "$format" --dry-run -Werror "$f" > /dev/null 2>&1 || unformatted+=("$f")
done
if ((${#unformatted[@]})); then
  printf 'check-format: not formatted (bash tools/scripts/check-format.sh . --fix):\n' >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
