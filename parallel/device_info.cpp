#include "parallel/device_info.h"

#ifdef KILN_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace kiln {

#ifdef KILN_HAVE_CUDA
CudaInfo query_cuda() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  info.cublaslt_version = cublasLtGetVersion();
  ncclGetVersion(&info.nccl_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess || info.driver_version == 0) {
    info.status = "no CUDA device (no NVIDIA driver: libcuda.so.1 not found)";
    return info;
  }
  int count = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess || count == 0) {
    info.status = std::string("no CUDA device (") + (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")";
    return info;
  }
  for (int i = 0; i < count; i++) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    info.devices.push_back({i, prop.name, prop.major, prop.minor, prop.totalGlobalMem, prop.multiProcessorCount});
  }
  info.status = "ok";
  return info;
}
#else
CudaInfo query_cuda() {
  CudaInfo info;
  info.status = "no CUDA device (built without CUDA: KILN_CUDA=OFF or nvcc not found)";
  return info;
}
#endif

double dense_bf16_peak_tflops(const std::string& gpu_name) {
  if (gpu_name.find("H100") != std::string::npos && gpu_name.find("PCIe") != std::string::npos) return 756;
  if (gpu_name.find("H100") != std::string::npos || gpu_name.find("H200") != std::string::npos) return 989;
  if (gpu_name.find("A100") != std::string::npos) return 312;
  return 0;
}

}  // namespace kiln
