#!/usr/bin/env bash
# Writes the demo corpus, the King James Bible (public domain, 4.3 MB of plain text), to
# corpus/kjv.txt from Debian's bible-kjv package (installed by tools/scripts/install-deps.sh): one verse
# per line without its reference, and an empty line between chapters, so that
# `kiln prepare --separator '\n\n'` makes each chapter a document. Does nothing if the file exists.
set -euo pipefail
out="${1:-corpus/kjv.txt}"
if [[ -s "$out" ]]; then
  echo "get-corpus: $out already present"
  exit 0
fi
command -v bible >/dev/null || { echo "get-corpus: 'bible' not found: run tools/scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
bible -f 'Gen1:1-Rev22:21' </dev/null | awk '
  match($0, /^[1-3]?[A-Za-z]+[0-9]+:/) {
    chapter = substr($0, 1, RLENGTH)
    if (NR > 1 && chapter != last) print ""
    last = chapter
    sub(/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ /, "")
  }
  { print }' > "$out.tmp"
mv "$out.tmp" "$out"
echo "get-corpus: wrote $out ($(wc -c < "$out") bytes)"
