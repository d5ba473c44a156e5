// What the CUDA side of this build can see: for `kiln info` and for picking the default device.
// Never fails: without a driver or a GPU it reports why, as text.
#pragma once

#include <string>
#include <vector>

namespace kiln {

struct CudaDevice {
  int index;
  std::string name;
  int compute_major, compute_minor;
  size_t memory_bytes;
  int multiprocessors;
};

struct CudaInfo {
  bool compiled = false;    // built with the CUDA backend
  std::string status;       // "ok", or why no device can be used ("no CUDA device", ...)
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;   // 0 when no driver is installed
  size_t cublaslt_version = 0;
  int nccl_version = 0;
  std::vector<CudaDevice> devices;
};

CudaInfo query_cuda();

// The dense bf16 tensor-core peak of a GPU, in TFLOP/s, from its name as the runtime reports it
// (NVIDIA's data sheets: H100/H200 SXM 989, H100 PCIe 756, A100 312); 0 when not known.
double dense_bf16_peak_tflops(const std::string& gpu_name);

}  // namespace kiln
