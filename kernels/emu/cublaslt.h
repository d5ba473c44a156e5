// The subset of cuBLASLt that kiln uses (kernels/cuda/matmul.cu), implemented by the emulator in
// namespace kiln::emu with the real library's signatures, so the same wrapper source drives both.
// The types, enums and attributes are the toolkit's own (cublasLt.h); only the functions and the
// objects behind the opaque handles are the emulator's.
//
// What it computes, in cuBLASLt's column-major terms, for bf16 A and B, fp32 compute and scale:
//   D = epilogue(alpha * op(A) op(B) + beta * C),  products accumulated in fp32,
// with the epilogues DEFAULT, BIAS, GELU_AUX_BIAS, DGELU and DGELU_BGRAD, and C/D in bf16 or fp32.
// It refuses (CUBLAS_STATUS_NOT_SUPPORTED from the heuristic, no algorithm) what the real library
// documents as unsupported: an aux leading dimension not divisible by 8 or below D's rows, a
// C type other than D's, and bias or aux pointers not aligned to their element type. Anything
// kiln does not use (other types, epilogues, batching) is refused the same way.
#pragma once

#include <cublasLt.h>  // types and enums only: the functions below replace the library's

#include "kernels/emu/cuda_runtime.h"

namespace kiln::emu {

const char* cublasLtGetStatusString(cublasStatus_t status);

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size);

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size);

// Up to 3 results, all computing the same function (the emulator has one implementation); each
// remembers the minimum pointer alignments it was chosen for, and cublasLtMatmul checks them.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned);

// Validates the call as the library would, then queues the computation on `stream`.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream);

}  // namespace kiln::emu
