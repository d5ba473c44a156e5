// Warp-level tensor-core building blocks for sm_80+: mma.sync m16n8k16 (bf16/fp16 in, fp32
// accumulate), ldmatrix (shared memory -> mma fragments) and cp.async (global -> shared copies
// that bypass registers). On the GPU each is one PTX instruction; on the emulator each follows
// the PTX ISA's description, so code that is wrong about a fragment layout or a missing wait is
// wrong on both. References are to the PTX ISA (8.x), section "Warp Level Matrix Multiply-
// Accumulate Instructions" and "Data Movement and Conversion Instructions".
#pragma once

#include <cstdint>

#include "kernels/device/cuda_lang.h"

#if !defined(KILN_EMU) && KILN_ARCH != 0 && KILN_ARCH < 800
#error "kernels/device/mma.h needs sm_80 or newer (bf16 mma.sync, cp.async)"
#endif

#ifdef KILN_EMU
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <string>
#endif

namespace kiln::KILN_NS {

#ifdef KILN_EMU
namespace mma_emu {

// %laneid of the calling thread: its linear index in the block, modulo 32.
inline unsigned lane_id() {
  const ThreadContext& c = current_thread();
  return (c.thread_idx.x + c.block_dim.x * (c.thread_idx.y + c.block_dim.y * c.thread_idx.z)) % 32;
}

inline std::string hex(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}

inline float bf16_to_float(uint16_t bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
inline float f16_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// ---- mma.m16n8k16 ------------------------------------------------------------------------------
// "Matrix Fragments for mma.m16n8k16 with floating point type". With groupID = %laneid >> 2 and
// threadID_in_group = %laneid % 4 (g and t below), each .f16x2/.bf16x2 register holds two elements,
// the lower-numbered one in the low 16 bits:
//   A (16x16, row): a_i, i = 0..7, in register i/2:  row = g + 8 for i in {2,3,6,7}, else g;
//                   col = 2t + (i & 1), + 8 for i >= 4.
//   B (16x8, col):  b_i, i = 0..3, in register i/2:  row (k) = 2t + (i & 1), + 8 for i >= 2; col = g.
//   C, D (16x8):    c_i, i = 0..3:                   row = g, + 8 for i >= 2; col = 2t + (i & 1).
struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
static_assert(sizeof(MmaIn) <= kCollectiveBytes);

// Warp-level mma instructions executed since the process started (the emulator's own statistic:
// tests check that causal attention skips the tiles above the diagonal).
inline std::atomic<uint64_t>& mma_count() {
  static std::atomic<uint64_t> count{0};
  return count;
}

template <float (*kToFloat)(uint16_t)>
void combine_mma(const std::byte (*in)[kCollectiveBytes], std::byte (*out)[kCollectiveBytes], unsigned) {
  float A[16][16], B[16][8], D[16][8];
  for (int lane = 0; lane < 32; lane++) {
    MmaIn f;
    std::memcpy(&f, in[lane], sizeof f);
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 8; i++)
      A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = kToFloat(uint16_t(f.a[i / 2] >> (16 * (i & 1))));
    for (int i = 0; i < 4; i++) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = kToFloat(uint16_t(f.b[i / 2] >> (16 * (i & 1))));
    for (int i = 0; i < 4; i++) D[g + 8 * (i >> 1)][2 * t + (i & 1)] = f.c[i];
  }
  // The emulator's rounding, fixed so that results are reproducible: d = c, then d += a[k] * b[k]
  // for k = 0..15 in order, each product exact in fp32 (bf16 and fp16 significands have <= 11
  // bits) and each sum rounded to nearest. A K loop of mmas is thus the same as one sequential
  // fp32 dot product over k. Tensor cores add the products with other internal rounding, so GPU
  // results can differ from these in the last bits: compare them with a tolerance.
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 8; n++)
      for (int k = 0; k < 16; k++) D[m][n] += A[m][k] * B[k][n];
  mma_count().fetch_add(1, std::memory_order_relaxed);
  for (int lane = 0; lane < 32; lane++) {
    const int g = lane >> 2, t = lane % 4;
    float d[4];
    for (int i = 0; i < 4; i++) d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
    std::memcpy(out[lane], d, sizeof d);
  }
}

template <float (*kToFloat)(uint16_t)>
void mma_m16n8k16(const char* op, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  MmaIn f;
  std::memcpy(f.a, a, sizeof f.a);
  std::memcpy(f.b, b, sizeof f.b);
  std::memcpy(f.c, c, sizeof f.c);
  // .aligned: all 32 lanes execute the same mma; the engine reports a missing or exited lane.
  warp_collective(op, 0xffffffffu, &f, sizeof f, d, sizeof d, combine_mma<kToFloat>);
}

// ---- ldmatrix ----------------------------------------------------------------------------------
// "Warp-level matrix load instruction: ldmatrix" (.m8n8, .b16): lanes 8i..8i+7 give the addresses
// of rows 0..7 of matrix i (8 consecutive b16 = 16 bytes each, 16-byte aligned); addresses of the
// lanes beyond 8 * num are ignored. Lane l receives in r[i] the element pair of matrix i at row
// l/4, columns 2(l%4) and 2(l%4)+1 (low half first); with .trans, of the transposed matrix: rows
// 2(l%4) and 2(l%4)+1 of column l/4.
template <int kNum, bool kTrans>
void combine_ldmatrix(const std::byte (*in)[kCollectiveBytes], std::byte (*out)[kCollectiveBytes], unsigned) {
  uint16_t M[kNum][8][8];
  for (int i = 0; i < kNum; i++)
    for (int row = 0; row < 8; row++) {
      const void* p;
      std::memcpy(&p, in[8 * i + row], sizeof p);
      std::memcpy(M[i][row], p, 16);
    }
  for (int lane = 0; lane < 32; lane++) {
    uint32_t r[kNum];
    for (int i = 0; i < kNum; i++) {
      const int x = lane / 4, y = 2 * (lane % 4);
      const uint16_t lo = kTrans ? M[i][y][x] : M[i][x][y], hi = kTrans ? M[i][y + 1][x] : M[i][x][y + 1];
      r[i] = lo | uint32_t(hi) << 16;
    }
    std::memcpy(out[lane], r, sizeof r);
  }
}

template <int kNum, bool kTrans>
void ldmatrix(uint32_t (&r)[kNum], const void* row) {
  static constexpr const char* kOp[2][3] = {
      {"ldmatrix.m8n8.x1", "ldmatrix.m8n8.x2", "ldmatrix.m8n8.x4"},
      {"ldmatrix.m8n8.x1.trans", "ldmatrix.m8n8.x2.trans", "ldmatrix.m8n8.x4.trans"}};
  const char* op = kOp[kTrans][kNum / 2];
  const unsigned lane = lane_id();
  if (lane < 8u * kNum && reinterpret_cast<uintptr_t>(row) % 16 != 0)
    throw std::runtime_error(std::string(op) + ": lane " + std::to_string(lane) + " gives row address " + hex(row) +
                             ", which is not 16-byte aligned");
  warp_collective(op, 0xffffffffu, &row, sizeof row, r, sizeof r, combine_ldmatrix<kNum, kTrans>);
}

// ---- cp.async ----------------------------------------------------------------------------------
// "cp.async", "cp.async.commit_group", "cp.async.wait_group": a copy is issued into the calling
// thread's open list, a commit closes the list into a group, and wait_group N returns once at
// most the N most recent groups are pending. The emulator performs a copy only when a wait covers
// it and poisons the destination (0xff bytes: NaN as bf16/fp16/fp32) when it is issued, so a read
// that comes too early sees the poison instead of data that happened to arrive in time.
inline void cp_async_16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    throw std::runtime_error("cp.async: destination " + hex(dst) + " and source " + hex(src) +
                             " must be 16-byte aligned (cp-size 16)");
  if (src_bytes < 0 || src_bytes > 16)
    throw std::runtime_error("cp.async: src-size " + std::to_string(src_bytes) + " is outside 0..16");
  std::memset(dst, 0xff, 16);
  async_copies().open.push_back({dst, src, 16, src_bytes});
}

inline void cp_async_commit() {
  AsyncCopyGroups& q = async_copies();
  q.committed.push_back(std::move(q.open));
  q.open.clear();
}

inline void cp_async_wait(int n) {
  AsyncCopyGroups& q = async_copies();
  while ((int)q.committed.size() > n) {
    for (const AsyncCopy& c : q.committed.front()) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<std::byte*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);  // zero-fill
    }
    q.committed.pop_front();
  }
}

}  // namespace mma_emu
#endif  // KILN_EMU

// D = A * B + C for one warp: A 16x16 row-major, B 16x8 column-major, C and D 16x8 fp32, in the
// fragments of "Matrix Fragments for mma.m16n8k16 with floating point type" (see above). Every
// lane of the warp must call it (mma.sync.aligned).
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
#ifdef KILN_EMU
  mma_emu::mma_m16n8k16<mma_emu::bf16_to_float>("mma.m16n8k16.bf16", d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#ifdef KILN_EMU
  mma_emu::mma_m16n8k16<mma_emu::f16_to_float>("mma.m16n8k16.f16", d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// Loads 1, 2 or 4 8x8 b16 matrices from shared memory: lanes 8i..8i+7 pass the (16-byte aligned)
// addresses of rows 0..7 of matrix i, every lane passes some address; r[i] gets the lane's element
// pair of matrix i (see above). A 16x16 row-major A tile: lane l passes &tile[l % 16][8 * (l / 16)]
// to ldmatrix_x4 and gets the a fragment. A k-major (row-major K x N) B tile: ldmatrix_x2_trans
// with lane l passing &tile[l % 16][0] gives the b fragment.
template <int kNum, bool kTrans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kNum], const void* smem_row) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef KILN_EMU
  mma_emu::ldmatrix<kNum, kTrans>(r, smem_row);
#else
  const unsigned p = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  // "memory": the instruction reads shared memory the compiler cannot see.
  if constexpr (kNum == 1 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(p) : "memory");
  if constexpr (kNum == 1 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(p) : "memory");
  if constexpr (kNum == 2 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(p)
                 : "memory");
  if constexpr (kNum == 2 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(p)
                 : "memory");
  if constexpr (kNum == 4 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(p)
                 : "memory");
  if constexpr (kNum == 4 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(p)
                 : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row) { ldmatrix<1, false>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) { ldmatrix<2, false>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) { ldmatrix<4, false>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row) {
  ldmatrix<1, true>(r, smem_row);
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
  ldmatrix<2, true>(r, smem_row);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  ldmatrix<4, true>(r, smem_row);
}

// Starts a 16-byte copy from global to shared memory (both 16-byte aligned); only the first
// src_bytes are read, the rest of the destination is zero-filled (bounds handling without a
// branch). The destination must not be read before a cp_async_wait that covers the copy.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* global_src, int src_bytes = 16) {
#ifdef KILN_EMU
  mma_emu::cp_async_16(smem_dst, global_src, src_bytes);
#else
  // .cg: cache in L2 only; the data goes to shared memory, where it is reused.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(smem_dst))),
               "l"(__cvta_generic_to_global(global_src)), "r"(src_bytes)
               : "memory");
#endif
}

// Closes the calling thread's copies issued since the last commit into one group.
__device__ __forceinline__ void cp_async_commit() {
#ifdef KILN_EMU
  mma_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of the calling thread's most recent groups are still in flight.
// It covers only this thread's copies: a __syncthreads() must follow before other threads read.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(kPending >= 0, "cp.async.wait_group takes a count >= 0");
#ifdef KILN_EMU
  mma_emu::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Waits for every copy of the calling thread, committed or not (cp.async.wait_all).
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef KILN_EMU
  mma_emu::cp_async_commit();
  mma_emu::cp_async_wait(0);
#else
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

}  // namespace kiln::KILN_NS
