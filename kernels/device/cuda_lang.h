// First include of every `.cu` file. A `.cu` file is compiled twice: by nvcc for the GPU
// (namespace kiln::cuda) and, with KILN_EMU defined, by the host compiler against the SIMT
// emulator (namespace kiln::emu). Kernel code writes `namespace kiln::KILN_NS { ... }` and tests
// KILN_ARCH (never __CUDA_ARCH__), so that both builds see the same source.
#pragma once

#ifdef KILN_EMU
#include "kernels/emu/lang.h"
#define KILN_NS emu
#define KILN_ARCH 900  // the emulator follows sm_90's semantics
// The runtime API's namespace: qualified calls, so that argument-dependent lookup cannot also
// find the toolkit's declarations in the global namespace.
#define KILN_RT ::kiln::emu::
#else
#define KILN_RT ::
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define KILN_NS cuda
#ifdef __CUDA_ARCH__
#define KILN_ARCH __CUDA_ARCH__
#else
#define KILN_ARCH 0  // nvcc's host pass
#endif
#endif

namespace kiln::KILN_NS {

// The block's dynamic shared memory, as T[]; its size is the launch's shared_bytes.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef KILN_EMU
  return static_cast<T*>(::kiln::emu::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char kiln_dynamic_shared[];
  return reinterpret_cast<T*>(kiln_dynamic_shared);
#endif
}

}  // namespace kiln::KILN_NS
