#include "kernels/cuda/matmul.h"
#include "kernels/device/checks.h"
#include "kernels/cuda/gelu.h"

#include <algorithm>
#include <string>

namespace kiln::KILN_NS {
namespace {

using bf16 = __nv_bfloat16;

struct alignas(16) Bf16x8 {
  bf16 v[8];
};

// The column sums of bias_gradient: a block is kColumnThreads x kRowThreads threads; each thread
// sums kPack adjacent columns over every kRowThreads-th row of its block's chunk of rows.
constexpr int kColumnThreads = 32, kRowThreads = 8;
constexpr int kMaxChunks = 128, kMinRowsPerChunk = 64;

// Row chunks for N rows: enough blocks to fill a GPU at GPT-2 widths, a function of N alone so
// that the summation order (and so the result) never depends on the device.
int column_sum_chunks(int N) { return std::min(kMaxChunks, (N + kMinRowsPerChunk - 1) / kMinRowsPerChunk); }

}  // namespace

namespace detail {

// partials[chunk, c] = sum of dout[r, c] over the rows r of `chunk`, in a fixed order: each thread
// row by row, then the kRowThreads per-thread sums in order of threadIdx.y.
template <int kPack>
__global__ void column_sum_partials_kernel(float* partials, const bf16* dout, int N, int OC, int rows_per_chunk) {
  __shared__ float sums[kRowThreads][kColumnThreads * kPack];
  const int col = (blockIdx.x * kColumnThreads + threadIdx.x) * kPack;  // this thread's first column
  const int row_end = std::min(N, (int)(blockIdx.y + 1) * rows_per_chunk);
  float acc[kPack] = {};
  if (col < OC) {
    for (int r = blockIdx.y * rows_per_chunk + threadIdx.y; r < row_end; r += kRowThreads) {
      if constexpr (kPack == 8) {
        const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(dout + (int64_t)r * OC + col);
        for (int k = 0; k < 8; k++) acc[k] += __bfloat162float(v.v[k]);
      } else {
        acc[0] += __bfloat162float(dout[(int64_t)r * OC + col]);
      }
    }
  }
  for (int k = 0; k < kPack; k++) sums[threadIdx.y][threadIdx.x * kPack + k] = acc[k];
  __syncthreads();
  if (threadIdx.y != 0 || col >= OC) return;
  for (int k = 0; k < kPack; k++) {
    float s = 0;
    for (int y = 0; y < kRowThreads; y++) s += sums[y][threadIdx.x * kPack + k];
    partials[(int64_t)blockIdx.y * OC + col + k] = s;
  }
}

// dbias[c] += sum over the chunks, in chunk order.
__global__ void column_sum_finish_kernel(float* dbias, const float* partials, int chunks, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float s = 0;
  for (int chunk = 0; chunk < chunks; chunk++) s += partials[(int64_t)chunk * OC + c];
  dbias[c] += s;
}

// dst[i] += src[i]: cuBLASLt's bf16 bias gradient into kiln's fp32 one.
__global__ void add_bf16_into_float_kernel(float* dst, const bf16* src, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += __bfloat162float(src[i]);
}

}  // namespace detail

namespace {

constexpr int kThreads = 256;
constexpr int kMaxCandidates = 8;

unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a == 0 ? 256 : (int)std::min<uintptr_t>(256, a & (~a + 1));
}

void check_bf16(const char* launcher, const char* name, const void* p) {
  require_pointer(p, launcher, name);
  require_aligned(p, alignof(bf16), launcher, name);
}
void check_float(const char* launcher, const char* name, const void* p) {
  require_pointer(p, launcher, name);
  require_aligned(p, alignof(float), launcher, name);
}
void check_sizes(const char* launcher, int N, int C, int OC) {
  require_positive(N, launcher, "N");
  require_positive(C, launcher, "C");
  require_positive(OC, launcher, "OC");
}

void add_bf16_into_float(const Stream& stream, float* dst, const bf16* src, int n) {
  launch(detail::add_bf16_into_float_kernel, blocks_for(n), kThreads, 0, stream, dst, src, n);
}

}  // namespace

size_t matmul_scratch_floats(int N, int columns) {
  require_positive(N, "matmul_scratch_floats", "N");
  require_positive(columns, "matmul_scratch_floats", "columns");
  return std::max((size_t)column_sum_chunks(N) * columns, ((size_t)columns + 1) / 2);
}

void bias_gradient(const Stream& stream, float* dbias, float* scratch, const bf16* dout, int N, int OC) {
  check_float("bias_gradient", "dbias", dbias);
  check_float("bias_gradient", "scratch", scratch);
  check_bf16("bias_gradient", "dout", dout);
  require_positive(N, "bias_gradient", "N");
  require_positive(OC, "bias_gradient", "OC");
  const int chunks = column_sum_chunks(N), rows_per_chunk = (N + chunks - 1) / chunks;
  const dim3 block(kColumnThreads, kRowThreads);
  if (OC % 8 == 0 && reinterpret_cast<uintptr_t>(dout) % 16 == 0)
    launch(detail::column_sum_partials_kernel<8>, dim3((OC / 8 + kColumnThreads - 1) / kColumnThreads, chunks), block,
           0, stream, scratch, dout, N, OC, rows_per_chunk);
  else
    launch(detail::column_sum_partials_kernel<1>, dim3((OC + kColumnThreads - 1) / kColumnThreads, chunks), block, 0,
           stream, scratch, dout, N, OC, rows_per_chunk);
  launch(detail::column_sum_finish_kernel, blocks_for(OC), kThreads, 0, stream, dbias, scratch, chunks, OC);
}

// One cublasLtMatmul in cuBLASLt's column-major terms: D[m,n] = op(A) op(B) (+ D if accumulate),
// A and B bf16, then the epilogue. A row-major [R, K] matrix is a column-major K x R one, which is
// how each method below maps kiln's row-major tensors.
struct Matmul::Problem {
  cublasOperation_t transa, transb;
  int64_t m, n, k;
  const bf16* a;
  int64_t lda;
  const bf16* b;
  int64_t ldb;
  void* d;
  int64_t ldd;
  cudaDataType_t d_type;
  bool accumulate = false;  // beta = 1, C = D
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // BIAS: the vector added; BGRAD: where the bias gradient goes
  const void* aux = nullptr;   // GELU_AUX: the pre-activation written; DGELU: the one read
  int64_t ld_aux = 0;

  MatmulKey key() const {
    return {m,
            n,
            k,
            lda,
            ldb,
            ldd,
            ld_aux,
            (int)transa,
            (int)transb,
            (int)d_type,
            (int)epilogue,
            (int)accumulate,
            alignment_of(a),
            alignment_of(b),
            alignment_of(d),
            alignment_of(bias),
            alignment_of(aux)};
  }
};

struct Matmul::Call {
  LtMatmulDesc desc{CUBLAS_COMPUTE_32F, CUDA_R_32F};
  LtLayout a, b, d;

  explicit Call(const Problem& p)
      : a(CUDA_R_16BF, p.transa == CUBLAS_OP_N ? p.m : p.k, p.transa == CUBLAS_OP_N ? p.k : p.m, p.lda),
        b(CUDA_R_16BF, p.transb == CUBLAS_OP_N ? p.k : p.n, p.transb == CUBLAS_OP_N ? p.n : p.k, p.ldb),
        d(p.d_type, p.m, p.n, p.ldd) {
    desc.set(CUBLASLT_MATMUL_DESC_TRANSA, (int32_t)p.transa);
    desc.set(CUBLASLT_MATMUL_DESC_TRANSB, (int32_t)p.transb);
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE, (uint32_t)p.epilogue);
    if (p.bias) desc.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias);
    if (p.aux) {
      desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, p.aux);
      desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, p.ld_aux);
    }
  }
};

Matmul::Matmul(MatmulOptions options) : options_(options), workspace_(options.workspace_bytes) {
  require(options.candidates >= 1 && options.candidates <= kMaxCandidates, "Matmul",
          "candidates must be 1.." + std::to_string(kMaxCandidates) + ", got " + std::to_string(options.candidates));
}

void Matmul::enqueue(const Problem& p, const Call& call, const cublasLtMatmulAlgo_t& algo, const Stream& stream) {
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  KILN_CUBLAS_CHECK(KILN_RT cublasLtMatmul(handle_.get(), call.desc.get(), &alpha, p.a, call.a.get(), p.b, call.b.get(),
                                           &beta, p.d, call.d.get(), p.d, call.d.get(), &algo, workspace_.data(),
                                           workspace_.size(), stream.get()));
  stats_.gemms++;
}

// The heuristic's first result, or (not deterministic, and D not accumulated, so that trial runs
// leave no trace) the fastest of its top candidates, each timed over a few runs.
std::optional<Matmul::Algorithm> Matmul::choose(const Problem& p, const Call& call, const Stream& stream) {
  LtPreference pref;
  pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, (uint64_t)options_.workspace_bytes);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, (uint32_t)alignment_of(p.a));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, (uint32_t)alignment_of(p.b));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, (uint32_t)alignment_of(p.d));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, (uint32_t)alignment_of(p.d));
  const bool timed = !options_.deterministic && !p.accumulate;
  cublasLtMatmulHeuristicResult_t results[kMaxCandidates] = {};
  int returned = 0;
  const cublasStatus_t status = KILN_RT cublasLtMatmulAlgoGetHeuristic(
      handle_.get(), call.desc.get(), call.a.get(), call.b.get(), call.d.get(), call.d.get(), pref.get(),
      timed ? options_.candidates : 1, results, &returned);
  stats_.cache_misses++;
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && returned == 0)) return std::nullopt;
  KILN_CUBLAS_CHECK(status);
  if (returned == 1) return Algorithm{results[0].algo};
  constexpr int kTrials = 3;
  Event start(true), end(true);
  float best_ms = 0;
  int best = 0;
  for (int i = 0; i < returned; i++) {
    enqueue(p, call, results[i].algo, stream);  // warm-up
    start.record(stream);
    for (int t = 0; t < kTrials; t++) enqueue(p, call, results[i].algo, stream);
    end.record(stream);
    end.synchronize();
    const float ms = end.elapsed_ms_since(start);
    if (i == 0 || ms < best_ms) best_ms = ms, best = i;
  }
  return Algorithm{results[best].algo};
}

bool Matmul::run(const Problem& p, const Stream& stream) {
  const Call call(p);
  auto it = cache_.find(p.key());
  if (it == cache_.end()) it = cache_.emplace(p.key(), choose(p, call, stream)).first;
  if (!it->second) return false;
  enqueue(p, call, it->second->algo, stream);
  return true;
}

void Matmul::forward(const Stream& stream, bf16* out, const bf16* x, const bf16* weight, const bf16* bias, int N, int C,
                     int OC) {
  check_bf16("Matmul::forward", "out", out);
  check_bf16("Matmul::forward", "x", x);
  check_bf16("Matmul::forward", "weight", weight);
  if (bias) check_bf16("Matmul::forward", "bias", bias);
  check_sizes("Matmul::forward", N, C, OC);
  Problem p{CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, x, C, out, OC, CUDA_R_16BF};
  if (bias) p.epilogue = CUBLASLT_EPILOGUE_BIAS, p.bias = bias;
  if (!run(p, stream)) throw std::runtime_error("Matmul::forward: cuBLASLt has no algorithm for this matmul");
}

void Matmul::forward_gelu(const Stream& stream, bf16* out, bf16* pre, const bf16* x, const bf16* weight,
                          const bf16* bias, int N, int C, int OC) {
  check_bf16("Matmul::forward_gelu", "out", out);
  check_bf16("Matmul::forward_gelu", "pre", pre);
  check_bf16("Matmul::forward_gelu", "x", x);
  check_bf16("Matmul::forward_gelu", "weight", weight);
  check_bf16("Matmul::forward_gelu", "bias", bias);
  check_sizes("Matmul::forward_gelu", N, C, OC);
  Problem p{CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, x, C, out, OC, CUDA_R_16BF};
  p.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS, p.bias = bias, p.aux = pre, p.ld_aux = OC;
  if (run(p, stream)) {
    stats_.fused++;
    return;
  }
  stats_.fallbacks++;
  forward(stream, pre, x, weight, bias, N, C, OC);
  gelu_forward(stream, out, pre, (int64_t)N * OC);
}

void Matmul::backward_input(const Stream& stream, bf16* dx, const bf16* dout, const bf16* weight, int N, int C,
                            int OC) {
  check_bf16("Matmul::backward_input", "dx", dx);
  check_bf16("Matmul::backward_input", "dout", dout);
  check_bf16("Matmul::backward_input", "weight", weight);
  check_sizes("Matmul::backward_input", N, C, OC);
  const Problem p{CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC, dx, C, CUDA_R_16BF};
  if (!run(p, stream)) throw std::runtime_error("Matmul::backward_input: cuBLASLt has no algorithm for this matmul");
}

void Matmul::backward_input_gelu(const Stream& stream, bf16* dpre, float* dbias_pre, float* scratch, const bf16* dout,
                                 const bf16* weight, const bf16* pre, int N, int C, int OC) {
  check_bf16("Matmul::backward_input_gelu", "dpre", dpre);
  if (dbias_pre) {
    check_float("Matmul::backward_input_gelu", "dbias_pre", dbias_pre);
    check_float("Matmul::backward_input_gelu", "scratch", scratch);
  }
  check_bf16("Matmul::backward_input_gelu", "dout", dout);
  check_bf16("Matmul::backward_input_gelu", "weight", weight);
  check_bf16("Matmul::backward_input_gelu", "pre", pre);
  check_sizes("Matmul::backward_input_gelu", N, C, OC);
  Problem p{CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC, dpre, C, CUDA_R_16BF};
  p.aux = pre, p.ld_aux = C;
  bf16* bias_bf16 = reinterpret_cast<bf16*>(scratch);
  if (dbias_pre)
    p.epilogue = CUBLASLT_EPILOGUE_DGELU_BGRAD, p.bias = bias_bf16;
  else
    p.epilogue = CUBLASLT_EPILOGUE_DGELU;
  if (run(p, stream)) {
    stats_.fused++;
    if (dbias_pre) add_bf16_into_float(stream, dbias_pre, bias_bf16, C);
    return;
  }
  stats_.fallbacks++;
  backward_input(stream, dpre, dout, weight, N, C, OC);
  gelu_backward(stream, dpre, pre, dpre, (int64_t)N * C);
  if (dbias_pre) bias_gradient(stream, dbias_pre, scratch, dpre, N, C);
}

void Matmul::backward_weight(const Stream& stream, float* dweight, float* dbias, float* scratch, const bf16* dout,
                             const bf16* x, int N, int C, int OC) {
  check_float("Matmul::backward_weight", "dweight", dweight);
  check_bf16("Matmul::backward_weight", "dout", dout);
  check_bf16("Matmul::backward_weight", "x", x);
  check_sizes("Matmul::backward_weight", N, C, OC);
  Problem p{CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, x, C, dout, OC, dweight, C, CUDA_R_32F};
  p.accumulate = true;
  if (!run(p, stream)) throw std::runtime_error("Matmul::backward_weight: cuBLASLt has no algorithm for this matmul");
  if (dbias) bias_gradient(stream, dbias, scratch, dout, N, OC);
}

}  // namespace kiln::KILN_NS
