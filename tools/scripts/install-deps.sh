#!/usr/bin/env bash
# Installs the Debian 12 packages kiln builds and tests with. Idempotent: packages already
# present are reported and skipped. The CUDA toolkit (nvcc, cuBLASLt) and NCCL are not Debian
# packages: they come from NVIDIA (https://developer.nvidia.com/cuda-downloads, which also
# ships libnccl-dev); kiln builds CPU-only when nvcc is absent.
#
#   tools/scripts/install-deps.sh            build + test dependencies and the demo corpus, and .venv-hf
#                                    (transformers and tensorboard from PyPI over Debian's PyTorch)
#                                    for the HF and TensorBoard read-back checks
#   tools/scripts/install-deps.sh --oracle   also h5py and OpenBLAS for PyTorch, to regenerate the test fixtures
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config git python3
  libopenmpi-dev openmpi-bin          # MPI (CPU data/tensor parallel, launcher)
  libhdf5-dev                         # token shards, checkpoints, test fixtures
  libgtest-dev                        # unit tests
  libcli11-dev                        # command line
  libtomlplusplus-dev                 # config files
  nlohmann-json3-dev                  # metrics, manifests
  libprotobuf-dev protobuf-compiler   # TensorBoard event files
  libboost-dev                        # Boost.CRC for TensorBoard records
  libfmt-dev                          # formatting
  libpcre2-dev                        # GPT-2 pre-tokenizer regex
  libomp-dev                          # OpenMP
  libopenblas-openmp-dev              # BLAS for the CPU backend (OpenMP build: shares kiln's threads)
  libboost-context-dev                # fibers for the SIMT emulator
  clang-format-14 clang-tidy-16       # the lint.format and lint.tidy tests (.clang-format, .clang-tidy)
  python3-matplotlib                  # tools/scripts/plot_metrics.py: loss, lr, grad norm, throughput plots
  python3-torch python3-venv          # tests/hf/check_transformers.py: kiln's GPT-2 against transformers'
  bible-kjv                           # demo corpus: the King James Bible (public domain), see tools/scripts/get-corpus.sh
)
if [[ "${1:-}" == "--oracle" ]]; then
  # OpenBLAS, so that PyTorch does not fall back to the reference BLAS (about 20x slower).
  packages+=(python3-h5py python3-numpy libopenblas0-pthread)
fi

missing=()
for p in "${packages[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "install-deps: have    $p"
  else
    missing+=("$p")
  fi
done
# nvdisasm, for the SASS check of the CUDA kernels (tools/scripts/check-sass-vectors.py), is not a Debian
# package: NVIDIA publishes it on PyPI.
if command -v nvcc >/dev/null && ! command -v nvdisasm >/dev/null &&
   ! python3 -c "import glob, nvidia; assert glob.glob(list(nvidia.__path__)[0] + '/cu*/bin/nvdisasm')" 2>/dev/null; then
  echo "install-deps: installing nvidia-cuda-nvdisasm (PyPI)"
  python3 -m pip install --quiet nvidia-cuda-nvdisasm
fi
if ((${#missing[@]} == 0)); then
  echo "install-deps: no Debian packages to install"
else
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# transformers is not packaged for Debian 12: PyPI's, in a venv that sees Debian's torch 1.13
# (4.40 is the last release that supports it). Without network the HF check is skipped.
cd "$(dirname "$0")/../.."
if ! .venv-hf/bin/python -c "import torch, transformers, safetensors, tensorboard" 2>/dev/null; then
  echo "install-deps: .venv-hf: transformers, safetensors and tensorboard (PyPI) over Debian's python3-torch"
  rm -rf .venv-hf
  { /usr/bin/python3 -m venv --system-site-packages .venv-hf &&
    .venv-hf/bin/pip install --quiet "transformers==4.40.2" "safetensors==0.8.0" "tensorboard==2.21.0"; } ||
    echo "install-deps: warning: .venv-hf not set up; the HF and TensorBoard read-back checks will be skipped"
fi
