#!/usr/bin/python3
"""ptxas-report: per-kernel register/spill/shared-memory report and H100 occupancy for kiln's .cu files.

Usage:
  tools/scripts/ptxas-report.py [options] [FILE.cu ...] [-- EXTRA_NVCC_ARGS ...]

  With no files, every .cu under kernels/ (build*/ directories skipped) is compiled.
  Each file is compiled for the device only (no host object is produced):

    nvcc -arch=sm_90 -std=c++20 --expt-relaxed-constexpr -I<root> [build -I/-D] [EXTRA...]
         -Xptxas -v -cubin -o <tmp>/N.cubin --keep --keep-dir <tmp>/N FILE.cu

  `-Xptxas -v` (what `--resource-usage` implies without -rdc) prints each function's registers,
  spills, stack frame and static shared memory; -cubin skips the host compile (-c -o /dev/null
  gives the same ptxas lines but also compiles the host side). --keep keeps the PTX, whose
  .maxntid/.reqntid directives reveal __launch_bounds__; the cubin gives each kernel's cmem[0]
  (ptxas 13 no longer prints cmem). Include paths and -D/-U/-std flags are also taken from the
  build's compile_commands.json (--build-dir, default <root>/build) when it lists the file.

  nvcc 13.0 + g++ 12.2: `-std=c++20` works as is. `--expt-relaxed-constexpr` is added because
  without it device code cannot call constexpr std:: functions (std::min, std::array::operator[],
  std::span::operator[], std::bit_cast: "calling a constexpr __host__ function ... is not
  allowed"). Pass `--no-relaxed-constexpr` to leave it out. EXTRA args after `--` go to nvcc
  unchanged (e.g. `-- -maxrregcount=32 -DKILN_FOO=1 -Ithird_party`).

Options:
  --block N | --block SUBSTR=N   block size for occupancy (repeatable). N alone sets the default
                                 (256); SUBSTR=N applies to kernels whose demangled or mangled
                                 name contains SUBSTR (the last matching one wins). Without an
                                 override, a kernel's __launch_bounds__ (.reqntid, else .maxntid)
                                 is used, else the default.
  --dyn-smem N | SUBSTR=N        dynamic shared memory bytes per block for occupancy (default 0).
  --json OUT.json                also write the report as JSON.
  --arch sm_90                   target passed to nvcc (sm_90a for wgmma/TMA code); the occupancy
                                 limits are H100's whatever the arch.
  --build-dir DIR                where compile_commands.json is looked for (default <root>/build).
  -j N                           compile N files at once (default 1: builds are kept light).

Exit status: 0 no spills; 1 some function spills (stores or loads > 0), listed on stderr;
2 a compile failed or bad usage.

Occupancy model (theoretical, per SM, as cudaOccMaxActiveBlocksPerMultiprocessor computes it in
the CUDA Toolkit's cuda_occupancy.h, with the H100 SXM/PCIe (compute capability 9.0) limits below):
  blocks/SM = min(by warps, by blocks, by registers, by shared memory, by barriers)
  occupancy = blocks/SM * ceil(block/32) / 64 warps.
The limits (H100_LIMITS below) come from the CUDA C Programming Guide, "Compute Capabilities",
table "Technical Specifications per Compute Capability" (column 9.0), and the CUDA Occupancy
Calculator's per-architecture granularities (now the Nsight Compute occupancy calculator;
"Register allocation unit size 256, granularity: warp", "Shared memory allocation unit size
128"). The 1 KB reserved per block is the Programming Guide's "228 KB per SM, 227 KB max per
block" difference (cudaDeviceProp::reservedSharedMemPerBlock = 1024 on H100). The same
granularities are in CUDA 13.0's cuda_occupancy.h (cudaOccRegAllocationGranularity 256,
cudaOccSMemAllocationGranularity 128, cudaOccSubPartitionsPerMultiprocessor 4,
cudaOccMaxBlocksPerMultiprocessor 32 for 9.x).

Test log (throwaway kernels under /tmp/ptxt, kept out of the repository):
  simple.cu:   saxpy<float> (no launch bounds); block_sum with __launch_bounds__(128) and a
               128-float __shared__ buffer.
  spill.cu:
    __global__ void spill_kernel(const float* __restrict__ in, float* __restrict__ out,
                                 const int* idx, int n) {
      float acc[64];
      #pragma unroll
      for (int k = 0; k < 64; ++k) acc[k] = in[threadIdx.x + k * n];
      float s = 0.f;
      #pragma unroll
      for (int k = 0; k < 64; ++k) s += acc[k] * acc[(k * 7) & 63];
      s += acc[idx[threadIdx.x] & 63];  // dynamic index: the array must be addressable
      out[threadIdx.x] = s;
    }
  devspill.cu: a __noinline__ __device__ function with a float a[48] working set, called by a kernel.
  cm.cu, sh.cu: __constant__/__device__ globals; static and extern (dynamic) __shared__ arrays.
  tools/scripts/ptxas-report.py /tmp/ptxt/simple.cu                        -> exit 0
      saxpy<float>: 10 regs, cmem[0] 552 B, block 256 (default) -> 8 blocks/SM, 64 warps, 100%
      block_sum: 11 regs, 512 B smem, block 128 (launch_bounds) -> 16 blocks/SM, 64 warps, 100%
  tools/scripts/ptxas-report.py /tmp/ptxt/spill.cu                         -> exit 0
      spill_kernel: 72 regs, no spills, 256 B stack frame (the dynamically indexed array lives in
      local memory); block 256 -> 3 blocks/SM, 24 warps, 37.5%, limited by registers
  tools/scripts/ptxas-report.py /tmp/ptxt/spill.cu -- -maxrregcount=32     -> exit 1
      spill_kernel: 32 regs, 528 B spill stores, 600 B spill loads, 768 B stack frame (on stderr);
      block 256 -> 8 blocks/SM, 64 warps, 100%
  tools/scripts/ptxas-report.py /tmp/ptxt/devspill.cu -- -maxrregcount=24  -> exit 1 (heavy(float const*, int):
      356 B spill stores, 392 B spill loads; the kernel itself does not spill)
  tools/scripts/ptxas-report.py --block 1024 --block block_sum=64 --dyn-smem saxpy=60000 --json /tmp/ptxt/r.json
      /tmp/ptxt/simple.cu /tmp/ptxt/spill.cu /tmp/ptxt/cm.cu /tmp/ptxt/sh.cu -- -maxrregcount=32 -> exit 1
      (overrides applied; saxpy needs the >48 KB opt-in note; cm.cu shows cmem[3] 1024 B, cmem[4] 8 B)
  tools/scripts/ptxas-report.py --block calls_heavy=256 devspill.cu with __launch_bounds__(128, 4)
      -> 0 blocks/SM, "block 256 exceeds __launch_bounds__ 128: launch would fail"
  A file that does not compile -> its nvcc output in the report, the command on stderr, exit 2.
  Occupancy was cross-checked against cuda_occupancy.h (CUDA 13.0) compiled with g++ over a sweep
  of registers x block sizes x shared memory x barriers (H100 properties filled in by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# H100 (compute capability 9.0) per-SM limits. Sources: CUDA C Programming Guide, "Technical
# Specifications per Compute Capability" (9.0 column); CUDA Occupancy Calculator / Nsight Compute
# occupancy calculator (allocation units); cuda_occupancy.h (sub-partitions, barriers).
H100_LIMITS = {
    "name": "H100 (sm_90)",
    "warp_size": 32,
    "max_threads_per_block": 1024,         # Programming Guide: max threads per block
    "max_warps_per_sm": 64,                # Programming Guide: max resident warps per SM (2048 threads)
    "max_blocks_per_sm": 32,               # Programming Guide: max resident blocks per SM
    "regs_per_sm": 65536,                  # Programming Guide: 64K 32-bit registers per SM
    "regs_per_block": 65536,               # Programming Guide: max registers per block
    "max_regs_per_thread": 255,            # Programming Guide: max registers per thread
    "reg_alloc_unit": 256,                 # Occupancy Calculator: registers allocated per warp in units of 256
    "sub_partitions": 4,                   # cuda_occupancy.h: 4 SM sub-partitions; warps' registers come
                                           # from one sub-partition's quarter of the file
    "smem_per_sm": 228 * 1024,             # Programming Guide: 228 KB shared memory per SM
    "smem_per_block_optin": 227 * 1024,    # Programming Guide: 227 KB max per block (opt-in)
    "smem_per_block_default": 48 * 1024,   # Programming Guide: 48 KB per block without opt-in
    "smem_reserved_per_block": 1024,       # 228 KB - 227 KB: reserved by the driver per block
    "smem_alloc_unit": 128,                # Occupancy Calculator: shared memory allocation unit 128 B
    "barriers_per_sm": 64,                 # cuda_occupancy.h (cc 9.x): 2 barrier sets per block slot
}

_INFO = re.compile(r"^ptxas (?:info|warning|error)\s*:\s*(.*)$")
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")
_CMEM = re.compile(r"(\d+) bytes cmem\[(\d+)\]")
_STACK = re.compile(r"(\d+) bytes cumulative stack size")
_SPILL_WARN = re.compile(r"Registers are spilled to local memory in function '([^']+)', "
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Func:
    mangled: str
    entry: bool = False
    registers: int | None = None
    barriers: int = 0
    smem: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    cumulative_stack: int | None = None
    cmem: dict[int, int] = field(default_factory=dict)
    launch_bounds: dict[str, object] = field(default_factory=dict)
    name: str = ""


def parse_ptxas(text: str) -> tuple[dict[str, Func], dict[int, int]]:
    """Parses `ptxas -v` output into functions (keyed by mangled name) and module-level cmem banks."""
    funcs: dict[str, Func] = {}
    module_cmem: dict[int, int] = {}
    current: Func | None = None

    def get(name: str) -> Func:
        if name not in funcs:
            funcs[name] = Func(name)
        return funcs[name]

    for line in text.splitlines():
        m = _INFO.match(line.strip())
        body = m.group(1) if m else line.strip()
        if (e := _ENTRY.search(body)):
            current = get(e.group(1))
            current.entry = True
            continue
        if (p := _PROPS.search(body)):
            current = get(p.group(1))
            continue
        if (w := _SPILL_WARN.search(body)):
            f = get(w.group(1))
            f.spill_stores = max(f.spill_stores, int(w.group(2)))
            f.spill_loads = max(f.spill_loads, int(w.group(3)))
            continue
        if (fr := _FRAME.search(body)) and current is not None:
            current.stack_frame, current.spill_stores, current.spill_loads = map(int, fr.groups())
            continue
        if (u := _USED.search(body)) and current is not None:
            current.registers = int(u.group(1))
            if (b := _BARRIERS.search(body)):
                current.barriers = int(b.group(1))
            if (s := _SMEM.search(body)):
                current.smem = int(s.group(1))
            if (st := _STACK.search(body)):
                current.cumulative_stack = int(st.group(1))
            for size, bank in _CMEM.findall(body):
                current.cmem[int(bank)] = int(size)
            continue
        if "bytes gmem" in body or ("cmem[" in body and "Used" not in body):
            for size, bank in _CMEM.findall(body):
                module_cmem[int(bank)] = int(size)
    return funcs, module_cmem


def parse_ptx_launch_bounds(ptx: str) -> dict[str, dict[str, object]]:
    """Maps each .entry to its performance-tuning directives (.maxntid/.reqntid/.minnctapersm/.maxnreg)."""
    out: dict[str, dict[str, object]] = {}
    for m in re.finditer(r"\.entry\s+([A-Za-z0-9_$.]+)\s*\(", ptx):
        close = ptx.find(")", m.end())
        brace = ptx.find("{", close)
        head = ptx[close:brace if brace >= 0 else len(ptx)]
        d: dict[str, object] = {}
        for key in ("maxntid", "reqntid"):
            if (k := re.search(r"\." + key + r"\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?", head)):
                dims = [int(x) for x in k.groups() if x is not None]
                d[key] = dims
        for key in ("minnctapersm", "maxnreg", "maxclusterrank"):
            if (k := re.search(r"\." + key + r"\s+(\d+)", head)):
                d[key] = int(k.group(1))
        out[m.group(1)] = d
    return out


def elf_sections(path: Path) -> dict[str, int]:
    """Section name -> size for a 64-bit little-endian ELF (a cubin)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for i in range(shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        headers.append((name, offset, size))
    stroff = headers[shstrndx][1]
    out = {}
    for name, _offset, size in headers:
        end = data.index(b"\0", stroff + name)
        out[data[stroff + name:end].decode("ascii", "replace")] = size
    return out


def demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    res = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True)
    out = res.stdout.splitlines()
    if res.returncode != 0 or len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(regs: int, block: int, smem_static: int, dyn_smem: int, barriers: int,
              lim: dict = H100_LIMITS) -> dict[str, object]:
    """Theoretical occupancy, following cudaOccMaxActiveBlocksPerMultiprocessor (cuda_occupancy.h)."""
    big = 1 << 30
    ws = lim["warp_size"]
    warps = -(-block // ws)
    notes = []
    limits: dict[str, int] = {}
    if block <= 0 or block > lim["max_threads_per_block"]:
        notes.append(f"block {block} exceeds {lim['max_threads_per_block']} threads")
        limits["warps"] = 0
    else:
        limits["warps"] = lim["max_warps_per_sm"] // warps
    limits["blocks"] = lim["max_blocks_per_sm"]
    # Registers: allocated per warp in units, from one of 4 sub-partitions' quarter of the file;
    # the hardware launch check assumes the block's warps rounded up to a multiple of 4.
    regs_per_warp = round_up(regs * ws, lim["reg_alloc_unit"]) if regs > 0 else 0
    if regs > lim["max_regs_per_thread"] or \
            regs_per_warp * round_up(warps, lim["sub_partitions"]) > lim["regs_per_block"] or \
            regs_per_warp * warps > lim["regs_per_block"]:
        limits["registers"] = 0
        notes.append("too many registers for this block size")
    elif regs_per_warp == 0:
        limits["registers"] = big
    else:
        per_sub = (lim["regs_per_sm"] // lim["sub_partitions"]) // regs_per_warp
        limits["registers"] = per_sub * lim["sub_partitions"] // warps if warps else 0
    # Shared memory: static + dynamic + the per-block reservation, in 128-byte units.
    smem_alloc = round_up(smem_static + dyn_smem + lim["smem_reserved_per_block"], lim["smem_alloc_unit"])
    if smem_static + dyn_smem > lim["smem_per_block_optin"]:
        limits["shared memory"] = 0
        notes.append(f"{smem_static + dyn_smem} B shared exceeds {lim['smem_per_block_optin']} B per block")
    else:
        limits["shared memory"] = lim["smem_per_sm"] // smem_alloc if smem_alloc else big
        if smem_static + dyn_smem > lim["smem_per_block_default"]:
            notes.append("needs cudaFuncAttributeMaxDynamicSharedMemorySize opt-in (> 48 KB)")
    limits["barriers"] = lim["barriers_per_sm"] // barriers if barriers > 0 else big
    blocks = min(limits.values())
    limited_by = [k for k, v in limits.items() if v == blocks] if blocks < big else []
    active_warps = blocks * warps
    return {
        "block": block,
        "warps_per_block": warps,
        "regs_per_warp_allocated": regs_per_warp,
        "smem_per_block_allocated": smem_alloc,
        "blocks_per_sm": blocks,
        "warps_per_sm": active_warps,
        "occupancy": active_warps / lim["max_warps_per_sm"],
        "limited_by": limited_by,
        "limits": {k: (None if v == big else v) for k, v in limits.items()},
        "notes": notes,
    }


def parse_overrides(values: list[str] | None, default: int, what: str) -> tuple[int, list[tuple[str, int]]]:
    overrides = []
    for v in values or []:
        key, sep, num = v.rpartition("=")
        try:
            n = int(num)
        except ValueError:
            n = -1
        if n < 0 or (what == "--block" and n == 0):
            print(f"ptxas-report: bad {what} value '{v}' (want N or SUBSTR=N)", file=sys.stderr)
            raise SystemExit(2)
        if sep:
            overrides.append((key, n))
        else:
            default = n
    return default, overrides


def pick(overrides: list[tuple[str, int]], *names: str) -> int | None:
    found = None
    for sub, n in overrides:
        if any(sub in name for name in names):
            found = n
    return found


def build_flags(build_dir: Path, src: Path) -> list[str]:
    """-I/-isystem/-D/-U/-std flags for src from compile_commands.json, if the build lists it."""
    db = build_dir / "compile_commands.json"
    if not db.is_file():
        return []
    try:
        entries = json.loads(db.read_text())
    except (OSError, ValueError):
        return []
    for e in entries:
        f = Path(e.get("file", ""))
        if not f.is_absolute():
            f = Path(e.get("directory", ".")) / f
        if f.resolve() != src.resolve():
            continue
        args = e.get("arguments") or shlex.split(e.get("command", ""))
        out, it = [], iter(args[1:])
        for a in it:
            if a in ("-I", "-isystem", "-D", "-U", "-include"):
                nxt = next(it, None)
                if nxt is not None:
                    out += [a, nxt]
            elif a.startswith(("-I", "-D", "-U", "-isystem", "-std=", "--std=")):
                out.append(a)
        return out
    return []


@dataclass
class Result:
    src: Path
    ok: bool
    log: str
    cmd: list[str]
    funcs: dict[str, Func] = field(default_factory=dict)
    module_cmem: dict[int, int] = field(default_factory=dict)


def compile_one(idx: int, src: Path, args, extra: list[str], tmp: Path) -> Result:
    keep = tmp / f"k{idx}"
    keep.mkdir()
    cubin = tmp / f"{idx}.cubin"
    from_build = build_flags(Path(args.build_dir), src)
    std = [] if any(a.startswith(("-std", "--std")) for a in from_build + extra) else ["-std=c++20"]
    relaxed = [] if args.no_relaxed_constexpr else ["--expt-relaxed-constexpr"]
    cmd = [args.nvcc, f"-arch={args.arch}", *std, *relaxed, f"-I{ROOT}", *from_build, *extra,
           "-Xptxas", "-v", "-cubin", "-o", str(cubin), "--keep", "--keep-dir", str(keep), str(src)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = Result(src, p.returncode == 0, p.stdout, cmd)
    if not res.ok:
        return res
    res.funcs, res.module_cmem = parse_ptxas(p.stdout)
    bounds: dict[str, dict[str, object]] = {}
    for ptx in keep.glob("*.ptx"):
        bounds.update(parse_ptx_launch_bounds(ptx.read_text(errors="replace")))
    sections = elf_sections(cubin) if cubin.is_file() else {}
    for f in res.funcs.values():
        f.launch_bounds = bounds.get(f.mangled, {})
        if f.entry and 0 not in f.cmem and f".nv.constant0.{f.mangled}" in sections:
            f.cmem[0] = sections[f".nv.constant0.{f.mangled}"]
    if not res.module_cmem:
        for name, size in sections.items():
            if (m := re.fullmatch(r"\.nv\.constant(\d+)", name)):
                res.module_cmem[int(m.group(1))] = size
    return res


def md_cell(s: str) -> str:
    return "`" + s.replace("|", "\\|").replace("`", "'") + "`"


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="ptxas-report.py", description=__doc__.split("\nOccupancy model")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".cu files (default: every .cu under kernels/)")
    ap.add_argument("--block", action="append", metavar="N|SUBSTR=N")
    ap.add_argument("--dyn-smem", action="append", metavar="N|SUBSTR=N")
    ap.add_argument("--json", metavar="OUT.json")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    ap.add_argument("--no-relaxed-constexpr", action="store_true")
    ap.add_argument("-j", type=int, default=1)
    args = ap.parse_args(argv)

    default_block, block_over = parse_overrides(args.block, 256, "--block")
    default_dyn, dyn_over = parse_overrides(args.dyn_smem, 0, "--dyn-smem")

    if args.files:
        files = [Path(f) for f in args.files]
        for f in files:
            if not f.is_file():
                print(f"ptxas-report: no such file: {f}", file=sys.stderr)
                return 2
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT / "kernels"):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("build"))
            files += [Path(dirpath) / n for n in sorted(filenames) if n.endswith(".cu")]
        if not files:
            print(f"ptxas-report: no .cu files under {ROOT / 'kernels'}")
            if args.json:
                Path(args.json).write_text(json.dumps({"arch": args.arch, "limits": H100_LIMITS,
                                                       "kernels": [], "spills": []}, indent=2) + "\n")
            return 0
    if not shutil.which(args.nvcc):
        print(f"ptxas-report: {args.nvcc} not found", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="ptxas-report.") as td:
        with ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
            results = list(pool.map(lambda a: compile_one(a[0], a[1], args, extra, Path(td)), enumerate(files)))

    failed = [r for r in results if not r.ok]
    names = demangle(sorted({m for r in results for m in r.funcs}))
    rows, spills = [], []
    lines = [f"# ptxas report ({args.arch}; occupancy for {H100_LIMITS['name']})", ""]
    for r in results:
        rel = os.path.relpath(r.src.resolve(), ROOT) if r.src.resolve().is_relative_to(ROOT) else str(r.src)
        lines.append(f"## {rel}")
        lines.append("")
        if not r.ok:
            lines += ["compile failed:", "", "```", r.log.rstrip(), "```", ""]
            continue
        kernels = sorted((f for f in r.funcs.values() if f.entry), key=lambda f: names[f.mangled])
        others = sorted((f for f in r.funcs.values() if not f.entry), key=lambda f: names[f.mangled])
        if not kernels:
            lines += ["no kernels", ""]
        else:
            lines.append("| kernel | regs | spill stores | spill loads | smem (static) | stack frame | cmem[0] "
                         "| block | dyn smem | blocks/SM | warps/SM | occupancy | limited by |")
            lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
        for f in kernels:
            f.name = names[f.mangled]
            lb = f.launch_bounds
            bound = None
            if "reqntid" in lb:
                bound = 1
                for d in lb["reqntid"]:
                    bound *= d
                bsrc = "reqntid"
            elif "maxntid" in lb:
                bound = 1
                for d in lb["maxntid"]:
                    bound *= d
                bsrc = "launch_bounds"
            over = pick(block_over, f.name, f.mangled)
            if over is not None:
                block, bsrc = over, "--block"
            elif bound is not None:
                block = bound
            else:
                block, bsrc = default_block, "default"
            dyn = pick(dyn_over, f.name, f.mangled)
            dyn = default_dyn if dyn is None else dyn
            occ = occupancy(f.registers or 0, block, f.smem, dyn, f.barriers)
            if bound is not None and block > bound:
                occ.update(blocks_per_sm=0, warps_per_sm=0, occupancy=0.0, limited_by=["launch bounds"])
                occ["notes"].append(f"block {block} exceeds __launch_bounds__ {bound}: launch would fail")
            limited = ", ".join(occ["limited_by"]) + ("; " + "; ".join(occ["notes"]) if occ["notes"] else "")
            lines.append(f"| {md_cell(f.name)} | {f.registers} | {f.spill_stores} | {f.spill_loads} | {f.smem} "
                         f"| {f.stack_frame} | {f.cmem.get(0, '')} | {block} ({bsrc}) | {dyn} | {occ['blocks_per_sm']} "
                         f"| {occ['warps_per_sm']} | {occ['occupancy'] * 100:.1f}% | {limited} |")
            rows.append({"file": rel, "kernel": f.name, "mangled": f.mangled, "registers": f.registers,
                         "spill_stores": f.spill_stores, "spill_loads": f.spill_loads, "smem_static": f.smem,
                         "stack_frame": f.stack_frame, "cumulative_stack": f.cumulative_stack,
                         "cmem": {str(k): v for k, v in sorted(f.cmem.items())}, "barriers": f.barriers,
                         "launch_bounds": lb, "block": block, "block_source": bsrc, "dyn_smem": dyn,
                         "occupancy": occ})
        if kernels:
            lines.append("")
        spilling_others = [f for f in others if f.spill_stores or f.spill_loads]
        if spilling_others:
            lines.append("Non-inlined device functions that spill:")
            lines.append("")
            for f in spilling_others:
                f.name = names[f.mangled]
                lines.append(f"- {md_cell(f.name)}: {f.spill_stores} B spill stores, {f.spill_loads} B spill loads, "
                             f"{f.stack_frame} B stack frame")
            lines.append("")
        if r.module_cmem:
            lines.append("Module constant banks: " + ", ".join(
                f"cmem[{k}] {v} B" for k, v in sorted(r.module_cmem.items())) + "")
            lines.append("")
        for f in kernels + spilling_others:
            if f.spill_stores or f.spill_loads:
                spills.append({"file": rel, "function": f.name, "mangled": f.mangled, "kernel": f.entry,
                               "spill_stores": f.spill_stores, "spill_loads": f.spill_loads})
    print("\n".join(lines).rstrip())

    if args.json:
        report = {"arch": args.arch, "limits": H100_LIMITS, "kernels": rows, "spills": spills,
                  "failed": [{"file": str(r.src), "command": r.cmd, "log": r.log} for r in failed]}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    for r in failed:
        print(f"ptxas-report: compile failed: {r.src}\n  {shlex.join(r.cmd)}", file=sys.stderr)
    if spills:
        print(f"ptxas-report: {len(spills)} function(s) spill registers:", file=sys.stderr)
        for s in spills:
            print(f"  {s['file']}: {s['function']}: {s['spill_stores']} B spill stores, "
                  f"{s['spill_loads']} B spill loads", file=sys.stderr)
    if failed:
        return 2
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
