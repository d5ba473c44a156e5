// The model's matmuls on the device, through cuBLASLt: bf16 inputs, fp32 accumulation, with the
// bias and GELU fused into the GEMM's epilogue where cuBLASLt accepts the shape. The math is
// ref::matmul_forward / ref::matmul_backward and ref::gelu_* (kernels/ref/matmul_ref.cpp, gelu_ref.cpp):
// weights are in nn.Linear layout W[OC, C], activations row-major [N, C] with N = B*T rows.
//
//   forward:        out[N,OC]  = x @ W^T + bias                   (cuBLASLt epilogue BIAS)
//   forward_gelu:   pre        = x @ W^T + bias, out = gelu(pre)  (GELU_AUX_BIAS: pre is the aux output)
//   backward_input: dx[N,C]    = dout @ W                          (written, not accumulated)
//   backward_input_gelu: dpre  = (dout @ W) * gelu'(pre),
//                   dbias_pre += sum_n dpre                       (DGELU_BGRAD into bf16 scratch)
//   backward_weight: dW[OC,C] += dout^T @ x  (fp32, beta = 1, so micro-batches accumulate exactly)
//                   dbias     += sum_n dout  (fp32, a deterministic two-stage column sum)
//
// cuBLASLt's bias gradient is stored in the output type and overwrites its buffer, so it cannot
// accumulate over micro-batches: it goes to bf16 scratch, then one kernel adds it into dbias.
// Shapes cuBLASLt refuses for a fused epilogue (the aux leading dimension, OC, not a multiple of
// 8; misaligned pointers) run as a plain GEMM plus the standalone kernels: same function, more
// passes, counted in MatmulStats::fallbacks. On the emulator, kernels/emu/cublaslt.cpp computes
// the same function on the CPU and refuses what the real library refuses.
//
// The algorithm for each problem (shape, transposes, dtypes, epilogue, pointer alignment) is chosen
// once and cached. Deterministic mode takes cuBLASLt's first heuristic result; otherwise the top
// candidates are timed on first use and the fastest kept (which can differ between runs).
// Launchers throw std::invalid_argument on null pointers, sizes <= 0, or pointers not aligned to
// their element type; a cuBLASLt failure throws std::runtime_error naming the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include "kernels/device/cublaslt.h"
#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

struct MatmulOptions {
  size_t workspace_bytes = 32u << 20;  // cuBLASLt's workspace (32 MiB, NVIDIA's advice for Hopper)
  bool deterministic = true;           // first heuristic result, never a timed pick
  int candidates = 4;                  // algorithms timed per problem when not deterministic, 1..8
};

struct MatmulStats {
  int64_t gemms = 0;         // cublasLtMatmul calls
  int64_t fused = 0;         // of which with a fused GELU/DGELU epilogue
  int64_t fallbacks = 0;     // fused requests refused by cuBLASLt, run as GEMM + standalone kernels
  int64_t cache_misses = 0;  // heuristic queries (each new problem once)
};

// Floats of scratch that a bias gradient over N rows of `columns` values needs: bias_gradient's
// partial sums, or DGELU_BGRAD's bf16 vector. The caller allocates it once (no allocation in a step).
size_t matmul_scratch_floats(int N, int columns);

// dbias[OC] += sum over the N rows of dout[N, OC] (fp32 accumulation, fixed order). scratch holds
// matmul_scratch_floats(N, OC) floats (overwritten).
void bias_gradient(const Stream& stream, float* dbias, float* scratch, const __nv_bfloat16* dout, int N, int OC);

// What makes two cuBLASLt calls the same problem for the algorithm cache: sizes, leading
// dimensions, transposes, output type, epilogue, accumulation, and the alignment (a power of two up
// to 256 bytes) of every pointer, since an algorithm may need more alignment than a view has.
struct MatmulKey {
  int64_t m, n, k, lda, ldb, ldd, ld_aux;
  int transa, transb, d_type, epilogue, accumulate;
  int align_a, align_b, align_d, align_bias, align_aux;
  auto fields() const {
    return std::tie(m, n, k, lda, ldb, ldd, ld_aux, transa, transb, d_type, epilogue, accumulate, align_a, align_b,
                    align_d, align_bias, align_aux);
  }
  bool operator<(const MatmulKey& other) const { return fields() < other.fields(); }
};

class Matmul {
 public:
  explicit Matmul(MatmulOptions options = {});
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  // out[N,OC] = x[N,C] @ weight[OC,C]^T (+ bias[OC] unless null).
  void forward(const Stream& stream, __nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* weight,
               const __nv_bfloat16* bias, int N, int C, int OC);
  // pre[N,OC] = x @ weight^T + bias; out[N,OC] = gelu(pre) (tanh approximation).
  void forward_gelu(const Stream& stream, __nv_bfloat16* out, __nv_bfloat16* pre, const __nv_bfloat16* x,
                    const __nv_bfloat16* weight, const __nv_bfloat16* bias, int N, int C, int OC);
  // dx[N,C] = dout[N,OC] @ weight[OC,C], overwriting dx.
  void backward_input(const Stream& stream, __nv_bfloat16* dx, const __nv_bfloat16* dout, const __nv_bfloat16* weight,
                      int N, int C, int OC);
  // The GELU layer's backward fused into the next matmul's dgrad: with h = gelu(pre) the input of
  // `weight` [OC, C], dpre[N,C] = (dout[N,OC] @ weight) * gelu'(pre[N,C]), and, unless dbias_pre is
  // null, dbias_pre[C] += sum_n dpre (the bias gradient of the layer that produced pre).
  // scratch: matmul_scratch_floats(N, C) floats.
  void backward_input_gelu(const Stream& stream, __nv_bfloat16* dpre, float* dbias_pre, float* scratch,
                           const __nv_bfloat16* dout, const __nv_bfloat16* weight, const __nv_bfloat16* pre, int N,
                           int C, int OC);
  // dweight[OC,C] += dout[N,OC]^T @ x[N,C] in fp32; dbias[OC] += sum_n dout unless dbias is null.
  // scratch (matmul_scratch_floats(N, OC) floats) is used only for dbias and may be null without it.
  void backward_weight(const Stream& stream, float* dweight, float* dbias, float* scratch, const __nv_bfloat16* dout,
                       const __nv_bfloat16* x, int N, int C, int OC);

  const MatmulStats& stats() const { return stats_; }

 private:
  struct Problem;  // one cuBLASLt call, described (kernels/cuda/matmul.cu)
  // Runs p with its cached algorithm; false (nothing launched) if cuBLASLt has none for it.
  bool run(const Problem& p, const Stream& stream);
  struct Call;  // its descriptors
  // A named wrapper: nvcc 13's front end fails on std::optional of cuBLASLt's anonymous structs.
  struct Algorithm {
    cublasLtMatmulAlgo_t algo;
  };
  std::optional<Algorithm> choose(const Problem& p, const Call& call, const Stream& stream);
  void enqueue(const Problem& p, const Call& call, const cublasLtMatmulAlgo_t& algo, const Stream& stream);

  MatmulOptions options_;
  LtHandle handle_;
  DeviceBuffer<std::byte> workspace_;
  std::map<MatmulKey, std::optional<Algorithm>> cache_;  // nullopt: refused
  MatmulStats stats_;
};

}  // namespace kiln::KILN_NS
