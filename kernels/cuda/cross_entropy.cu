// Softmax cross-entropy over the vocabulary: see kernels/cuda/cross_entropy.h for the contract and
// kernels/ref/cross_entropy_ref.cpp for the reference math.
//
// One block per row. Pass 1 reads the row's logits once and keeps, per thread, the running max and
// the sum of exp(z - max) (an online softmax: when the max grows, the sum so far is rescaled by
// exp(old_max - new_max)); the block then merges the threads' (max, sum) pairs in a fixed tree.
// Pass 2 reads each logit again (the row was just read, so it comes from L2) and overwrites it
// with its gradient. A thread writes only the elements it reads itself, so the one cross-thread
// hazard of the in-place update is the target's logit, read by thread 0 before the barriers of the
// block merge.
#include "kernels/cuda/cross_entropy.h"
#include "kernels/device/checks.h"

#include <stdexcept>
#include <string>

namespace kiln::KILN_NS {
namespace {

constexpr int kThreads = 512;  // per block, i.e. per row
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// W consecutive bf16 moved by one load or store: W = 8 is a 128-bit access, W = 1 the scalar path
// for rows whose length is not a multiple of 8.
template <int W>
struct alignas(2 * W) Bf16Pack {
  __nv_bfloat16 v[W];
};

// Softmax statistics of a set of logits: their max and sum(exp(z - max)). The empty set is
// {-inf, 0}.
struct SoftmaxStats {
  float max, sumexp;
};

// The subtrahend for exp(z - max): the max itself, or 0 when it is -inf (no logits yet), where
// z - max would give exp(-inf - -inf) = NaN. A NaN logit still makes the sum NaN.
__device__ __forceinline__ float exp_shift(float max) { return max == -INFINITY ? 0.0f : max; }

// Statistics of the union of two sets: both sums rescaled to the larger max.
__device__ __forceinline__ SoftmaxStats merge(SoftmaxStats a, SoftmaxStats b) {
  const float max = fmaxf(a.max, b.max), shift = exp_shift(max);
  return {max, a.sumexp * expf(a.max - shift) + b.sumexp * expf(b.max - shift)};
}

// This thread's statistics over columns [0, V) of the row: the packs at threadIdx.x * W, then
// every kThreads * W columns. Columns >= V (the padding) are never counted, whatever they hold.
// With W = 8 the row length is a multiple of 8, so a pack starting below V is inside the row.
template <int W>
__device__ __forceinline__ SoftmaxStats thread_stats(const __nv_bfloat16* row, int V) {
  SoftmaxStats st{-INFINITY, 0.0f};
  for (int i = threadIdx.x * W; i < V; i += kThreads * W) {
    const Bf16Pack<W> pack = *reinterpret_cast<const Bf16Pack<W>*>(row + i);
    float z[W];
    float pack_max = -INFINITY;
    for (int k = 0; k < W; k++) {
      z[k] = i + k < V ? __bfloat162float(pack.v[k]) : -INFINITY;
      pack_max = fmaxf(pack_max, z[k]);
    }
    const float max = fmaxf(st.max, pack_max), shift = exp_shift(max);
    float sumexp = st.sumexp * expf(st.max - shift);
    for (int k = 0; k < W; k++) sumexp += expf(z[k] - shift);
    st = {max, sumexp};
  }
  return st;
}

// Merges every thread's statistics: within each warp (shuffles), then warp 0 over the warps'
// results, always in the same order. Every thread gets the block's statistics. Contains barriers:
// every thread of the block must call it.
__device__ __forceinline__ SoftmaxStats block_merge(SoftmaxStats st) {
  __shared__ SoftmaxStats warp_stats[kWarps];
  __shared__ SoftmaxStats block_stats;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int offset = 16; offset > 0; offset /= 2)
    st = merge(st, {__shfl_down_sync(kFullMask, st.max, offset), __shfl_down_sync(kFullMask, st.sumexp, offset)});
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? warp_stats[lane] : SoftmaxStats{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset /= 2)
      st = merge(st, {__shfl_down_sync(kFullMask, st.max, offset), __shfl_down_sync(kFullMask, st.sumexp, offset)});
    if (lane == 0) block_stats = st;
  }
  __syncthreads();
  return block_stats;
}

// Overwrites the row with its gradient: dloss * (exp(z - max) / sumexp - [v == target_col]) for
// v < V, 0 for v in [V, Vp). V = 0 writes a zero row. The same thread-to-column mapping as
// thread_stats, so each element is read and written by one thread.
template <int W>
__device__ __forceinline__ void write_dlogits(__nv_bfloat16* row, int V, int Vp, float max, float inv_sumexp,
                                              float dloss, int target_col) {
  for (int i = threadIdx.x * W; i < Vp; i += kThreads * W) {
    Bf16Pack<W> pack;
    if (i < V) pack = *reinterpret_cast<const Bf16Pack<W>*>(row + i);
    for (int k = 0; k < W; k++) {
      const int v = i + k;
      float d = 0.0f;
      if (v < V) {
        const float softmax = expf(__bfloat162float(pack.v[k]) - max) * inv_sumexp;
        d = dloss * (softmax - (v == target_col ? 1.0f : 0.0f));
      }
      pack.v[k] = __float2bfloat16(d);  // round to nearest even
    }
    *reinterpret_cast<Bf16Pack<W>*>(row + i) = pack;
  }
}

// loss = logsumexp - z[target] = (max - z[target]) + log(sumexp). max and z[target] are bf16
// values, so their difference is exact in fp32, even with logits around 1000.
__device__ __forceinline__ float row_loss(float max, float sumexp, float target_logit) {
  return (max - target_logit) + logf(sumexp);
}

}  // namespace

namespace detail {

template <int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_fused_kernel(float* losses, __nv_bfloat16* logits, const int32_t* targets, int V, int Vp, float dloss,
                               bool with_grad) {
  const int n = blockIdx.x;
  __nv_bfloat16* row = logits + (int64_t)n * Vp;
  const int target = targets[n];
  if (target < 0) {  // ignored row (the whole block takes this branch)
    if (threadIdx.x == 0) losses[n] = 0.0f;
    if (with_grad) write_dlogits<W>(row, 0, Vp, 0.0f, 0.0f, 0.0f, -1);
    return;
  }
  // Read before block_merge's barriers: after them, other threads overwrite the row.
  float target_logit = 0.0f;
  if (threadIdx.x == 0) target_logit = target < V ? __bfloat162float(row[target]) : NAN;
  const SoftmaxStats st = block_merge(thread_stats<W>(row, V));
  if (threadIdx.x == 0) losses[n] = row_loss(st.max, st.sumexp, target_logit);
  if (with_grad) write_dlogits<W>(row, V, Vp, st.max, 1.0f / st.sumexp, dloss, target);
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_stats_kernel(float* row_max, float* row_sumexp, float* target_logit, const __nv_bfloat16* logits,
                               const int32_t* targets, int vocab_begin, int V_local_valid, int Vp_local) {
  const int n = blockIdx.x;
  const __nv_bfloat16* row = logits + (int64_t)n * Vp_local;
  const SoftmaxStats st = block_merge(thread_stats<W>(row, V_local_valid));
  if (threadIdx.x == 0) {
    const int target = targets[n], col = target - vocab_begin;
    row_max[n] = st.max;
    row_sumexp[n] = st.sumexp;
    target_logit[n] = target >= 0 && col >= 0 && col < V_local_valid ? __bfloat162float(row[col]) : 0.0f;
  }
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_from_stats_kernel(float* losses, __nv_bfloat16* logits, const int32_t* targets,
                                    const float* global_max, const float* global_sumexp,
                                    const float* global_target_logit, int vocab_begin, int V_local_valid, int Vp_local,
                                    float dloss, bool with_grad) {
  const int n = blockIdx.x;
  __nv_bfloat16* row = logits + (int64_t)n * Vp_local;
  const int target = targets[n];
  if (target < 0) {  // ignored row
    if (threadIdx.x == 0) losses[n] = 0.0f;
    if (with_grad) write_dlogits<W>(row, 0, Vp_local, 0.0f, 0.0f, 0.0f, -1);
    return;
  }
  const float max = global_max[n], sumexp = global_sumexp[n];
  if (threadIdx.x == 0) losses[n] = row_loss(max, sumexp, global_target_logit[n]);
  if (with_grad) write_dlogits<W>(row, V_local_valid, Vp_local, max, 1.0f / sumexp, dloss, target - vocab_begin);
}

__global__ void rescale_sumexp_kernel(float* row_sumexp, const float* row_max, const float* global_max, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n < N && row_sumexp[n] != 0.0f) row_sumexp[n] *= expf(row_max[n] - global_max[n]);
}

}  // namespace detail

namespace {

// The 128-bit path needs rows of a multiple of 8 bf16 starting on 16-byte boundaries.
bool use_packs(const void* rows, int row_length, const char* launcher, const char* name) {
  if (row_length % 8 != 0) return false;
  require(reinterpret_cast<uintptr_t>(rows) % 16 == 0, launcher,
          std::string(name) + " must be 16-byte aligned when the row length is a multiple of 8");
  return true;
}

}  // namespace

void cross_entropy_forward_backward(const Stream& stream, float* losses, __nv_bfloat16* logits_and_dlogits,
                                    const int32_t* targets, int N, int V, int Vp, float dloss, bool with_grad) {
  constexpr const char* kName = "cross_entropy_forward_backward";
  require_pointer(losses, kName, "losses");
  require_pointer(logits_and_dlogits, kName, "logits_and_dlogits");
  require_pointer(targets, kName, "targets");
  require(N >= 1, kName, "N = " + std::to_string(N) + " must be >= 1");
  require(V >= 1, kName, "V = " + std::to_string(V) + " must be >= 1");
  require(V <= Vp, kName, "V = " + std::to_string(V) + " exceeds Vp = " + std::to_string(Vp));
  if (use_packs(logits_and_dlogits, Vp, kName, "logits_and_dlogits"))
    launch(detail::cross_entropy_fused_kernel<8>, N, kThreads, 0, stream, losses, logits_and_dlogits, targets, V, Vp,
           dloss, with_grad);
  else
    launch(detail::cross_entropy_fused_kernel<1>, N, kThreads, 0, stream, losses, logits_and_dlogits, targets, V, Vp,
           dloss, with_grad);
}

namespace {

void check_slice(const char* name, int N, int vocab_begin, int V_local_valid, int Vp_local) {
  require(N >= 1, name, "N = " + std::to_string(N) + " must be >= 1");
  require(vocab_begin >= 0, name, "vocab_begin = " + std::to_string(vocab_begin) + " must be >= 0");
  require(Vp_local >= 1, name, "Vp_local = " + std::to_string(Vp_local) + " must be >= 1");
  require(V_local_valid >= 0 && V_local_valid <= Vp_local, name,
          "V_local_valid = " + std::to_string(V_local_valid) +
              " must be in [0, Vp_local = " + std::to_string(Vp_local) + "]");
}

}  // namespace

void cross_entropy_stats(const Stream& stream, float* row_max, float* row_sumexp, float* target_logit,
                         const __nv_bfloat16* logits, const int32_t* targets, int N, int vocab_begin, int V_local_valid,
                         int Vp_local) {
  constexpr const char* kName = "cross_entropy_stats";
  require_pointer(row_max, kName, "row_max");
  require_pointer(row_sumexp, kName, "row_sumexp");
  require_pointer(target_logit, kName, "target_logit");
  require_pointer(logits, kName, "logits");
  require_pointer(targets, kName, "targets");
  check_slice(kName, N, vocab_begin, V_local_valid, Vp_local);
  if (use_packs(logits, Vp_local, kName, "logits"))
    launch(detail::cross_entropy_stats_kernel<8>, N, kThreads, 0, stream, row_max, row_sumexp, target_logit, logits,
           targets, vocab_begin, V_local_valid, Vp_local);
  else
    launch(detail::cross_entropy_stats_kernel<1>, N, kThreads, 0, stream, row_max, row_sumexp, target_logit, logits,
           targets, vocab_begin, V_local_valid, Vp_local);
}

void rescale_sumexp(const Stream& stream, float* row_sumexp, const float* row_max, const float* global_max, int N) {
  constexpr const char* kName = "rescale_sumexp";
  require_pointer(row_sumexp, kName, "row_sumexp");
  require_pointer(row_max, kName, "row_max");
  require_pointer(global_max, kName, "global_max");
  require(N >= 1, kName, "N = " + std::to_string(N) + " must be >= 1");
  launch(detail::rescale_sumexp_kernel, (N + kThreads - 1) / kThreads, kThreads, 0, stream, row_sumexp, row_max,
         global_max, N);
}

void cross_entropy_from_stats(const Stream& stream, float* losses, __nv_bfloat16* logits_and_dlogits,
                              const int32_t* targets, const float* global_max, const float* global_sumexp,
                              const float* global_target_logit, int N, int vocab_begin, int V_local_valid, int Vp_local,
                              float dloss, bool with_grad) {
  constexpr const char* kName = "cross_entropy_from_stats";
  require_pointer(losses, kName, "losses");
  require_pointer(logits_and_dlogits, kName, "logits_and_dlogits");
  require_pointer(targets, kName, "targets");
  require_pointer(global_max, kName, "global_max");
  require_pointer(global_sumexp, kName, "global_sumexp");
  require_pointer(global_target_logit, kName, "global_target_logit");
  check_slice(kName, N, vocab_begin, V_local_valid, Vp_local);
  if (use_packs(logits_and_dlogits, Vp_local, kName, "logits_and_dlogits"))
    launch(detail::cross_entropy_from_stats_kernel<8>, N, kThreads, 0, stream, losses, logits_and_dlogits, targets,
           global_max, global_sumexp, global_target_logit, vocab_begin, V_local_valid, Vp_local, dloss, with_grad);
  else
    launch(detail::cross_entropy_from_stats_kernel<1>, N, kThreads, 0, stream, losses, logits_and_dlogits, targets,
           global_max, global_sumexp, global_target_logit, vocab_begin, V_local_valid, Vp_local, dloss, with_grad);
}

}  // namespace kiln::KILN_NS
