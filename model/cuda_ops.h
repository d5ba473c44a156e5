// The CUDA backend of the model's ops (model/ops.h): bf16 parameters and activations, fp32
// gradients, master weights, moments and statistics; the fused kernels of kernels/ and cuBLASLt,
// all on one compute stream. model/cuda_ops.cu is compiled twice, like every .cu: for the GPU
// (kiln::cuda, with CUDA) and for the SIMT emulator (kiln::emu, always), so `--device emu` runs
// the same backend source on the CPU.
#pragma once

#include <cstdint>
#include <memory>

#include "model/ops.h"

namespace kiln {

struct CudaOpsOptions {
  // Bitwise-reproducible steps: the first cuBLASLt heuristic (no timed pick) and the attention
  // backward without float atomics (kernels/cuda/attention.h).
  bool deterministic = false;
  int device = 0;  // the GPU to run on (a process's local rank); the emulator has one
  // The emulator only: the emulated device's memory size (0: 80 GiB, an H100's).
  int64_t emulated_memory_bytes = 0;
};

// make_cuda_ops: the backend, on this process's device. cuda_ops_workspace_bytes: what its
// reserve_workspace(shape) allocates plus the cuBLASLt workspace, known without a device (for
// memory plans). The emulator's and the GPU's are the same source, so the same sizes.
namespace emu {
std::unique_ptr<Ops> make_cuda_ops(const CudaOpsOptions& options);
int64_t cuda_ops_workspace_bytes(const OpsShape& shape, const CudaOpsOptions& options);
int64_t device_allocation_count();  // kernels/device/runtime.h's device_allocations()
}  // namespace emu
namespace cuda {  // defined only in a build with CUDA (KILN_HAVE_CUDA)
std::unique_ptr<Ops> make_cuda_ops(const CudaOpsOptions& options);
int64_t cuda_ops_workspace_bytes(const OpsShape& shape, const CudaOpsOptions& options);
int64_t device_allocation_count();
}  // namespace cuda

}  // namespace kiln
