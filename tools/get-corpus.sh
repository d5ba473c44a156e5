#!/usr/bin/env bash
# Writes the demo corpus, the King James Bible (public domain, 4.3 MB of plain text), to
# corpus/kjv.txt from Debian's bible-kjv package (installed by tools/install-deps.sh), one verse
# per line without the verse references. Does nothing if the file is already there.
set -euo pipefail
out="${1:-corpus/kjv.txt}"
if [[ -s "$out" ]]; then
  echo "get-corpus: $out already present"
  exit 0
fi
command -v bible >/dev/null || { echo "get-corpus: 'bible' not found: run tools/install-deps.sh" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
bible -f 'Gen1:1-Rev22:21' </dev/null | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$out.tmp"
mv "$out.tmp" "$out"
echo "get-corpus: wrote $out ($(wc -c < "$out") bytes)"
