#include "kernels/cuda/attention.h"
#include "kernels/device/checks.h"
#include "kernels/device/mma.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace kiln::KILN_NS {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float warp_sum(float v) {
  for (int m = 16; m >= 1; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

}  // namespace

namespace detail {

// Where head h's q (part 0), k (1) or v (2) starts in qkv[B, T, 3, H, D], for batch b, row 0.
struct QkvIndex {
  int T, H, D;
  __host__ __device__ int64_t row_stride() const { return 3LL * H * D; }
  __host__ __device__ int64_t part(int b, int p, int h) const {
    return (int64_t)b * T * row_stride() + ((int64_t)p * H + h) * D;
  }
  __host__ __device__ int64_t out(int b, int h) const { return (int64_t)b * T * H * D + (int64_t)h * D; }  // out, dout
  __host__ __device__ int64_t rows(int b, int h) const { return ((int64_t)b * H + h) * T; }                // lse, Delta
};

}  // namespace detail

// ---- reference kernels: one warp per row, lane l holding elements l, l + 32, ... -------------
namespace detail {

constexpr int kReferenceWarps = 4;

// Online softmax over the keys of query row t: a running max m and sum l, the output rescaled
// by exp(m_old - m_new) whenever the max grows.
template <int kD>
__global__ void attention_forward_reference_kernel(bf16* out, float* lse, const bf16* qkv, QkvIndex ix, bool causal) {
  constexpr int kPer = kD / 32;
  const int lane = threadIdx.x % 32, t = blockIdx.x * kReferenceWarps + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (t >= ix.T) return;  // a whole warp
  const int64_t stride = ix.row_stride();
  const bf16 *q = qkv + ix.part(b, 0, h) + t * stride, *k = qkv + ix.part(b, 1, h), *v = qkv + ix.part(b, 2, h);
  const float scale = 1.0f / sqrtf((float)kD);
  float qr[kPer], acc[kPer] = {}, m = -INFINITY, l = 0;
  for (int i = 0; i < kPer; i++) qr[i] = __bfloat162float(q[i * 32 + lane]);
  const int end = causal ? t + 1 : ix.T;
  for (int j = 0; j < end; j++) {
    float s = 0;
    for (int i = 0; i < kPer; i++) s += qr[i] * __bfloat162float(k[j * stride + i * 32 + lane]);
    s = warp_sum(s) * scale;
    const float m_new = fmaxf(m, s), correction = expf(m - m_new), p = expf(s - m_new);
    l = l * correction + p;
    for (int i = 0; i < kPer; i++) acc[i] = acc[i] * correction + p * __bfloat162float(v[j * stride + i * 32 + lane]);
    m = m_new;
  }
  bf16* o = out + ix.out(b, h) + (int64_t)t * ix.H * kD;
  for (int i = 0; i < kPer; i++) o[i * 32 + lane] = __float2bfloat16(acc[i] / l);
  if (lane == 0) lse[ix.rows(b, h) + t] = m + logf(l);
}

// Delta_t = dout_t . out_t, for both backward implementations.
template <int kD>
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, QkvIndex ix) {
  constexpr int kPer = kD / 32;
  const int lane = threadIdx.x % 32, t = blockIdx.x * kReferenceWarps + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (t >= ix.T) return;
  const int64_t row = ix.out(b, h) + (int64_t)t * ix.H * kD;
  float s = 0;
  for (int i = 0; i < kPer; i++)
    s += __bfloat162float(dout[row + i * 32 + lane]) * __bfloat162float(out[row + i * 32 + lane]);
  s = warp_sum(s);
  if (lane == 0) delta[ix.rows(b, h) + t] = s;
}

// dq_t = scale * sum_j ds_tj k_j over the keys of query row t.
template <int kD>
__global__ void attention_dq_reference_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                              const float* delta, QkvIndex ix, bool causal) {
  constexpr int kPer = kD / 32;
  const int lane = threadIdx.x % 32, t = blockIdx.x * kReferenceWarps + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (t >= ix.T) return;
  const int64_t stride = ix.row_stride();
  const bf16 *q = qkv + ix.part(b, 0, h) + t * stride, *k = qkv + ix.part(b, 1, h), *v = qkv + ix.part(b, 2, h);
  const bf16* g = dout + ix.out(b, h) + (int64_t)t * ix.H * kD;
  const float scale = 1.0f / sqrtf((float)kD), row_lse = lse[ix.rows(b, h) + t], row_delta = delta[ix.rows(b, h) + t];
  float qr[kPer], gr[kPer], dq[kPer] = {};
  for (int i = 0; i < kPer; i++) qr[i] = __bfloat162float(q[i * 32 + lane]), gr[i] = __bfloat162float(g[i * 32 + lane]);
  const int end = causal ? t + 1 : ix.T;
  for (int j = 0; j < end; j++) {
    float s = 0, dp = 0;
    for (int i = 0; i < kPer; i++) {
      s += qr[i] * __bfloat162float(k[j * stride + i * 32 + lane]);
      dp += gr[i] * __bfloat162float(v[j * stride + i * 32 + lane]);
    }
    const float p = expf(warp_sum(s) * scale - row_lse), ds = p * (warp_sum(dp) - row_delta);
    for (int i = 0; i < kPer; i++) dq[i] += ds * __bfloat162float(k[j * stride + i * 32 + lane]);
  }
  bf16* dq_row = dqkv + ix.part(b, 0, h) + t * stride;
  for (int i = 0; i < kPer; i++) dq_row[i * 32 + lane] = __float2bfloat16(dq[i] * scale);
}

// dk_j = scale * sum_t ds_tj q_t and dv_j = sum_t p_tj dout_t over the queries that see key j.
template <int kD>
__global__ void attention_dkdv_reference_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                                const float* delta, QkvIndex ix, bool causal) {
  constexpr int kPer = kD / 32;
  const int lane = threadIdx.x % 32, j = blockIdx.x * kReferenceWarps + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (j >= ix.T) return;
  const int64_t stride = ix.row_stride(), out_stride = (int64_t)ix.H * kD;
  const bf16 *q = qkv + ix.part(b, 0, h), *k = qkv + ix.part(b, 1, h) + j * stride,
             *v = qkv + ix.part(b, 2, h) + j * stride, *g = dout + ix.out(b, h);
  const float scale = 1.0f / sqrtf((float)kD);
  float kr[kPer], vr[kPer], dk[kPer] = {}, dv[kPer] = {};
  for (int i = 0; i < kPer; i++) kr[i] = __bfloat162float(k[i * 32 + lane]), vr[i] = __bfloat162float(v[i * 32 + lane]);
  for (int t = causal ? j : 0; t < ix.T; t++) {
    float s = 0, dp = 0;
    for (int i = 0; i < kPer; i++) {
      s += kr[i] * __bfloat162float(q[t * stride + i * 32 + lane]);
      dp += vr[i] * __bfloat162float(g[t * out_stride + i * 32 + lane]);
    }
    const float p = expf(warp_sum(s) * scale - lse[ix.rows(b, h) + t]);
    const float ds = p * (warp_sum(dp) - delta[ix.rows(b, h) + t]);
    for (int i = 0; i < kPer; i++) {
      dk[i] += ds * __bfloat162float(q[t * stride + i * 32 + lane]);
      dv[i] += p * __bfloat162float(g[t * out_stride + i * 32 + lane]);
    }
  }
  bf16 *dk_row = dqkv + ix.part(b, 1, h) + j * stride, *dv_row = dqkv + ix.part(b, 2, h) + j * stride;
  for (int i = 0; i < kPer; i++) {
    dk_row[i * 32 + lane] = __float2bfloat16(dk[i] * scale);
    dv_row[i * 32 + lane] = __float2bfloat16(dv[i]);
  }
}

}  // namespace detail

// ---- tensor-core kernels -----------------------------------------------------------------------
// A warp computes 16 rows against a 64-row tile with mma.sync m16n8k16: each lane holds, per
// 8-column n-tile, 4 fp32 values at rows g and g + 8 (g = lane / 4), columns 2t and 2t + 1
// (t = lane % 4), as kernels/device/mma.h describes. Tiles of 64 (or 32) rows x D live in
// shared memory with each row's 16-byte chunks XOR-swizzled by row % 8, so that the 8 rows an
// ldmatrix reads fall in different banks.
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kTile = 64;

template <int kCols>
__device__ __forceinline__ int swizzle(int row, int col) {
  constexpr int kChunks = kCols / 8 < 8 ? kCols / 8 : 8;  // a 32-wide row has 4 chunks to permute
  return row * kCols + (((col >> 3) ^ (row & (kChunks - 1))) << 3) + (col & 7);
}

// Issues cp.async copies of rows [first, first + kRows) of a [T, stride] bf16 matrix into a
// swizzled shared tile; rows >= T are zero-filled.
template <int kRows, int kD>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t stride, int first, int T) {
  constexpr int kChunks = kRows * kD / 8;
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int row = c / (kD / 8), col = (c % (kD / 8)) * 8;
    const bool inside = first + row < T;
    cp_async_16(tile + swizzle<kD>(row, col), inside ? src + (first + row) * stride + col : src, inside ? 16 : 0);
  }
}

// The loop step of the passes over key/value tiles: starts copying tile j + 1 into the other
// buffer (unless j is the last) and waits until tile j, in buffer j % 2, is there for every thread.
template <int kD>
__device__ __forceinline__ void next_kv_tile(bf16* k_tiles, bf16* v_tiles, const bf16* k, const bf16* v, int64_t stride,
                                             int j, int last_tile, int T) {
  if (j < last_tile) {
    const int other = ((j + 1) & 1) * kTile * kD;
    load_tile<kTile, kD>(k_tiles + other, k, stride, (j + 1) * kTile, T);
    load_tile<kTile, kD>(v_tiles + other, v, stride, (j + 1) * kTile, T);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

// acc[16 x 8 kN] += A[16 x kD] B^T, where A is 16 rows of a swizzled tile (from row a_row) and B
// the first 8 kN rows of another: S = Q K^T, dP = dO V^T, S^T = K Q^T, dP^T = V dO^T.
template <int kD, int kN>
__device__ __forceinline__ void mma_rows_by_rows(float (&acc)[kN][4], const bf16* a_tile, int a_row,
                                                 const bf16* b_tile) {
  const int lane = threadIdx.x % 32;
  for (int kk = 0; kk < kD / 16; kk++) {
    uint32_t a[4];
    ldmatrix_x4(a, a_tile + swizzle<kD>(a_row + lane % 16, kk * 16 + 8 * (lane / 16)));
    for (int np = 0; np < kN / 2; np++) {
      uint32_t b[4];
      ldmatrix_x4(b, b_tile + swizzle<kD>(np * 16 + lane % 8 + 8 * (lane / 16), kk * 16 + 8 * ((lane / 8) % 2)));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16_bf16(acc[2 * np], a, b0, acc[2 * np]);
      mma_m16n8k16_bf16(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
    }
  }
}

// acc[16 x kD] += P[16 x 8 kN] B, with P in the accumulator layout of mma_rows_by_rows (the C
// fragment of n-tiles 2i and 2i + 1 is the A fragment of k-step i) and B the first 8 kN rows of a
// swizzled tile: O = P V, dQ = dS K, dV = P^T dO, dK = dS^T Q.
template <int kD, int kN>
__device__ __forceinline__ void mma_scores_by_rows(float (&acc)[kD / 8][4], const float (&p)[kN][4],
                                                   const bf16* b_tile) {
  const int lane = threadIdx.x % 32;
  for (int ks = 0; ks < kN / 2; ks++) {
    const uint32_t a[4] = {pack_bf16(p[2 * ks][0], p[2 * ks][1]), pack_bf16(p[2 * ks][2], p[2 * ks][3]),
                           pack_bf16(p[2 * ks + 1][0], p[2 * ks + 1][1]),
                           pack_bf16(p[2 * ks + 1][2], p[2 * ks + 1][3])};
    for (int dp = 0; dp < kD / 16; dp++) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, b_tile + swizzle<kD>(ks * 16 + lane % 16, dp * 16 + 8 * (lane / 16)));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16_bf16(acc[2 * dp], a, b0, acc[2 * dp]);
      mma_m16n8k16_bf16(acc[2 * dp + 1], a, b1, acc[2 * dp + 1]);
    }
  }
}

// acc[16 x 8 kN] += A[16 x 16 kK] B, with A stored transposed in a swizzled tile of kACols
// columns (A[m][k] at row k, column a_col + m; ldmatrix .trans yields the A fragment) and B rows
// 0..16 kK of a swizzled tile of kD columns, from column b_col: dQ = dS K from the stored dS^T.
template <int kACols, int kD, int kK, int kN>
__device__ __forceinline__ void mma_transposed_by_rows(float (&acc)[kN][4], const bf16* a_tile, int a_col,
                                                       const bf16* b_tile, int b_col) {
  const int lane = threadIdx.x % 32;
  for (int ks = 0; ks < kK; ks++) {
    uint32_t a[4];
    ldmatrix_x4_trans(a, a_tile + swizzle<kACols>(ks * 16 + lane % 8 + 8 * (lane / 16), a_col + 8 * ((lane / 8) % 2)));
    for (int np = 0; np < kN / 2; np++) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, b_tile + swizzle<kD>(ks * 16 + lane % 16, b_col + np * 16 + 8 * (lane / 16)));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16_bf16(acc[2 * np], a, b0, acc[2 * np]);
      mma_m16n8k16_bf16(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
    }
  }
}

// Row and column, within the warp's 16 x 8 kN block, of element i of n-tile n held by this lane.
__device__ __forceinline__ int fragment_row(int i) { return (threadIdx.x % 32) / 4 + 8 * (i >> 1); }
__device__ __forceinline__ int fragment_col(int n, int i) { return n * 8 + 2 * (threadIdx.x % 4) + (i & 1); }

// Sum or max over the 4 lanes that share a row (lanes 4g .. 4g + 3).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// Stores this lane's part of a warp's 16 x kD fp32 block, times `scale`, as bf16 rows
// [first_row, first_row + 16) of a [T, stride] matrix.
template <int kD>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t stride, int first_row, int T,
                                           const float (&acc)[kD / 8][4], const float (&scale)[2]) {
  for (int n = 0; n < kD / 8; n++)
    for (int half = 0; half < 2; half++) {
      const int row = first_row + fragment_row(2 * half);
      if (row < T)
        *reinterpret_cast<__nv_bfloat162*>(dst + row * stride + fragment_col(n, 0)) =
            __floats2bfloat162_rn(acc[n][2 * half] * scale[half], acc[n][2 * half + 1] * scale[half]);
    }
}

}  // namespace

namespace detail {

// Forward: a block takes 64 query rows (16 per warp) and walks the key/value tiles, the next
// one's copies in flight while the current one is used. Causal blocks stop at the diagonal tile;
// heavy (late) query tiles are started first.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* out, float* lse, const bf16* qkv, QkvIndex ix, bool causal) {
  bf16* q_tile = dynamic_shared<bf16>();
  bf16* k_tiles = q_tile + kTile * kD;       // [2][kTile][kD]
  bf16* v_tiles = k_tiles + 2 * kTile * kD;  // [2][kTile][kD]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t stride = ix.row_stride();
  const bf16 *q = qkv + ix.part(b, 0, h), *k = qkv + ix.part(b, 1, h), *v = qkv + ix.part(b, 2, h);
  const int first_query = tile * kTile, warp_query = first_query + 16 * warp;
  const int last_tile = causal ? tile : (ix.T - 1) / kTile;
  const float scale_log2 = kLog2e / sqrtf((float)kD);

  load_tile<kTile, kD>(q_tile, q, stride, first_query, ix.T);
  load_tile<kTile, kD>(k_tiles, k, stride, 0, ix.T);
  load_tile<kTile, kD>(v_tiles, v, stride, 0, ix.T);
  cp_async_commit();

  float acc[kD / 8][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  for (int j = 0; j <= last_tile; j++) {
    const int buffer = j & 1;
    next_kv_tile<kD>(k_tiles, v_tiles, k, v, stride, j, last_tile, ix.T);

    float s[kTile / 8][4] = {};
    mma_rows_by_rows<kD, kTile / 8>(s, q_tile, 16 * warp, k_tiles + buffer * kTile * kD);
    float row_max[2] = {-INFINITY, -INFINITY};
    for (int n = 0; n < kTile / 8; n++)
      for (int i = 0; i < 4; i++) {
        const int query = warp_query + fragment_row(i), key = j * kTile + fragment_col(n, i);
        s[n][i] = (key >= ix.T || (causal && key > query)) ? -INFINITY : s[n][i] * scale_log2;
        row_max[i >> 1] = fmaxf(row_max[i >> 1], s[n][i]);
      }
    float correction[2];
    for (int r = 0; r < 2; r++) {
      const float m_new = fmaxf(m[r], quad_max(row_max[r]));  // finite: key 0 is in every row's first tile
      correction[r] = exp2f(m[r] - m_new);
      m[r] = m_new;
      l[r] *= correction[r];
    }
    for (int n = 0; n < kTile / 8; n++)
      for (int i = 0; i < 4; i++) {
        s[n][i] = exp2f(s[n][i] - m[i >> 1]);
        l[i >> 1] += s[n][i];  // this lane's share; the 4 lanes of a row are added at the end
      }
    for (int n = 0; n < kD / 8; n++)
      for (int i = 0; i < 4; i++) acc[n][i] *= correction[i >> 1];
    mma_scores_by_rows<kD, kTile / 8>(acc, s, v_tiles + buffer * kTile * kD);
    __syncthreads();  // the buffer is refilled in the next iteration
  }

  float inverse[2];
  for (int r = 0; r < 2; r++) {
    l[r] = quad_sum(l[r]);
    inverse[r] = 1.0f / l[r];
  }
  store_rows<kD>(out + ix.out(b, h), (int64_t)ix.H * kD, warp_query, ix.T, acc, inverse);
  if (lane % 4 == 0)
    for (int r = 0; r < 2; r++) {
      const int query = warp_query + lane / 4 + 8 * r;
      if (query < ix.T) lse[ix.rows(b, h) + query] = (m[r] + log2f(l[r])) * kLn2;
    }
}

// dq for 64 query rows (16 per warp), over the key tiles they see: S = Q K^T and P from the saved
// lse, dP = dO V^T, dS = P (dP - Delta), dQ += dS K.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta,
                        QkvIndex ix, bool causal) {
  bf16* q_tile = dynamic_shared<bf16>();
  bf16* do_tile = q_tile + kTile * kD;
  bf16* k_tiles = do_tile + kTile * kD;      // [2][kTile][kD]
  bf16* v_tiles = k_tiles + 2 * kTile * kD;  // [2][kTile][kD]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t stride = ix.row_stride(), out_stride = (int64_t)ix.H * kD;
  const bf16 *q = qkv + ix.part(b, 0, h), *k = qkv + ix.part(b, 1, h), *v = qkv + ix.part(b, 2, h);
  const int first_query = tile * kTile, warp_query = first_query + 16 * warp;
  const int last_tile = causal ? tile : (ix.T - 1) / kTile;
  const float scale = 1.0f / sqrtf((float)kD), scale_log2 = kLog2e * scale;

  load_tile<kTile, kD>(q_tile, q, stride, first_query, ix.T);
  load_tile<kTile, kD>(do_tile, dout + ix.out(b, h), out_stride, first_query, ix.T);
  load_tile<kTile, kD>(k_tiles, k, stride, 0, ix.T);
  load_tile<kTile, kD>(v_tiles, v, stride, 0, ix.T);
  cp_async_commit();
  float row_lse[2], row_delta[2];
  for (int r = 0; r < 2; r++) {
    const int query = std::min(warp_query + lane / 4 + 8 * r, ix.T - 1);  // rows past T are never stored
    row_lse[r] = lse[ix.rows(b, h) + query] * kLog2e;
    row_delta[r] = delta[ix.rows(b, h) + query];
  }

  float dq[kD / 8][4] = {};
  for (int j = 0; j <= last_tile; j++) {
    const int buffer = j & 1;
    next_kv_tile<kD>(k_tiles, v_tiles, k, v, stride, j, last_tile, ix.T);

    const bf16 *k_tile = k_tiles + buffer * kTile * kD, *v_tile = v_tiles + buffer * kTile * kD;
    float p[kTile / 8][4] = {}, dp[kTile / 8][4] = {};
    mma_rows_by_rows<kD, kTile / 8>(p, q_tile, 16 * warp, k_tile);
    mma_rows_by_rows<kD, kTile / 8>(dp, do_tile, 16 * warp, v_tile);
    for (int n = 0; n < kTile / 8; n++)
      for (int i = 0; i < 4; i++) {
        const int query = warp_query + fragment_row(i), key = j * kTile + fragment_col(n, i);
        const bool masked = key >= ix.T || (causal && key > query);
        const float prob = masked ? 0.0f : exp2f(p[n][i] * scale_log2 - row_lse[i >> 1]);
        p[n][i] = prob * (dp[n][i] - row_delta[i >> 1]);  // dS
      }
    mma_scores_by_rows<kD, kTile / 8>(dq, p, k_tile);
    __syncthreads();
  }
  const float scales[2] = {scale, scale};
  store_rows<kD>(dqkv + ix.part(b, 0, h), stride, warp_query, ix.T, dq, scales);
}

// dk and dv for 64 key rows (16 per warp), over the query tiles that see them, in the transposed
// orientation so that both stay in registers: S^T = K Q^T, P^T from the saved lse, dV += P^T dO,
// dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dK += dS^T Q. kQueries = 16 at D = 128 keeps the
// accumulators (dK and dV alone take 128 registers a thread) within the register file.
// kAccumulateDq (the fast mode): also dQ += dS K for the query tile, from dS^T staged in shared
// memory, added into the fp32 dq_accum [B, T, H, D] with atomics, in an order that varies.
template <int kD, int kQueries, bool kAccumulateDq>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(bf16* dqkv, float* dq_accum, const bf16* dout, const bf16* qkv, const float* lse,
                          const float* delta, QkvIndex ix, bool causal) {
  bf16* k_tile = dynamic_shared<bf16>();
  bf16* v_tile = k_tile + kTile * kD;
  bf16* q_tiles = v_tile + kTile * kD;                                       // [2][kQueries][kD]
  bf16* do_tiles = q_tiles + 2 * kQueries * kD;                              // [2][kQueries][kD]
  float* lse_rows = reinterpret_cast<float*>(do_tiles + 2 * kQueries * kD);  // [2][kQueries], log2 units
  float* delta_rows = lse_rows + 2 * kQueries;                               // [2][kQueries]
  bf16* ds_tile = reinterpret_cast<bf16*>(delta_rows + 2 * kQueries);        // [kTile][kQueries]: dS^T
  const int warp = threadIdx.x / 32;
  const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t stride = ix.row_stride(), out_stride = (int64_t)ix.H * kD;
  const bf16 *q = qkv + ix.part(b, 0, h), *k = qkv + ix.part(b, 1, h), *v = qkv + ix.part(b, 2, h);
  const bf16* g = dout + ix.out(b, h);
  const float *tile_lse = lse + ix.rows(b, h), *tile_delta = delta + ix.rows(b, h);
  const int first_key = tile * kTile, warp_key = first_key + 16 * warp;
  const int first_tile = causal ? first_key / kQueries : 0, end_tile = (ix.T + kQueries - 1) / kQueries;
  const float scale = 1.0f / sqrtf((float)kD), scale_log2 = kLog2e * scale;

  // The statistics of query tile i into buffer `buffer` (plain loads: rows need not be aligned).
  auto load_rows = [&](int i, int buffer) {
    for (int r = threadIdx.x; r < kQueries; r += kThreads) {
      const int query = i * kQueries + r;
      lse_rows[buffer * kQueries + r] = query < ix.T ? tile_lse[query] * kLog2e : 0.0f;
      delta_rows[buffer * kQueries + r] = query < ix.T ? tile_delta[query] : 0.0f;
    }
  };
  load_tile<kTile, kD>(k_tile, k, stride, first_key, ix.T);
  load_tile<kTile, kD>(v_tile, v, stride, first_key, ix.T);
  load_tile<kQueries, kD>(q_tiles, q, stride, first_tile * kQueries, ix.T);
  load_tile<kQueries, kD>(do_tiles, g, out_stride, first_tile * kQueries, ix.T);
  cp_async_commit();
  load_rows(first_tile, 0);

  float dk[kD / 8][4] = {}, dv[kD / 8][4] = {};
  for (int i = first_tile; i < end_tile; i++) {
    const int buffer = (i - first_tile) & 1;
    if (i + 1 < end_tile) {
      load_tile<kQueries, kD>(q_tiles + (buffer ^ 1) * kQueries * kD, q, stride, (i + 1) * kQueries, ix.T);
      load_tile<kQueries, kD>(do_tiles + (buffer ^ 1) * kQueries * kD, g, out_stride, (i + 1) * kQueries, ix.T);
      cp_async_commit();
      load_rows(i + 1, buffer ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const bf16 *q_tile = q_tiles + buffer * kQueries * kD, *do_tile = do_tiles + buffer * kQueries * kD;
    const float *rows_lse = lse_rows + buffer * kQueries, *rows_delta = delta_rows + buffer * kQueries;
    float p[kQueries / 8][4] = {}, dp[kQueries / 8][4] = {};
    mma_rows_by_rows<kD, kQueries / 8>(p, k_tile, 16 * warp, q_tile);
    for (int n = 0; n < kQueries / 8; n++)
      for (int e = 0; e < 4; e++) {
        const int key = warp_key + fragment_row(e), col = fragment_col(n, e), query = i * kQueries + col;
        const bool masked = query >= ix.T || (causal && key > query);
        p[n][e] = masked ? 0.0f : exp2f(p[n][e] * scale_log2 - rows_lse[col]);
      }
    mma_scores_by_rows<kD, kQueries / 8>(dv, p, do_tile);
    mma_rows_by_rows<kD, kQueries / 8>(dp, v_tile, 16 * warp, do_tile);
    for (int n = 0; n < kQueries / 8; n++)
      for (int e = 0; e < 4; e++) p[n][e] *= dp[n][e] - rows_delta[fragment_col(n, e)];  // dS^T
    mma_scores_by_rows<kD, kQueries / 8>(dk, p, q_tile);
    if constexpr (kAccumulateDq) {
      for (int n = 0; n < kQueries / 8; n++)
        for (int half = 0; half < 2; half++)
          *reinterpret_cast<__nv_bfloat162*>(
              ds_tile + swizzle<kQueries>(16 * warp + fragment_row(2 * half), fragment_col(n, 0))) =
              __floats2bfloat162_rn(p[n][2 * half], p[n][2 * half + 1]);
      __syncthreads();
      // The query tile's dQ [kQueries x kD] in slabs of 16 queries, each slab's columns split
      // over kWarps / slabs warps and done 32 at a time (fewer live registers at D = 128).
      constexpr int kSlabs = kQueries / 16, kCols = kD * kSlabs / kWarps, kChunk = 32;
      const int slab = warp % kSlabs;
      float* dq_rows = dq_accum + (int64_t)b * ix.T * ix.H * kD + (int64_t)h * kD;
#pragma unroll 1
      for (int first_col = (warp / kSlabs) * kCols, end = first_col + kCols; first_col < end; first_col += kChunk) {
        float dq[kChunk / 8][4] = {};
        mma_transposed_by_rows<kQueries, kD, kTile / 16, kChunk / 8>(dq, ds_tile, 16 * slab, k_tile, first_col);
        for (int n = 0; n < kChunk / 8; n++)
          for (int e = 0; e < 4; e++) {
            const int query = i * kQueries + 16 * slab + fragment_row(e);
            if (query < ix.T)
              atomicAdd(dq_rows + (int64_t)query * ix.H * kD + first_col + fragment_col(n, e), dq[n][e]);
          }
      }
    }
    __syncthreads();
  }
  const float dk_scale[2] = {scale, scale}, dv_scale[2] = {1.0f, 1.0f};
  store_rows<kD>(dqkv + ix.part(b, 1, h), stride, warp_key, ix.T, dk, dk_scale);
  store_rows<kD>(dqkv + ix.part(b, 2, h), stride, warp_key, ix.T, dv, dv_scale);
}

// The fast mode's dq: dqkv's q part = bf16(scale * dq_accum), row by row ([B, T, H*D] both).
__global__ void attention_dq_convert_kernel(bf16* dqkv, const float* dq_accum, int64_t rows, int width, float scale) {
  const int64_t n = rows * width;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    dqkv[(e / width) * 3 * width + e % width] = __float2bfloat16(dq_accum[e] * scale);
}

}  // namespace detail

namespace {

template <int kD>
constexpr int dkdv_queries() {
  return kD == 128 ? 16 : 64;
}
template <int kD>
constexpr size_t forward_shared_bytes() {
  return (size_t)5 * kTile * kD * sizeof(bf16);
}
template <int kD>
constexpr size_t dq_shared_bytes() {
  return (size_t)6 * kTile * kD * sizeof(bf16);
}
template <int kD>
constexpr size_t dkdv_shared_bytes(bool accumulate_dq) {
  return (size_t)(2 * kTile + 4 * dkdv_queries<kD>()) * kD * sizeof(bf16) + 4 * dkdv_queries<kD>() * sizeof(float) +
         (accumulate_dq ? (size_t)kTile * dkdv_queries<kD>() * sizeof(bf16) : 0);
}

void check_shape(const char* launcher, const AttentionShape& s) {
  require_positive(s.B, launcher, "B");
  require_positive(s.T, launcher, "T");
  require_positive(s.H, launcher, "H");
  require(s.D == 64 || s.D == 128, launcher, "head dim D must be 64 or 128, got " + std::to_string(s.D));
}
void check_tensor(const char* launcher, const char* name, const void* p) {
  require_pointer(p, launcher, name);
  require_aligned(p, 16, launcher, name);
}

dim3 row_grid(const AttentionShape& s, int rows_per_block) {
  return dim3((unsigned)((s.T + rows_per_block - 1) / rows_per_block), (unsigned)s.H, (unsigned)s.B);
}

template <int kD>
void forward(const Stream& stream, bf16* out, float* lse, const bf16* qkv, const AttentionShape& s,
             AttentionKernel kernel) {
  const detail::QkvIndex ix{s.T, s.H, kD};
  if (kernel == AttentionKernel::reference) {
    launch(detail::attention_forward_reference_kernel<kD>, row_grid(s, detail::kReferenceWarps),
           32 * detail::kReferenceWarps, 0, stream, out, lse, qkv, ix, s.causal);
    return;
  }
  set_max_dynamic_shared(detail::attention_forward_kernel<kD>, forward_shared_bytes<kD>());
  launch(detail::attention_forward_kernel<kD>, row_grid(s, kTile), kThreads, forward_shared_bytes<kD>(), stream, out,
         lse, qkv, ix, s.causal);
}

template <int kD, bool kAccumulateDq>
void launch_dkdv(const Stream& stream, bf16* dqkv, float* dq_accum, const float* delta, const bf16* dout,
                 const bf16* qkv, const float* lse, const AttentionShape& s) {
  constexpr auto kernel = detail::attention_dkdv_kernel<kD, dkdv_queries<kD>(), kAccumulateDq>;
  const size_t shared = dkdv_shared_bytes<kD>(kAccumulateDq);
  set_max_dynamic_shared(kernel, shared);
  launch(kernel, row_grid(s, kTile), kThreads, shared, stream, dqkv, dq_accum, dout, qkv, lse, delta,
         detail::QkvIndex{s.T, s.H, kD}, s.causal);
}

template <int kD>
void backward(const Stream& stream, bf16* dqkv, float* scratch, const bf16* dout, const bf16* qkv, const bf16* out,
              const float* lse, const AttentionShape& s, AttentionKernel kernel, AttentionMode mode) {
  float* delta = scratch;
  const detail::QkvIndex ix{s.T, s.H, kD};
  const dim3 rows = row_grid(s, detail::kReferenceWarps);
  launch(detail::attention_delta_kernel<kD>, rows, 32 * detail::kReferenceWarps, 0, stream, delta, dout, out, ix);
  if (kernel == AttentionKernel::reference) {
    launch(detail::attention_dq_reference_kernel<kD>, rows, 32 * detail::kReferenceWarps, 0, stream, dqkv, dout, qkv,
           lse, delta, ix, s.causal);
    launch(detail::attention_dkdv_reference_kernel<kD>, rows, 32 * detail::kReferenceWarps, 0, stream, dqkv, dout, qkv,
           lse, delta, ix, s.causal);
    return;
  }
  if (mode == AttentionMode::fast) {
    float* dq_accum = scratch + (size_t)s.B * s.H * s.T;
    const int64_t tokens = (int64_t)s.B * s.T;
    KILN_CHECK(KILN_RT cudaMemsetAsync(dq_accum, 0, tokens * s.H * kD * sizeof(float), stream.get()));
    launch_dkdv<kD, true>(stream, dqkv, dq_accum, delta, dout, qkv, lse, s);
    constexpr int64_t kMaxBlocks = 4096;
    launch(detail::attention_dq_convert_kernel,
           (unsigned)std::min<int64_t>((tokens * s.H * kD + 255) / 256, kMaxBlocks), 256, 0, stream, dqkv, dq_accum,
           tokens, s.H * kD, 1.0f / std::sqrt((float)kD));
    return;
  }
  set_max_dynamic_shared(detail::attention_dq_kernel<kD>, dq_shared_bytes<kD>());
  launch(detail::attention_dq_kernel<kD>, row_grid(s, kTile), kThreads, dq_shared_bytes<kD>(), stream, dqkv, dout, qkv,
         lse, delta, ix, s.causal);
  launch_dkdv<kD, false>(stream, dqkv, nullptr, delta, dout, qkv, lse, s);
}

}  // namespace

void attention_forward(const Stream& stream, bf16* out, float* lse, const bf16* qkv, const AttentionShape& shape,
                       AttentionKernel kernel) {
  check_shape("attention_forward", shape);
  check_tensor("attention_forward", "out", out);
  require_pointer(lse, "attention_forward", "lse");
  check_tensor("attention_forward", "qkv", qkv);
  if (shape.D == 64)
    forward<64>(stream, out, lse, qkv, shape, kernel);
  else
    forward<128>(stream, out, lse, qkv, shape, kernel);
}

size_t attention_backward_scratch_floats(const AttentionShape& shape, AttentionKernel kernel, AttentionMode mode) {
  check_shape("attention_backward_scratch_floats", shape);
  const size_t rows = (size_t)shape.B * shape.H * shape.T;
  return kernel == AttentionKernel::tensor_core && mode == AttentionMode::fast ? rows * (1 + shape.D) : rows;
}

void attention_backward(const Stream& stream, bf16* dqkv, float* scratch, const bf16* dout, const bf16* qkv,
                        const bf16* out, const float* lse, const AttentionShape& shape, AttentionKernel kernel,
                        AttentionMode mode) {
  check_shape("attention_backward", shape);
  check_tensor("attention_backward", "dqkv", dqkv);
  require_pointer(scratch, "attention_backward", "scratch");
  check_tensor("attention_backward", "dout", dout);
  check_tensor("attention_backward", "qkv", qkv);
  check_tensor("attention_backward", "out", out);
  require_pointer(lse, "attention_backward", "lse");
  if (shape.D == 64)
    backward<64>(stream, dqkv, scratch, dout, qkv, out, lse, shape, kernel, mode);
  else
    backward<128>(stream, dqkv, scratch, dout, qkv, out, lse, shape, kernel, mode);
}

}  // namespace kiln::KILN_NS
