// cuBLASLt for kiln's device layer: the real library on the GPU, the emulator's
// (kernels/emu/cublaslt.h) otherwise; checked calls and RAII for its handle and descriptors.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/device/cuda_lang.h"
#ifdef KILN_EMU
#include "kernels/emu/cublaslt.h"
#else
#include <cublasLt.h>
#endif

namespace kiln::KILN_NS {

[[noreturn]] inline void fail_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
                           KILN_RT cublasLtGetStatusString(status));
}

#define KILN_CUBLAS_CHECK(call)                                                            \
  do {                                                                                     \
    if (const cublasStatus_t kiln_status_ = (call); kiln_status_ != CUBLAS_STATUS_SUCCESS) \
      ::kiln::KILN_NS::fail_cublas(kiln_status_, #call, __FILE__, __LINE__);               \
  } while (0)

class LtHandle {
 public:
  LtHandle() { KILN_CUBLAS_CHECK(KILN_RT cublasLtCreate(&handle_)); }
  ~LtHandle() { KILN_RT cublasLtDestroy(handle_); }
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

// A column-major matrix layout: rows x cols of `type`, leading dimension ld.
class LtLayout {
 public:
  LtLayout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    KILN_CUBLAS_CHECK(KILN_RT cublasLtMatrixLayoutCreate(&layout_, type, (uint64_t)rows, (uint64_t)cols, ld));
  }
  ~LtLayout() { KILN_RT cublasLtMatrixLayoutDestroy(layout_); }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
  cublasLtMatrixLayout_t get() const { return layout_; }

 private:
  cublasLtMatrixLayout_t layout_ = nullptr;
};

// The operation descriptor: compute and scale type, then attributes set one by one.
class LtMatmulDesc {
 public:
  LtMatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
    KILN_CUBLAS_CHECK(KILN_RT cublasLtMatmulDescCreate(&desc_, compute, scale));
  }
  ~LtMatmulDesc() { KILN_RT cublasLtMatmulDescDestroy(desc_); }
  LtMatmulDesc(const LtMatmulDesc&) = delete;
  LtMatmulDesc& operator=(const LtMatmulDesc&) = delete;
  template <class T>
  void set(cublasLtMatmulDescAttributes_t attr, const T& value) {
    KILN_CUBLAS_CHECK(KILN_RT cublasLtMatmulDescSetAttribute(desc_, attr, &value, sizeof value));
  }
  cublasLtMatmulDesc_t get() const { return desc_; }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
};

class LtPreference {
 public:
  LtPreference() { KILN_CUBLAS_CHECK(KILN_RT cublasLtMatmulPreferenceCreate(&pref_)); }
  ~LtPreference() { KILN_RT cublasLtMatmulPreferenceDestroy(pref_); }
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
  template <class T>
  void set(cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
    KILN_CUBLAS_CHECK(KILN_RT cublasLtMatmulPreferenceSetAttribute(pref_, attr, &value, sizeof value));
  }
  cublasLtMatmulPreference_t get() const { return pref_; }

 private:
  cublasLtMatmulPreference_t pref_ = nullptr;
};

}  // namespace kiln::KILN_NS
