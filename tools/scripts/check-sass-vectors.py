#!/usr/bin/env python3
"""Fails any memory-bound kernel whose SASS for sm_90 has no 128-bit global load or store.

Memory-bound kernels reach the copy bandwidth only with 16-byte accesses (LDG.E.128 / STG.E.128);
a change that loses them is a silent 2-4x slowdown. Checking the SASS catches it without a GPU.

    tools/scripts/check-sass-vectors.py [--allow-scalar SUBSTR]... FILE.cu... [-- extra nvcc args]
    tools/scripts/check-sass-vectors.py --only SUBSTR... --require REGEX... FILE.cu...

Every __global__ function in kiln::cuda of the given files is checked, except kernels whose
demangled name contains an --allow-scalar substring (small reductions over a few hundred floats).
With --only, just the kernels whose name contains one of the substrings; with --require, their SASS
must match every REGEX instead (e.g. HMMA and LDGSTS: tensor cores and cp.async in attention).
nvdisasm comes from the CUDA toolkit or PyPI's nvidia-cuda-nvdisasm (tools/scripts/install-deps.sh).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_nvdisasm():
    found = shutil.which("nvdisasm") or (os.path.exists("/usr/local/cuda/bin/nvdisasm") and "/usr/local/cuda/bin/nvdisasm")
    if found:
        return found
    try:  # PyPI's nvidia-cuda-nvdisasm installs it inside the nvidia namespace package
        out = subprocess.run(["python3", "-c", "import nvidia, os; print(list(nvidia.__path__)[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        hits = glob.glob(os.path.join(out, "cu*", "bin", "nvdisasm"))
        return hits[0] if hits else None
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def kernels_sass(nvdisasm, cubin):
    """{mangled name: SASS text} for every function in the cubin."""
    text = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True, check=True).stdout
    functions, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*\.text\.(\S+?):?$", line) if line.startswith(".text.") else None
        if m:
            name = m.group(1)
            functions[name] = []
        elif name:
            functions[name].append(line)
    return {k: "\n".join(v) for k, v in functions.items()}


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--allow-scalar", action="append", default=[], metavar="SUBSTR")
    p.add_argument("--only", action="append", default=[], metavar="SUBSTR")
    p.add_argument("--require", action="append", default=[], metavar="REGEX")
    args = p.parse_args(argv)
    required = args.require or [r"\b(LDG|STG)\.E[.\w]*\.128\b"]
    what = ", ".join(args.require) if args.require else "128-bit global load or store"
    nvdisasm = find_nvdisasm()
    if not nvdisasm:
        sys.exit("check-sass-vectors: nvdisasm not found (pip install nvidia-cuda-nvdisasm)")
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(args.files):
            cubin = os.path.join(tmp, f"{i}.cubin")
            subprocess.run(["nvcc", "-arch=sm_90", "-std=c++20", "--expt-relaxed-constexpr", "-I" + ROOT, "-cubin",
                            "-o", cubin, source] + extra, check=True)
            sass = kernels_sass(nvdisasm, cubin)
            names = demangle(list(sass))
            for mangled, body in sass.items():
                name = names[mangled]
                if "kiln::cuda::" not in name or any(s in name for s in args.allow_scalar):
                    continue
                if args.only and not any(s in name for s in args.only):
                    continue
                checked += 1
                missing = [r for r in required if not re.search(r, body)]
                print(f"{'FAIL' if missing else 'ok  '} {os.path.relpath(source, ROOT)}: {name.split('(')[0]}"
                      f"{': no match for ' + ', '.join(missing) if missing else ''}")
                if missing:
                    failures.append(name)
    print(f"check-sass-vectors: {checked} kernels checked, {len(failures)} without {what}")
    sys.exit(1 if failures or checked == 0 else 0)


if __name__ == "__main__":
    main()
