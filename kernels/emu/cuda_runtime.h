// The subset of the CUDA runtime API that kiln's device layer uses, implemented by the emulator in
// namespace kiln::emu. Code compiled for the emulator lives in that namespace, so these names
// resolve here instead of to the real runtime; anything kiln has not implemented fails to compile.
#pragma once

#include <vector_types.h>

#include <cstddef>
#include <functional>
#include <string>

namespace kiln::emu {

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
// cudaEventDefault, cudaEventDisableTiming: macros from the toolkit's driver_types.h.

struct EmuStream;
struct EmuEvent;
using cudaStream_t = EmuStream*;
using cudaEvent_t = EmuEvent*;

// The emulated device reports an H100's limits, so launches fail where they would on one.
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin;
  int regsPerBlock, warpSize, maxThreadsPerBlock;
  int maxThreadsDim[3], maxGridSize[3];
  int major, minor, multiProcessorCount;
};

const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceSynchronize();

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaMemGetInfo(size_t* free, size_t* total);
// The emulated device's memory size (80 GiB unless set): cudaMalloc fails beyond it, as on a GPU,
// so that running out of device memory is tested without one. Not a CUDA call: emulator only.
void set_device_memory(size_t bytes);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
// Host time between the two events' completions on their streams: real milliseconds of the
// emulator's work, which say nothing about a GPU.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);

// Emulator side of a kernel launch: validates the configuration as an H100 would, then queues
// `body` (which runs the kernel for the current thread) on the stream.
cudaError_t launch_kernel(const void* func, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                          std::function<void()> body);
// The emulated libraries' work (kernels/emu/cublaslt.cpp), queued in stream order; an exception
// it throws becomes the stream's error, as a failing kernel's would.
cudaError_t enqueue_on_stream(cudaStream_t stream, std::function<void()> work);
// The full message of the last error (kernel, block, thread and what went wrong).
std::string last_error_message();

}  // namespace kiln::emu
