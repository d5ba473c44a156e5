#include "kernels/cuda/embedding.h"
#include "kernels/device/checks.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln::KILN_NS {
namespace {

// W consecutive channels moved as one access: W = 8 is a 128-bit load of bf16 (two for fp32),
// W = 1 the scalar path for rows whose length or pointers do not allow packs.
template <int W>
struct alignas(2 * W) Bf16Vec {
  __nv_bfloat16 v[W];
};
template <int W>
struct alignas(W % 4 == 0 ? 16 : 4) FloatVec {
  float v[W];
};

template <class V, class T>
__device__ __forceinline__ V& as_vec(T* p) {
  return *reinterpret_cast<V*>(p);
}
template <class V, class T>
__device__ __forceinline__ const V& as_vec(const T* p) {
  return *reinterpret_cast<const V*>(p);
}

// The row of wte holding `token`, or -1 when the token is outside this shard. In 64 bits, so that
// no token id (a device value nobody validated) can overflow the subtraction.
__device__ __forceinline__ int64_t shard_row(int32_t token, int vocab_begin, int vocab_rows) {
  const int64_t row = (int64_t)token - vocab_begin;
  return row >= 0 && row < vocab_rows ? row : -1;
}

}  // namespace

namespace detail {

// Grid-stride over (position, group of W channels).
template <int W>
__global__ void embedding_forward_kernel(__nv_bfloat16* out, const int32_t* tokens, const __nv_bfloat16* wte,
                                         const __nv_bfloat16* wpe, int B, int T, int C, int vocab_begin,
                                         int vocab_rows) {
  const int groups = C / W;
  const int64_t total = (int64_t)B * T * groups;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / groups;  // position b*T + t
    const int c = (int)(i - n * groups) * W;
    const int t = (int)(n % T);
    const int64_t row = shard_row(tokens[n], vocab_begin, vocab_rows);
    const Bf16Vec<W> p = as_vec<Bf16Vec<W>>(wpe + (int64_t)t * C + c);
    Bf16Vec<W> o = p;  // an out-of-shard token: the position embedding alone
    if (row >= 0) {
      const Bf16Vec<W> e = as_vec<Bf16Vec<W>>(wte + row * C + c);
      for (int k = 0; k < W; k++) o.v[k] = __float2bfloat16(__bfloat162float(e.v[k]) + __bfloat162float(p.v[k]));
    }
    as_vec<Bf16Vec<W>>(out + n * C + c) = o;
  }
}

// dwpe[t, c..c+W) += sum over b = 0, 1, ... of dout[b, t, c..c+W): one thread per (t, group),
// adding in b order onto the old value, as the reference does.
template <int W>
__global__ void embedding_backward_wpe_kernel(float* dwpe, const __nv_bfloat16* dout, int B, int T, int C) {
  const int groups = C / W;
  const int64_t total = (int64_t)T * groups;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int t = (int)(i / groups);
    const int c = (int)(i % groups) * W;
    FloatVec<W>& grad = as_vec<FloatVec<W>>(dwpe + (int64_t)t * C + c);
    FloatVec<W> acc = grad;
    for (int b = 0; b < B; b++) {
      const Bf16Vec<W> d = as_vec<Bf16Vec<W>>(dout + ((int64_t)b * T + t) * C + c);
      for (int k = 0; k < W; k++) acc.v[k] += __bfloat162float(d.v[k]);
    }
    grad = acc;
  }
}

// One block per segment of the plan (the positions sharing one token); its threads split the row's
// channels, W at a time, and each adds the segment's positions in order onto the old dwte value.
// A row is touched by exactly one segment, so no two threads write the same gradient.
template <int W>
__global__ void embedding_backward_wte_kernel(float* dwte, const __nv_bfloat16* dout, const int32_t* tokens,
                                              const int32_t* order, const int32_t* segment_starts, int C,
                                              int vocab_begin, int vocab_rows) {
  const int begin = segment_starts[blockIdx.x], end = segment_starts[blockIdx.x + 1];
  if (begin >= end) return;  // never in a plan from make_embedding_backward_plan
  const int64_t row = shard_row(tokens[order[begin]], vocab_begin, vocab_rows);
  if (row < 0) return;  // likewise: the plan holds in-shard positions only
  for (int c = threadIdx.x * W; c < C; c += blockDim.x * W) {
    FloatVec<W>& grad = as_vec<FloatVec<W>>(dwte + row * C + c);
    FloatVec<W> acc = grad;
    for (int j = begin; j < end; j++) {
      const Bf16Vec<W> d = as_vec<Bf16Vec<W>>(dout + (int64_t)order[j] * C + c);
      for (int k = 0; k < W; k++) acc.v[k] += __bfloat162float(d.v[k]);
    }
    grad = acc;
  }
}

}  // namespace detail

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride loops: a few waves of an H100 are plenty

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Null, or not aligned to its own element type (bf16 2 bytes, int32 and float 4).
template <class T>
void check_pointer(const char* launcher, const char* name, const T* p) {
  require_pointer(p, launcher, name);
  require(aligned(p, alignof(T)), launcher,
          std::string(name) + " is not aligned to " + std::to_string(alignof(T)) + " bytes");
}

void check_shape(const char* launcher, int B, int T, int vocab_begin, int vocab_rows) {
  require_positive(B, launcher, "B");
  require_positive(T, launcher, "T");
  require_positive(vocab_rows, launcher, "vocab_rows");
  require(vocab_begin >= 0, launcher, "vocab_begin must be >= 0, got " + std::to_string(vocab_begin));
  require((int64_t)vocab_begin + vocab_rows <= INT_MAX, launcher,
          "vocab_begin + vocab_rows exceeds the int32 token range");
}

dim3 grid_for(int64_t work) { return dim3((unsigned)std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks)); }

}  // namespace

void embedding_forward(const Stream& stream, __nv_bfloat16* out, const int32_t* tokens, const __nv_bfloat16* wte,
                       const __nv_bfloat16* wpe, int B, int T, int C, int vocab_begin, int vocab_rows) {
  const char* name = "embedding_forward";
  check_pointer(name, "out", out);
  check_pointer(name, "tokens", tokens);
  check_pointer(name, "wte", wte);
  check_pointer(name, "wpe", wpe);
  check_shape(name, B, T, vocab_begin, vocab_rows);
  require_positive(C, name, "C");
  // Packs of 8 need every row start 16-byte aligned: C % 8 == 0 and aligned base pointers.
  const bool vector = C % 8 == 0 && aligned(out, 16) && aligned(wte, 16) && aligned(wpe, 16);
  const int64_t positions = (int64_t)B * T;
  if (vector)
    launch(detail::embedding_forward_kernel<8>, grid_for(positions * (C / 8)), kThreads, 0, stream, out, tokens, wte,
           wpe, B, T, C, vocab_begin, vocab_rows);
  else
    launch(detail::embedding_forward_kernel<1>, grid_for(positions * C), kThreads, 0, stream, out, tokens, wte, wpe, B,
           T, C, vocab_begin, vocab_rows);
}

EmbeddingBackwardPlan make_embedding_backward_plan(const int32_t* host_tokens, int B, int T, int vocab_begin,
                                                   int vocab_rows) {
  const char* name = "make_embedding_backward_plan";
  require_pointer(host_tokens, name, "host_tokens");
  check_shape(name, B, T, vocab_begin, vocab_rows);
  require((int64_t)B * T <= INT_MAX, name, "B*T exceeds INT_MAX positions");
  const int positions = B * T;
  // (row, position) pairs of the in-shard positions; sorting them groups by row, and orders each
  // group by position (the pairs are distinct, so the order is fully determined).
  std::vector<std::pair<int32_t, int32_t>> keyed;
  keyed.reserve(positions);
  for (int p = 0; p < positions; p++) {
    const int64_t row = (int64_t)host_tokens[p] - vocab_begin;
    if (row >= 0 && row < vocab_rows) keyed.emplace_back((int32_t)row, p);
  }
  std::sort(keyed.begin(), keyed.end());
  EmbeddingBackwardPlan plan;
  plan.order.reserve(keyed.size());
  for (size_t i = 0; i < keyed.size(); i++) {
    if (i == 0 || keyed[i].first != keyed[i - 1].first) plan.segment_starts.push_back((int32_t)i);
    plan.order.push_back(keyed[i].second);
  }
  plan.segment_starts.push_back((int32_t)keyed.size());
  return plan;
}

void embedding_backward(const Stream& stream, float* dwte, float* dwpe, const __nv_bfloat16* dout,
                        const int32_t* tokens, int B, int T, int C, int vocab_begin, int vocab_rows,
                        const int32_t* order, const int32_t* segment_starts, int segments) {
  const char* name = "embedding_backward";
  check_pointer(name, "dwte", dwte);
  check_pointer(name, "dwpe", dwpe);
  check_pointer(name, "dout", dout);
  check_pointer(name, "tokens", tokens);
  check_shape(name, B, T, vocab_begin, vocab_rows);
  require_positive(C, name, "C");
  require((int64_t)B * T <= INT_MAX, name, "B*T exceeds INT_MAX positions");
  require(segments >= 0 && segments <= B * T, name,
          "segments must be in [0, B*T = " + std::to_string(B * T) + "], got " + std::to_string(segments));
  if (segments > 0) {
    check_pointer(name, "order", order);
    check_pointer(name, "segment_starts", segment_starts);
  }
  // dwpe: one thread per (t, channel group).
  const bool wpe_vector = C % 8 == 0 && aligned(dwpe, 16) && aligned(dout, 16);
  if (wpe_vector)
    launch(detail::embedding_backward_wpe_kernel<8>, grid_for((int64_t)T * (C / 8)), kThreads, 0, stream, dwpe, dout, B,
           T, C);
  else
    launch(detail::embedding_backward_wpe_kernel<1>, grid_for((int64_t)T * C), kThreads, 0, stream, dwpe, dout, B, T,
           C);
  if (segments == 0) return;  // no token in this shard: dwte is unchanged
  // dwte: one block per segment, enough whole warps to cover the row's channel groups once.
  const bool wte_vector = C % 8 == 0 && aligned(dwte, 16) && aligned(dout, 16);
  const int groups = wte_vector ? C / 8 : C;
  const int threads = std::min(kThreads, (groups + 31) / 32 * 32);
  if (wte_vector)
    launch(detail::embedding_backward_wte_kernel<8>, segments, threads, 0, stream, dwte, dout, tokens, order,
           segment_starts, C, vocab_begin, vocab_rows);
  else
    launch(detail::embedding_backward_wte_kernel<1>, segments, threads, 0, stream, dwte, dout, tokens, order,
           segment_starts, C, vocab_begin, vocab_rows);
}

}  // namespace kiln::KILN_NS
