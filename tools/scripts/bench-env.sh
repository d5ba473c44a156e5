# Sourced by tools/scripts/bench-cpu.sh and tools/scripts/bench-generate.sh: the benchmark venv with a current
# PyTorch from PyPI, the kiln binary, the machine's description, and a wait for a quiet CPU.
# Not part of CI or of tools/scripts/install-deps.sh: the PyPI torch wheel and its dependencies are several GB.
#
#   KILN=path/to/kiln        the binary to measure (default build/kiln)
#   BENCH_VENV=dir           the venv (default .venv-bench, gitignored); made on first use
#   THREADS=N                threads on both sides (default 2)
#   QUIET_BELOW=pct          wait until other processes use less than this share of the CPUs (default 10)

kiln="${KILN:-build/kiln}"
threads="${THREADS:-2}"
venv="${BENCH_VENV:-.venv-bench}"
[[ -x "$kiln" ]] || { echo "bench: $kiln: no kiln binary (build it, or set KILN=)" >&2; exit 1; }

# The venv: torch, numpy, transformers and safetensors from PyPI, the current releases.
bench_venv() {
  if ! "$venv/bin/python" -c "import torch, numpy, transformers, safetensors" 2>/dev/null; then
    echo "bench: setting up $venv (PyTorch, numpy, transformers, safetensors from PyPI; several GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy transformers safetensors
  fi
  python="$venv/bin/python"
}

# Busy share (percent) of all CPUs over one second, from /proc/stat.
cpu_busy() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 1
  read -r -a b < <(grep '^cpu ' /proc/stat)
  awk -v u0="${a[1]}" -v n0="${a[2]}" -v s0="${a[3]}" -v i0="${a[4]}" -v w0="${a[5]}" -v q0="${a[6]}" -v sq0="${a[7]}" \
      -v u1="${b[1]}" -v n1="${b[2]}" -v s1="${b[3]}" -v i1="${b[4]}" -v w1="${b[5]}" -v q1="${b[6]}" -v sq1="${b[7]}" 'BEGIN {
    busy = (u1 - u0) + (n1 - n0) + (s1 - s0) + (q1 - q0) + (sq1 - sq0); idle = (i1 - i0) + (w1 - w0)
    printf "%.0f\n", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}

# Waits (up to 30 min) until the CPUs have been quiet for 5 s in a row, so that no compiler or other
# job shares them with a measurement; says so on stderr.
wait_quiet() {
  local limit="${QUIET_BELOW:-10}" busy quiet=0 waited=0
  while ((quiet < 5)) && ((waited < 1800)); do
    busy=$(cpu_busy)
    if ((busy < limit)); then quiet=$((quiet + 1)); else quiet=0; fi
    ((busy >= limit && waited % 60 == 0)) && echo "bench: CPUs ${busy}% busy (other processes); waiting for < ${limit}%" >&2
    waited=$((waited + 1))
  done
  return 0
}

# measured CMD...: runs CMD and sets `others` to the share (percent) of all CPUs that other processes
# used while it ran: the machine's busy time from /proc/stat less CMD's own CPU time (its children's
# user + system time, from `times`), over the wall time. Near 0 for a clean measurement.
busy_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { print ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}
children_seconds() {  # FILE: the children's user + system seconds in `times` output (its second line)
  sed -n 2p "$1" | awk '{ for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); s += p[1] * 60 + p[2] } print s }'
}
measured() {
  local b0 t0 b1 t1 rc=0 f0 f1
  f0=$(mktemp) f1=$(mktemp)
  b0=$(busy_seconds) t0=$(date +%s.%N)
  times > "$f0"
  "$@" || rc=$?
  times > "$f1"
  b1=$(busy_seconds) t1=$(date +%s.%N)
  others=$(awk -v b="$(echo "$b1 - $b0" | bc -l)" -v c="$(echo "$(children_seconds "$f1") - $(children_seconds "$f0")" | bc -l)" \
    -v t="$(echo "$t1 - $t0" | bc -l)" -v n="$(nproc)" 'BEGIN { o = 100 * (b - c) / (t * n); printf "%.0f", (o < 0) ? 0 : o }')
  rm -f "$f0" "$f1"
  return "$rc"
}

# clean_run OUTPUT CMD...: CMD (stdout and stderr to OUTPUT) after wait_quiet, again while other
# processes used more than QUIET_BELOW% of the CPUs during it (3 tries at most); sets `others` as
# measured does, for the last try.
clean_run() {
  local output="$1" try
  shift
  for try in 1 2 3; do
    wait_quiet
    measured "$@" > "$output" 2>&1 || return
    ((others < ${QUIET_BELOW:-10})) && return 0
    echo "bench: other processes used ${others}% of the CPUs during $(basename "$output") (try $try)" >&2
  done
}

# One line describing the machine, for the tables' headers.
machine() {
  local model
  model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
  local isa="AVX2"
  grep -q avx512f /proc/cpuinfo && isa="AVX-512"
  echo "$model, $(nproc) CPUs ($isa), $threads threads"
}
