#include "kernels/emu/cublaslt.h"

#include <cuda_bf16.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace kiln::emu {
namespace {

// The objects behind cuBLASLt's opaque handles.
struct LtContext {};
struct MatmulDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  const void* aux = nullptr;
  int64_t ld_aux = 0;
  int32_t bias_type = -1, aux_type = -1;  // -1: D's type, the only one emulated
};
struct Layout {
  cudaDataType_t type;
  int64_t rows, cols, ld;
};
struct Preference {
  uint64_t max_workspace = 0;
  uint32_t min_alignment[4] = {256, 256, 256, 256};  // A, B, C, D, as the library's defaults
};

MatmulDesc* desc_of(cublasLtMatmulDesc_t d) { return reinterpret_cast<MatmulDesc*>(d); }
Layout* layout_of(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Preference* pref_of(cublasLtMatmulPreference_t p) { return reinterpret_cast<Preference*>(p); }

// An algorithm handed out by the heuristic: a marker and the alignments it was chosen for.
constexpr uint64_t kAlgoMarker = 0x6b696c6e2d6c74ull;  // "kiln-lt"
constexpr int kAlgorithms = 3;

size_t element_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }
bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

bool has_bias(uint32_t e) { return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS; }
bool has_bias_gradient(uint32_t e) { return e == CUBLASLT_EPILOGUE_DGELU_BGRAD; }
bool has_aux(uint32_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU || e == CUBLASLT_EPILOGUE_DGELU_BGRAD;
}

template <class T>
cublasStatus_t read_attribute(T& dst, const void* buf, size_t size) {
  if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
  std::memcpy(&dst, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

// The problem's sizes, if the layouts agree with the transposes: op(A) is m x k, op(B) k x n.
struct Shape {
  int64_t m, n, k;
};

// What the library checks before choosing an algorithm: INVALID_VALUE for layouts that cannot
// describe the product, NOT_SUPPORTED for what it does not implement.
cublasStatus_t check_problem(const MatmulDesc& op, const Layout& a, const Layout& b, const Layout& c, const Layout& d,
                             Shape& shape) {
  const bool ta = op.transa != CUBLAS_OP_N, tb = op.transb != CUBLAS_OP_N;
  shape = {ta ? a.cols : a.rows, tb ? b.rows : b.cols, ta ? a.rows : a.cols};
  for (const Layout* l : {&a, &b, &c, &d})
    if (l->rows < 1 || l->cols < 1 || l->ld < l->rows) return CUBLAS_STATUS_INVALID_VALUE;
  if ((tb ? b.cols : b.rows) != shape.k || d.rows != shape.m || d.cols != shape.n || c.rows != d.rows ||
      c.cols != d.cols)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (op.compute != CUBLAS_COMPUTE_32F || op.scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (a.type != CUDA_R_16BF || b.type != CUDA_R_16BF || c.type != d.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (d.type != CUDA_R_16BF && d.type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  for (int32_t t : {op.transa, op.transb})
    if (t != CUBLAS_OP_N && t != CUBLAS_OP_T) return CUBLAS_STATUS_NOT_SUPPORTED;
  const uint32_t e = op.epilogue;
  if (e != CUBLASLT_EPILOGUE_DEFAULT && !has_bias(e) && !has_aux(e)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op.bias_type != -1 && op.bias_type != d.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op.aux_type != -1 && op.aux_type != d.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  const size_t bytes = element_bytes(d.type);
  if (has_bias(e) || has_bias_gradient(e)) {
    if (!op.bias) return CUBLAS_STATUS_INVALID_VALUE;
    if (!aligned(op.bias, bytes)) return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (has_aux(e)) {
    if (!op.aux) return CUBLAS_STATUS_INVALID_VALUE;
    // cublasLt.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: "Must be divisible by 8 and be no less
    // than the number of rows in the output matrix."
    if (op.ld_aux % 8 != 0 || op.ld_aux < d.rows || !aligned(op.aux, bytes)) return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

float load(const void* p, cudaDataType_t t, int64_t i) {
  return t == CUDA_R_32F ? static_cast<const float*>(p)[i] : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, cudaDataType_t t, int64_t i, float v) {
  if (t == CUDA_R_32F)
    static_cast<float*>(p)[i] = v;
  else
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
}

// The library's own GELU (tanh approximation), as GPT-2 and kernels/cuda/gelu.h define it.
constexpr float kGeluScale = 0.7978845608028654f, kGeluCubic = 0.044715f;
float gelu(float x) { return 0.5f * x * (1.0f + std::tanh(kGeluScale * (x + kGeluCubic * x * x * x))); }
float gelu_grad(float x) {
  const float th = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
}

// fp32 dot product in a fixed order: 8 interleaved partial sums, then added in order.
float dot(const float* x, const float* y, int64_t k) {
  float part[8] = {};
  int64_t l = 0;
  for (; l + 8 <= k; l += 8)
    for (int j = 0; j < 8; j++) part[j] += x[l + j] * y[l + j];
  for (; l < k; l++) part[l % 8] += x[l] * y[l];
  float s = 0;
  for (float v : part) s += v;
  return s;
}

struct Job {
  MatmulDesc op;
  Layout a, b, c, d;
  Shape shape;
  float alpha, beta;
  const void *A, *B, *C;
  void* D;
};

void compute(const Job& job) {
  const auto [m, n, k] = job.shape;
  const MatmulDesc& op = job.op;
  // op(A) as m rows of k and op(B) as n columns of k, in fp32 (exact: bf16 widens losslessly).
  std::vector<float> a((size_t)(m * k)), b((size_t)(n * k));
  for (int64_t i = 0; i < m; i++)
    for (int64_t l = 0; l < k; l++)
      a[i * k + l] = load(job.A, CUDA_R_16BF, op.transa == CUBLAS_OP_N ? i + l * job.a.ld : l + i * job.a.ld);
  for (int64_t j = 0; j < n; j++)
    for (int64_t l = 0; l < k; l++)
      b[j * k + l] = load(job.B, CUDA_R_16BF, op.transb == CUBLAS_OP_N ? l + j * job.b.ld : j + l * job.b.ld);
  const cudaDataType_t out = job.d.type;
  std::vector<float> bias_gradient(has_bias_gradient(op.epilogue) ? m : 0, 0.0f);
  for (int64_t j = 0; j < n; j++) {
    for (int64_t i = 0; i < m; i++) {
      float v = job.alpha * dot(&a[i * k], &b[j * k], k);
      if (job.beta != 0) v += job.beta * load(job.C, job.c.type, i + j * job.c.ld);
      if (has_bias(op.epilogue)) v += load(op.bias, out, i);
      if (op.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
        store(const_cast<void*>(op.aux), out, i + j * op.ld_aux, v);
        v = gelu(v);
      } else if (has_aux(op.epilogue)) {
        v *= gelu_grad(load(op.aux, out, i + j * op.ld_aux));
        if (has_bias_gradient(op.epilogue)) bias_gradient[i] += v;
      }
      store(job.D, out, i + j * job.d.ld, v);
    }
  }
  for (int64_t i = 0; i < (int64_t)bias_gradient.size(); i++)
    store(const_cast<void*>(op.bias), out, i, bias_gradient[i]);
}

}  // namespace

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = reinterpret_cast<cublasLtHandle_t>(new LtContext);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete reinterpret_cast<LtContext*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(new MatmulDesc{compute, scale});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc_of(desc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  if (!desc) return CUBLAS_STATUS_NOT_INITIALIZED;
  MatmulDesc& d = *desc_of(desc);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return read_attribute(d.transa, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return read_attribute(d.transb, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return read_attribute(d.epilogue, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return read_attribute(d.bias, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return read_attribute(d.aux, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return read_attribute(d.ld_aux, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return read_attribute(d.bias_type, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
      return read_attribute(d.aux_type, buf, size);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;  // not emulated
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, (int64_t)rows, (int64_t)cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout_of(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new Preference);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref_of(pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size) {
  if (!pref) return CUBLAS_STATUS_NOT_INITIALIZED;
  Preference& p = *pref_of(pref);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      return read_attribute(p.max_workspace, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      return read_attribute(p.min_alignment[0], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      return read_attribute(p.min_alignment[1], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      return read_attribute(p.min_alignment[2], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      return read_attribute(p.min_alignment[3], buf, size);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;  // not emulated
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (!handle || !desc || !a || !b || !c || !d || !pref) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requested < 1 || !results || !returned) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  Shape shape;
  if (const cublasStatus_t s =
          check_problem(*desc_of(desc), *layout_of(a), *layout_of(b), *layout_of(c), *layout_of(d), shape);
      s != CUBLAS_STATUS_SUCCESS)
    return s;
  const Preference& p = *pref_of(pref);
  for (int i = 0; i < std::min(requested, kAlgorithms); i++) {
    results[i] = {};
    results[i].algo.data[0] = kAlgoMarker;
    results[i].algo.data[1] = (uint64_t)i;
    for (int m = 0; m < 4; m++) results[i].algo.data[2 + m] = p.min_alignment[m];
    results[i].workspaceSize = 0;
    results[i].state = CUBLAS_STATUS_SUCCESS;
    results[i].wavesCount = 1.0f;
    ++*returned;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  (void)workspace, (void)workspace_bytes;  // the emulated algorithms need none
  if (!handle || !desc || !a || !b || !c || !d) return CUBLAS_STATUS_NOT_INITIALIZED;
  Job job{*desc_of(desc), *layout_of(a), *layout_of(b), *layout_of(c), *layout_of(d), {}, 0, 0, A, B, C, D};
  if (const cublasStatus_t s = check_problem(job.op, job.a, job.b, job.c, job.d, job.shape); s != CUBLAS_STATUS_SUCCESS)
    return s;
  if (!alpha || !beta || !A || !B || !D) return CUBLAS_STATUS_INVALID_VALUE;
  job.alpha = *static_cast<const float*>(alpha);  // host pointer mode: read at the call, as the library does
  job.beta = *static_cast<const float*>(beta);
  if (job.beta != 0 && !C) return CUBLAS_STATUS_INVALID_VALUE;
  if (C == D && job.c.ld != job.d.ld) return CUBLAS_STATUS_INVALID_VALUE;  // in place needs one layout
  if (algo) {
    if (algo->data[0] != kAlgoMarker) return CUBLAS_STATUS_INVALID_VALUE;
    const void* pointers[4] = {A, B, C ? C : D, D};
    for (int m = 0; m < 4; m++)
      if (!aligned(pointers[m], algo->data[2 + m])) return CUBLAS_STATUS_INVALID_VALUE;  // below what it was chosen for
  }
  const size_t bytes = element_bytes(job.d.type);
  for (const void* p : {A, B})
    if (!aligned(p, 2)) return CUBLAS_STATUS_INVALID_VALUE;
  for (const void* p : {C, static_cast<const void*>(D)})
    if (p && !aligned(p, bytes)) return CUBLAS_STATUS_INVALID_VALUE;
  enqueue_on_stream(stream, [job] { compute(job); });
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace kiln::emu
