#include "kernels/cuda/gelu.h"
#include "kernels/device/checks.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace kiln::KILN_NS {
namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

// Eight bf16 values: one 128-bit load or store.
struct alignas(16) Bf16x8 {
  __nv_bfloat16 v[8];
};

__device__ __forceinline__ float gelu(float x) {
  const float u = kGeluScale * (x + kGeluCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float th = tanhf(kGeluScale * (x + kGeluCubic * x * x * x));
  const float du = kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);  // du/dx
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

}  // namespace

namespace detail {

// Grid-stride over n values. kVector: values [0, n/8*8) as 8-wide packs (all pointers 16-byte
// aligned), then the n % 8 left over one per thread; otherwise every value one per thread.
// Each thread reads an element's inputs before writing its output, so out == x is safe.
template <bool kVector>
__global__ void gelu_forward_kernel(__nv_bfloat16* out, const __nv_bfloat16* x, int64_t n) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t scalar_begin = 0;
  if constexpr (kVector) {
    const int64_t packs = n / 8;
    for (int64_t p = first; p < packs; p += stride) {
      Bf16x8 v = reinterpret_cast<const Bf16x8*>(x)[p];
      for (int k = 0; k < 8; k++) v.v[k] = __float2bfloat16(gelu(__bfloat162float(v.v[k])));
      reinterpret_cast<Bf16x8*>(out)[p] = v;
    }
    scalar_begin = packs * 8;
  }
  for (int64_t i = scalar_begin + first; i < n; i += stride) out[i] = __float2bfloat16(gelu(__bfloat162float(x[i])));
}

// dx = dout * gelu'(x), written (not accumulated); the same layout of work as the forward.
template <bool kVector>
__global__ void gelu_backward_kernel(__nv_bfloat16* dx, const __nv_bfloat16* x, const __nv_bfloat16* dout, int64_t n) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t scalar_begin = 0;
  if constexpr (kVector) {
    const int64_t packs = n / 8;
    for (int64_t p = first; p < packs; p += stride) {
      const Bf16x8 xv = reinterpret_cast<const Bf16x8*>(x)[p];
      Bf16x8 g = reinterpret_cast<const Bf16x8*>(dout)[p];
      for (int k = 0; k < 8; k++)
        g.v[k] = __float2bfloat16(__bfloat162float(g.v[k]) * gelu_grad(__bfloat162float(xv.v[k])));
      reinterpret_cast<Bf16x8*>(dx)[p] = g;
    }
    scalar_begin = packs * 8;
  }
  for (int64_t i = scalar_begin + first; i < n; i += stride)
    dx[i] = __float2bfloat16(__bfloat162float(dout[i]) * gelu_grad(__bfloat162float(x[i])));
}

}  // namespace detail

namespace {

constexpr int kThreads = 256;
// Grid-stride loops: a few waves of an H100 (132 SMs x 2048 threads) are enough to saturate
// memory bandwidth; more blocks only add scheduling.
constexpr int64_t kMaxBlocks = 4096;

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Non-null and bf16-aligned, in this file's wording.
void check_pointer(const char* launcher, const char* name, const void* p) {
  require_pointer(p, launcher, name);
  require(aligned(p, alignof(__nv_bfloat16)), launcher,
          std::string(name) + " is not aligned to 2 bytes (not a bf16 array)");
}

// Blocks for `work` items of grid-stride work (packs plus the scalar tail, or single values).
dim3 grid_for(int64_t n, bool vector) {
  const int64_t work = vector ? n / 8 + n % 8 : n;
  return dim3((unsigned)std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
}

}  // namespace

void gelu_forward(const Stream& stream, __nv_bfloat16* out, const __nv_bfloat16* x, int64_t n) {
  check_pointer("gelu_forward", "out", out);
  check_pointer("gelu_forward", "x", x);
  require_positive(n, "gelu_forward", "n");
  const bool vector = aligned(out, 16) && aligned(x, 16);
  if (vector)
    launch(detail::gelu_forward_kernel<true>, grid_for(n, true), kThreads, 0, stream, out, x, n);
  else
    launch(detail::gelu_forward_kernel<false>, grid_for(n, false), kThreads, 0, stream, out, x, n);
}

void gelu_backward(const Stream& stream, __nv_bfloat16* dx, const __nv_bfloat16* x, const __nv_bfloat16* dout,
                   int64_t n) {
  check_pointer("gelu_backward", "dx", dx);
  check_pointer("gelu_backward", "x", x);
  check_pointer("gelu_backward", "dout", dout);
  require_positive(n, "gelu_backward", "n");
  const bool vector = aligned(dx, 16) && aligned(x, 16) && aligned(dout, 16);
  if (vector)
    launch(detail::gelu_backward_kernel<true>, grid_for(n, true), kThreads, 0, stream, dx, x, dout, n);
  else
    launch(detail::gelu_backward_kernel<false>, grid_for(n, false), kThreads, 0, stream, dx, x, dout, n);
}

}  // namespace kiln::KILN_NS
