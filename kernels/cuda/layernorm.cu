// LayerNorm forward (plain and fused with the residual add) and backward; see kernels/cuda/layernorm.h.
//
// One warp per row, in the forward and in the backward. GPT-2's rows are short (C = 768 is 96
// packs of 8 bf16, 3 per lane) and many (N = B*T is thousands), so a warp covers a row with a few
// 128-bit accesses per lane and reduces it with shuffles alone: no block barrier per row and no
// idle threads (a 256-thread block per row would leave 160 of them without a pack at C = 768).
// The parallelism comes from the rows.
#include "kernels/cuda/layernorm.h"
#include "kernels/device/checks.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace kiln::KILN_NS {
namespace detail {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;  // rows in flight per block
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kEps = 1e-5f;  // as GPT-2 (and ref::kLayerNormEps)

// kWidth consecutive bf16 moved as one access: 16 bytes (one 128-bit load or store) for 8.
template <int kWidth>
struct alignas(2 * kWidth) Pack {
  bf16 v[kWidth];
};

// Pack i of a row (elements i*kWidth .. i*kWidth + kWidth-1). The launcher checked alignment.
template <int kWidth>
__device__ __forceinline__ Pack<kWidth> load_pack(const bf16* row, int i) {
  return reinterpret_cast<const Pack<kWidth>*>(row)[i];
}
template <int kWidth>
__device__ __forceinline__ void store_pack(bf16* row, int i, const Pack<kWidth>& p) {
  reinterpret_cast<Pack<kWidth>*>(row)[i] = p;
}

// Butterfly sum: every lane ends with the same total, added in the same fixed order.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}

// One warp per row. The row is x, or with kResidual bf16(a + b), which is also written to
// residual_out. Lane l handles packs l, l + 32, ... and keeps them in its warp's slice of the
// shared-memory row cache (C bf16 per warp), so that the statistics are two exact passes over the
// row without reading global memory again. Each lane only ever reads back the packs it wrote
// itself, so the passes need no warp barrier between them.
template <bool kResidual, int kWidth>
__global__ void __launch_bounds__(kThreads)
    layernorm_forward_kernel(bf16* __restrict__ residual_out, bf16* __restrict__ out, float* __restrict__ mean,
                             float* __restrict__ rstd, const bf16* __restrict__ x_or_a, const bf16* __restrict__ b,
                             const bf16* __restrict__ weight, const bf16* __restrict__ bias, int N, int C) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= N) return;  // the whole warp leaves; no block barrier follows
  const int packs = C / kWidth;
  const size_t offset = (size_t)row * C;
  Pack<kWidth>* cache = dynamic_shared<Pack<kWidth>>() + (size_t)warp * packs;

  // Pass 1: load the row (forming the bf16 residual), cache it, sum it.
  float sum = 0.0f;
  for (int i = lane; i < packs; i += 32) {
    Pack<kWidth> p = load_pack<kWidth>(x_or_a + offset, i);
    if constexpr (kResidual) {
      const Pack<kWidth> q = load_pack<kWidth>(b + offset, i);
      for (int k = 0; k < kWidth; k++) p.v[k] = __float2bfloat16(__bfloat162float(p.v[k]) + __bfloat162float(q.v[k]));
      store_pack<kWidth>(residual_out + offset, i, p);
    }
    cache[i] = p;
    for (int k = 0; k < kWidth; k++) sum += __bfloat162float(p.v[k]);
  }
  const float m = warp_sum(sum) / (float)C;

  // Pass 2: variance about the mean (two passes: no cancellation when |mean| >> std).
  float sq = 0.0f;
  for (int i = lane; i < packs; i += 32) {
    const Pack<kWidth> p = cache[i];
    for (int k = 0; k < kWidth; k++) {
      const float d = __bfloat162float(p.v[k]) - m;
      sq += d * d;
    }
  }
  const float s = rsqrtf(warp_sum(sq) / (float)C + kEps);

  // Pass 3: normalise, scale and shift.
  for (int i = lane; i < packs; i += 32) {
    const Pack<kWidth> p = cache[i], w = load_pack<kWidth>(weight, i), bb = load_pack<kWidth>(bias, i);
    Pack<kWidth> o;
    for (int k = 0; k < kWidth; k++) {
      const float xhat = (__bfloat162float(p.v[k]) - m) * s;
      o.v[k] = __float2bfloat16(xhat * __bfloat162float(w.v[k]) + __bfloat162float(bb.v[k]));
    }
    store_pack<kWidth>(out + offset, i, o);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

// Backward, one warp per row; block `blockIdx.x` handles rows [first, first + rows_per_block), its
// warp w the rows first + w, first + w + kWarps, ...
// dweight/dbias: each warp sums its rows' contributions into its own 2C floats of shared memory
// (dweight then dbias), so no two warps touch the same float; at the end the block adds its warps'
// accumulators in the order 0, 1, 2, 3 and writes the sums as row blockIdx.x of partials[., 2C].
// Within a warp's accumulators, column c = i*kWidth + k (pack i, element k) is stored at
// k*packs + i: lanes of a warp then touch consecutive floats (no shared-memory bank conflicts).
template <int kWidth>
__global__ void __launch_bounds__(kThreads)
    layernorm_backward_kernel(bf16* __restrict__ dx, float* __restrict__ partials, const bf16* __restrict__ dout,
                              const bf16* __restrict__ x, const bf16* __restrict__ weight,
                              const float* __restrict__ mean, const float* __restrict__ rstd, int N, int C,
                              int rows_per_block) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int packs = C / kWidth;
  float* acc = dynamic_shared<float>();  // [kWarps][2C]
  for (int j = threadIdx.x; j < kWarps * 2 * C; j += blockDim.x) acc[j] = 0.0f;
  __syncthreads();
  float* dweight_acc = acc + (size_t)warp * 2 * C;
  float* dbias_acc = dweight_acc + C;

  const int first = blockIdx.x * rows_per_block;
  const int last = first + rows_per_block < N ? first + rows_per_block : N;
  for (int row = first + warp; row < last; row += kWarps) {
    const size_t offset = (size_t)row * C;
    const float m = mean[row], s = rstd[row];

    // Pass 1: the two row sums the dx formula needs.
    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
    for (int i = lane; i < packs; i += 32) {
      const Pack<kWidth> g = load_pack<kWidth>(dout + offset, i), xv = load_pack<kWidth>(x + offset, i),
                         w = load_pack<kWidth>(weight, i);
      for (int k = 0; k < kWidth; k++) {
        const float xhat = (__bfloat162float(xv.v[k]) - m) * s;
        const float dxhat = __bfloat162float(g.v[k]) * __bfloat162float(w.v[k]);
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * xhat;
      }
    }
    const float mean_dxhat = warp_sum(sum_dxhat) / (float)C;
    const float mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / (float)C;

    // Pass 2: dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), and this row's
    // dweight (dout * xhat) and dbias (dout). The row was just read, so these loads hit the cache.
    for (int i = lane; i < packs; i += 32) {
      const Pack<kWidth> g = load_pack<kWidth>(dout + offset, i), xv = load_pack<kWidth>(x + offset, i),
                         w = load_pack<kWidth>(weight, i);
      Pack<kWidth> d = load_pack<kWidth>(dx + offset, i);
      for (int k = 0; k < kWidth; k++) {
        const float gk = __bfloat162float(g.v[k]);
        const float xhat = (__bfloat162float(xv.v[k]) - m) * s;
        const float dxhat = gk * __bfloat162float(w.v[k]);
        const float dxk = s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        d.v[k] = __float2bfloat16(__bfloat162float(d.v[k]) + dxk);
        dweight_acc[k * packs + i] += gk * xhat;
        dbias_acc[k * packs + i] += gk;
      }
      store_pack<kWidth>(dx + offset, i, d);
    }
  }
  __syncthreads();

  // This block's partial sums, warps added in a fixed order.
  float* block_partials = partials + (size_t)blockIdx.x * 2 * C;
  for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) {
    const int base = j < C ? 0 : C, c = j - base;  // dweight (base 0) or dbias (base C), column c
    const int slot = base + (c % kWidth) * packs + c / kWidth;
    float total = 0.0f;
    for (int w = 0; w < kWarps; w++) total += acc[(size_t)w * 2 * C + slot];
    block_partials[j] = total;
  }
}

constexpr int kReduceRows = 16;  // a 32 x 16 block: 32 columns, 16 interleaved slices of the partial rows

// dweight[c] += sum_b partials[b][c], dbias[c] += sum_b partials[b][C + c], in a fixed order:
// thread (tx, ty) sums rows ty, ty + 16, ... of column j in turn (coalesced across tx), then
// thread (tx, 0) adds the 16 slices in the order 0..15.
__global__ void __launch_bounds__(32 * kReduceRows)
    layernorm_backward_reduce_kernel(float* __restrict__ dweight, float* __restrict__ dbias,
                                     const float* __restrict__ partials, int blocks, int C) {
  __shared__ float slices[kReduceRows][32];
  const int j = blockIdx.x * 32 + threadIdx.x;
  float total = 0.0f;
  if (j < 2 * C)
    for (int b = threadIdx.y; b < blocks; b += kReduceRows) total += partials[(size_t)b * 2 * C + j];
  slices[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y == 0 && j < 2 * C) {
    float sum = 0.0f;
    for (int r = 0; r < kReduceRows; r++) sum += slices[r][threadIdx.x];
    if (j < C)
      dweight[j] += sum;
    else
      dbias[j - C] += sum;
  }
}

}  // namespace detail

namespace {

using detail::bf16;

// H100 (sm_90): at most 227 KB of dynamic shared memory per block, 48 KB without opting in.
constexpr size_t kMaxSharedBytes = 227 * 1024;
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// At most this many backward blocks: about 4 per SM (16 warps) on H100's 132 SMs. More blocks
// means more partial rows to write and add up; fewer leaves SMs idle. A constant, not read from
// the device, so that the order of the sums (hence the bits) is the same on every GPU.
constexpr int kMaxBackwardBlocks = 512;

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Non-null and aligned to `alignment` bytes (16 when the vector path is taken). Keeps this file's
// own wording ("is not N-byte aligned"), with a hint on the vector path.
void require_array(const void* p, const char* launcher, const char* name, size_t alignment) {
  require_pointer(p, launcher, name);
  require(reinterpret_cast<uintptr_t>(p) % alignment == 0, launcher,
          std::string(name) + " is not " + std::to_string(alignment) + "-byte aligned" +
              (alignment == 16 ? " (128-bit accesses when C % 8 == 0)" : ""));
}

void require_sizes(const char* launcher, int N, int C) {
  require(N > 0, launcher, "N = " + std::to_string(N) + " must be positive");
  require(C > 0, launcher, "C = " + std::to_string(C) + " must be positive");
}

// Checks the shared-memory need and opts in above the default 48 KB.
template <class Kernel>
void prepare_shared(Kernel kernel, size_t bytes, const char* launcher, int C) {
  require(bytes <= kMaxSharedBytes, launcher,
          "C = " + std::to_string(C) + " is too large: it needs " + std::to_string(bytes) +
              " bytes of shared memory per block, more than the " + std::to_string(kMaxSharedBytes) + " available");
  if (bytes > kDefaultSharedBytes) set_max_dynamic_shared(kernel, bytes);
}

struct BackwardGrid {
  int blocks, rows_per_block;
};

// At least one row per warp; beyond kMaxBackwardBlocks blocks, more rows per block instead.
BackwardGrid backward_grid(int N) {
  const int rows_per_block = std::max(detail::kWarps, ceil_div(N, kMaxBackwardBlocks));
  return {ceil_div(N, rows_per_block), rows_per_block};
}

// Both forward launchers: `b` and residual_out are null for the plain LayerNorm.
void forward(const char* launcher, const Stream& stream, bf16* residual_out, bf16* out, float* mean, float* rstd,
             const bf16* x_or_a, const bf16* b, const bf16* weight, const bf16* bias, int N, int C, bool residual) {
  require_sizes(launcher, N, C);
  const bool vector = C % 8 == 0;
  const size_t align = vector ? 16 : alignof(bf16);
  if (residual) {
    require_array(residual_out, launcher, "residual_out", align);
    require_array(x_or_a, launcher, "a", align);
    require_array(b, launcher, "b", align);
  } else {
    require_array(x_or_a, launcher, "x", align);
  }
  require_array(out, launcher, "out", align);
  require_array(mean, launcher, "mean", alignof(float));
  require_array(rstd, launcher, "rstd", alignof(float));
  require_array(weight, launcher, "weight", align);
  require_array(bias, launcher, "bias", align);

  auto kernel =
      residual ? (vector ? detail::layernorm_forward_kernel<true, 8> : detail::layernorm_forward_kernel<true, 1>)
               : (vector ? detail::layernorm_forward_kernel<false, 8> : detail::layernorm_forward_kernel<false, 1>);
  const size_t shared = (size_t)detail::kWarps * C * sizeof(bf16);  // the row cache
  prepare_shared(kernel, shared, launcher, C);
  launch(kernel, ceil_div(N, detail::kWarps), detail::kThreads, shared, stream, residual_out, out, mean, rstd, x_or_a,
         b, weight, bias, N, C);
}

}  // namespace

void layernorm_forward(const Stream& stream, bf16* out, float* mean, float* rstd, const bf16* x, const bf16* weight,
                       const bf16* bias, int N, int C) {
  forward("layernorm_forward", stream, nullptr, out, mean, rstd, x, nullptr, weight, bias, N, C, false);
}

void residual_layernorm_forward(const Stream& stream, bf16* residual_out, bf16* out, float* mean, float* rstd,
                                const bf16* a, const bf16* b, const bf16* weight, const bf16* bias, int N, int C) {
  forward("residual_layernorm_forward", stream, residual_out, out, mean, rstd, a, b, weight, bias, N, C, true);
}

size_t layernorm_backward_scratch_floats(int N, int C) {
  require_sizes("layernorm_backward_scratch_floats", N, C);
  return (size_t)backward_grid(N).blocks * 2 * C;
}

void layernorm_backward(const Stream& stream, bf16* dx, float* dweight, float* dbias, float* scratch, const bf16* dout,
                        const bf16* x, const bf16* weight, const float* mean, const float* rstd, int N, int C) {
  const char* launcher = "layernorm_backward";
  require_sizes(launcher, N, C);
  const bool vector = C % 8 == 0;
  const size_t align = vector ? 16 : alignof(bf16);
  require_array(dx, launcher, "dx", align);
  require_array(dweight, launcher, "dweight", alignof(float));
  require_array(dbias, launcher, "dbias", alignof(float));
  require_array(scratch, launcher, "scratch", alignof(float));
  require_array(dout, launcher, "dout", align);
  require_array(x, launcher, "x", align);
  require_array(weight, launcher, "weight", align);
  require_array(mean, launcher, "mean", alignof(float));
  require_array(rstd, launcher, "rstd", alignof(float));

  auto kernel = vector ? detail::layernorm_backward_kernel<8> : detail::layernorm_backward_kernel<1>;
  const size_t shared = (size_t)detail::kWarps * 2 * C * sizeof(float);  // per-warp dweight, dbias
  prepare_shared(kernel, shared, launcher, C);
  const BackwardGrid grid = backward_grid(N);
  launch(kernel, grid.blocks, detail::kThreads, shared, stream, dx, scratch, dout, x, weight, mean, rstd, N, C,
         grid.rows_per_block);
  launch(detail::layernorm_backward_reduce_kernel, ceil_div(2 * C, 32), dim3(32, detail::kReduceRows), 0, stream,
         dweight, dbias, scratch, grid.blocks, C);
}

}  // namespace kiln::KILN_NS
