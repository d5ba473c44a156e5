// AdamW over the flat parameter buffer and the global gradient norm: see kernels/cuda/adamw.h.
//
// AdamW: each thread updates 4 consecutive elements per iteration of a grid-stride loop (128-bit
// loads of master, grads, m and v; a 64-bit store of the 4 bf16 parameters), with a scalar tail
// for n % 4. Whether an element decays comes from the range table: a binary search for the
// pack's first element, then a step forward when a range ends inside the pack (tensors need not
// start at multiples of 4). The table is small (one entry per tensor) and stays in L1.
//
// Gradient norm: kGradNormPartials blocks x 256 threads, each thread summing squares of a fixed
// strided set of 4-element packs in fp32; per-block tree (shuffles, then shared memory) into
// partials[block]; a second launch of one block sums the partials in a tree of the same shape.
#include "kernels/cuda/adamw.h"
#include "kernels/device/checks.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace kiln::KILN_NS {
namespace {

constexpr int kAdamWThreads = 256;
constexpr int kMaxAdamWBlocks = 1 << 16;  // grid-stride beyond 256 * 4 * 65536 = 64M elements
constexpr int kNormThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct alignas(16) Float4 {
  float v[4];
};
struct alignas(8) Bf16x4 {
  __nv_bfloat16 v[4];
};

}  // namespace

namespace detail {

// The step's scalars, computed once on the host in double and rounded to float.
struct AdamWStepConstants {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float decay;         // 1 - lr * weight_decay, for elements in a decaying range
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  float eps, grad_scale;
};

}  // namespace detail

namespace {

// One element, in the order of ref::adamw_update.
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float grad, float decay,
                                              const detail::AdamWStepConstants& c) {
  const float g = grad * c.grad_scale;
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * g * g;
  p = p * decay - c.step_size * m / (sqrtf(v) * c.inv_sqrt_bc2 + c.eps);
}

// Index of the last range with offset <= i (the table is sorted by offset), or -1 if none.
__device__ __forceinline__ int find_range(const AdamWRange* ranges, int num_ranges, int64_t i) {
  int lo = 0, hi = num_ranges;  // ranges[< lo].offset <= i < ranges[>= hi].offset
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (ranges[mid].offset <= i)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo - 1;
}

// The decay factors of elements i0 .. i0 + count - 1 (count <= 4): c.decay inside a decaying
// range, 1 elsewhere.
__device__ __forceinline__ void decay_factors(float (&decay)[4], const AdamWRange* ranges, int num_ranges, int64_t i0,
                                              int count, float decay_factor) {
  int r = find_range(ranges, num_ranges, i0);
  for (int k = 0; k < count; k++) {
    const int64_t i = i0 + k;
    while (r + 1 < num_ranges && ranges[r + 1].offset <= i) r++;  // a range starts inside the pack
    const bool decays = r >= 0 && i < ranges[r].offset + ranges[r].count && ranges[r].decay;
    decay[k] = decays ? decay_factor : 1.0f;
  }
}

// Sum over the block, in a fixed tree: shuffles within each warp, then warp 0 over the warps'
// sums. blockDim.x is a multiple of 32, at most 1024. The result is valid in thread 0.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float warp_sums[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(kFullMask, x, offset);
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < warps ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(kFullMask, x, offset);
  }
  return x;
}

}  // namespace

namespace detail {

__global__ void __launch_bounds__(kAdamWThreads)
    adamw_kernel(float* master, __nv_bfloat16* params, const float* grads, float* m, float* v, const AdamWRange* ranges,
                 int num_ranges, int64_t n, AdamWStepConstants c) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * 4;
  for (int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4; i0 < n; i0 += stride) {
    float decay[4];
    if (i0 + 4 <= n) {  // a whole pack: 128-bit accesses
      decay_factors(decay, ranges, num_ranges, i0, 4, c.decay);
      Float4 p = *reinterpret_cast<const Float4*>(master + i0);
      const Float4 g = *reinterpret_cast<const Float4*>(grads + i0);
      Float4 mm = *reinterpret_cast<const Float4*>(m + i0);
      Float4 vv = *reinterpret_cast<const Float4*>(v + i0);
      Bf16x4 out;
      for (int k = 0; k < 4; k++) {
        adamw_element(p.v[k], mm.v[k], vv.v[k], g.v[k], decay[k], c);
        out.v[k] = __float2bfloat16(p.v[k]);  // round to nearest even
      }
      *reinterpret_cast<Float4*>(master + i0) = p;
      *reinterpret_cast<Float4*>(m + i0) = mm;
      *reinterpret_cast<Float4*>(v + i0) = vv;
      *reinterpret_cast<Bf16x4*>(params + i0) = out;
    } else {  // the last n % 4 elements, one at a time
      const int count = (int)(n - i0);
      decay_factors(decay, ranges, num_ranges, i0, count, c.decay);
      for (int k = 0; k < count; k++) {
        const int64_t i = i0 + k;
        float p = master[i], mk = m[i], vk = v[i];
        adamw_element(p, mk, vk, grads[i], decay[k], c);
        master[i] = p, m[i] = mk, v[i] = vk;
        params[i] = __float2bfloat16(p);
      }
    }
  }
}

// partials[block] = sum of squares of this block's share: thread t of block b takes the packs
// b * blockDim + t + j * (gridDim * blockDim), j = 0, 1, ...; the n % 4 tail goes to the first
// threads of block 0.
__global__ void __launch_bounds__(kNormThreads)
    grad_norm_partials_kernel(float* partials, const float* grads, int64_t n) {
  const int64_t packs = n / 4, thread = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  float sum = 0.0f;
  for (int64_t p = thread; p < packs; p += (int64_t)gridDim.x * blockDim.x) {
    const Float4 g = *reinterpret_cast<const Float4*>(grads + 4 * p);
    sum += (g.v[0] * g.v[0] + g.v[1] * g.v[1]) + (g.v[2] * g.v[2] + g.v[3] * g.v[3]);
  }
  if (thread < n % 4) {
    const float g = grads[4 * packs + thread];
    sum += g * g;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// result[0] = sum of the kGradNormPartials partials, one per thread.
__global__ void __launch_bounds__(kGradNormPartials) grad_norm_finish_kernel(float* result, const float* partials) {
  const float sum = block_sum(partials[threadIdx.x]);
  if (threadIdx.x == 0) result[0] = sum;
}

}  // namespace detail

void check_adamw_ranges(std::span<const AdamWRange> ranges, int64_t n) {
  constexpr const char* kName = "check_adamw_ranges";
  int64_t end = 0;  // of the previous range
  for (size_t r = 0; r < ranges.size(); r++) {
    const AdamWRange& range = ranges[r];
    const std::string which =
        "range " + std::to_string(r) + " [" + std::to_string(range.offset) + ", +" + std::to_string(range.count) + ")";
    require(range.count >= 0, kName, which + " has a negative count");
    require(range.offset >= end, kName,
            which + " starts before the end of the previous range (" + std::to_string(end) +
                "): ranges must be sorted and must not overlap");
    require(range.count <= n - range.offset, kName, which + " ends beyond n = " + std::to_string(n));
    end = range.offset + range.count;
  }
}

void adamw_update(const Stream& stream, float* master, __nv_bfloat16* params, const float* grads, float* m, float* v,
                  const AdamWRange* ranges, int num_ranges, int64_t n, const ref::AdamWParams& hp) {
  constexpr const char* kName = "adamw_update";
  require_pointer(master, kName, "master");
  require_pointer(params, kName, "params");
  require_pointer(grads, kName, "grads");
  require_pointer(m, kName, "m");
  require_pointer(v, kName, "v");
  require_pointer(ranges, kName, "ranges");
  require(n >= 1, kName, "n = " + std::to_string(n) + " must be >= 1");
  require(num_ranges >= 1, kName, "num_ranges = " + std::to_string(num_ranges) + " must be >= 1");
  require_aligned(master, 16, kName, "master");
  require_aligned(grads, 16, kName, "grads");
  require_aligned(m, 16, kName, "m");
  require_aligned(v, 16, kName, "v");
  require_aligned(params, 8, kName, "params");
  require(hp.step >= 1, kName, "hp.step = " + std::to_string(hp.step) + " must be >= 1");
  require(hp.beta1 >= 0 && hp.beta1 < 1, kName, "hp.beta1 = " + std::to_string(hp.beta1) + " must be in [0, 1)");
  require(hp.beta2 >= 0 && hp.beta2 < 1, kName, "hp.beta2 = " + std::to_string(hp.beta2) + " must be in [0, 1)");
  require(hp.lr >= 0, kName, "hp.lr = " + std::to_string(hp.lr) + " must be >= 0");
  require(hp.eps >= 0, kName, "hp.eps = " + std::to_string(hp.eps) + " must be >= 0");
  require(hp.weight_decay >= 0, kName, "hp.weight_decay = " + std::to_string(hp.weight_decay) + " must be >= 0");
  require(std::isfinite(hp.grad_scale), kName, "hp.grad_scale = " + std::to_string(hp.grad_scale) + " must be finite");

  const double t = (double)hp.step;
  detail::AdamWStepConstants c;
  c.beta1 = (float)hp.beta1;
  c.beta2 = (float)hp.beta2;
  c.one_minus_beta1 = (float)(1 - hp.beta1);
  c.one_minus_beta2 = (float)(1 - hp.beta2);
  c.decay = (float)(1 - hp.lr * hp.weight_decay);
  c.step_size = (float)(hp.lr / (1 - std::pow(hp.beta1, t)));
  c.inv_sqrt_bc2 = (float)(1 / std::sqrt(1 - std::pow(hp.beta2, t)));
  c.eps = (float)hp.eps;
  c.grad_scale = (float)hp.grad_scale;

  const int64_t packs = (n + 3) / 4;
  const int blocks = (int)std::min<int64_t>((packs + kAdamWThreads - 1) / kAdamWThreads, kMaxAdamWBlocks);
  launch(detail::adamw_kernel, blocks, kAdamWThreads, 0, stream, master, params, grads, m, v, ranges, num_ranges, n, c);
}

void grad_norm_squared(const Stream& stream, float* result, float* partials, const float* grads, int64_t n) {
  constexpr const char* kName = "grad_norm_squared";
  require_pointer(result, kName, "result");
  require_pointer(partials, kName, "partials");
  require_pointer(grads, kName, "grads");
  require(n >= 1, kName, "n = " + std::to_string(n) + " must be >= 1");
  require_aligned(grads, 16, kName, "grads");
  launch(detail::grad_norm_partials_kernel, kGradNormPartials, kNormThreads, 0, stream, partials, grads, n);
  launch(detail::grad_norm_finish_kernel, 1, kGradNormPartials, 0, stream, result, partials);
}

}  // namespace kiln::KILN_NS
