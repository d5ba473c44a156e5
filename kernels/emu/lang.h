// The CUDA kernel language for the host compiler: what a `.cu` file sees when it is compiled for
// the emulator. Included only through kernels/device/cuda_lang.h.
#pragma once

#include <cuda_bf16.h>  // host-side bf16/fp16 types; pulls in crt/host_defines.h, redefined below
#include <math.h>

#include <atomic>
#include <cstring>
#include <type_traits>

#include "kernels/emu/cuda_runtime.h"
#include "kernels/emu/engine.h"

// host_defines.h maps these to GPU attributes the host compiler ignores or rejects; the emulator
// gives each its meaning on the CPU.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// One block runs at a time on an OS thread, so per-OS-thread storage is per-block storage.
// Note: unlike dynamic shared memory, static __shared__ arrays are not poisoned per block.
#define __shared__ static thread_local
#define __constant__ static const

#define threadIdx (::kiln::emu::current_thread().thread_idx)
#define blockIdx (::kiln::emu::current_thread().block_idx)
#define blockDim (::kiln::emu::current_thread().block_dim)
#define gridDim (::kiln::emu::current_thread().grid_dim)
#define warpSize 32
#define __syncthreads() ::kiln::emu::syncthreads()

namespace kiln::emu::lang {

enum class Shuffle { idx, up, down, bfly };

struct ShuffleIn {
  alignas(8) std::byte value[8];
  int arg, width;
};

// Source lane of a shuffle, per the PTX ISA's shfl.sync: lanes form segments of `width`; a source
// outside the caller's segment returns the caller's own value.
template <Shuffle kMode>
void combine_shuffle(const std::byte (*in)[kCollectiveBytes], std::byte (*out)[kCollectiveBytes], unsigned mask) {
  for (int lane = 0; lane < 32; lane++) {
    if (!(mask & (1u << lane))) continue;
    ShuffleIn me;
    std::memcpy(&me, in[lane], sizeof me);
    const int segment = lane & ~(me.width - 1);
    int src = lane;
    if constexpr (kMode == Shuffle::idx) src = segment + (me.arg & (me.width - 1));
    if constexpr (kMode == Shuffle::up) src = (lane - segment) >= me.arg ? lane - me.arg : lane;
    if constexpr (kMode == Shuffle::down) src = (lane - segment) + me.arg < me.width ? lane + me.arg : lane;
    // xor may read earlier segments but not later ones (CUDA Programming Guide, warp shuffle).
    if constexpr (kMode == Shuffle::bfly) src = ((lane ^ me.arg) & ~(me.width - 1)) <= segment ? lane ^ me.arg : lane;
    if (!(mask & (1u << src)))
      throw std::runtime_error("shuffle reads lane " + std::to_string(src) + ", which is not in the mask");
    std::memcpy(out[lane], in[src], 8);
  }
}

template <Shuffle kMode, class T>
T shuffle(const char* op, unsigned mask, T value, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move up to 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1)))
    throw std::runtime_error(std::string(op) + ": width " + std::to_string(width) + " is not a power of two <= 32");
  ShuffleIn in{};
  std::memcpy(in.value, &value, sizeof(T));
  in.arg = arg;
  in.width = width;
  T out;
  std::byte raw[8];
  warp_collective(op, mask, &in, sizeof in, raw, sizeof raw, combine_shuffle<kMode>);
  std::memcpy(&out, raw, sizeof(T));
  return out;
}

enum class Vote { ballot, any, all };

template <Vote kVote>
void combine_vote(const std::byte (*in)[kCollectiveBytes], std::byte (*out)[kCollectiveBytes], unsigned mask) {
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; lane++)
    if ((mask & (1u << lane)) && in[lane][0] != std::byte{0}) ballot |= 1u << lane;
  unsigned result = ballot;
  if constexpr (kVote == Vote::any) result = ballot != 0;
  if constexpr (kVote == Vote::all) result = ballot == mask;
  for (int lane = 0; lane < 32; lane++)
    if (mask & (1u << lane)) std::memcpy(out[lane], &result, sizeof result);
}

template <Vote kVote>
unsigned vote(const char* op, unsigned mask, bool predicate) {
  const std::byte in{predicate};
  unsigned out;
  warp_collective(op, mask, &in, 1, &out, sizeof out, combine_vote<kVote>);
  return out;
}

inline void combine_nothing(const std::byte (*)[kCollectiveBytes], std::byte (*)[kCollectiveBytes], unsigned) {}

// Blocks run concurrently on several OS threads, so atomics are real atomics.
template <class T>
T atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

}  // namespace kiln::emu::lang

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return kiln::emu::lang::shuffle<kiln::emu::lang::Shuffle::idx>("__shfl_sync", mask, v, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return kiln::emu::lang::shuffle<kiln::emu::lang::Shuffle::up>("__shfl_up_sync", mask, v, (int)delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return kiln::emu::lang::shuffle<kiln::emu::lang::Shuffle::down>("__shfl_down_sync", mask, v, (int)delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return kiln::emu::lang::shuffle<kiln::emu::lang::Shuffle::bfly>("__shfl_xor_sync", mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return kiln::emu::lang::vote<kiln::emu::lang::Vote::ballot>("__ballot_sync", mask, predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate) {
  return (int)kiln::emu::lang::vote<kiln::emu::lang::Vote::any>("__any_sync", mask, predicate != 0);
}
inline int __all_sync(unsigned mask, int predicate) {
  return (int)kiln::emu::lang::vote<kiln::emu::lang::Vote::all>("__all_sync", mask, predicate != 0);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  kiln::emu::warp_collective("__syncwarp", mask, nullptr, 0, nullptr, 0, kiln::emu::lang::combine_nothing);
}

inline float atomicAdd(float* a, float v) { return kiln::emu::lang::atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return kiln::emu::lang::atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return kiln::emu::lang::atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return kiln::emu::lang::atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return kiln::emu::lang::atomic_add(a, v);
}
inline int atomicMax(int* a, int v) {
  std::atomic_ref<int> r(*a);
  int old = r.load();
  while (old < v && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline int atomicCAS(int* a, int expected, int desired) {
  std::atomic_ref<int>(*a).compare_exchange_strong(expected, desired);
  return expected;
}
inline unsigned atomicCAS(unsigned* a, unsigned expected, unsigned desired) {
  std::atomic_ref<unsigned>(*a).compare_exchange_strong(expected, desired);
  return expected;
}
inline int atomicExch(int* a, int v) { return std::atomic_ref<int>(*a).exchange(v); }
inline float atomicExch(float* a, float v) { return std::atomic_ref<float>(*a).exchange(v); }

// Fast-math intrinsics: the emulator computes them exactly (the GPU's are approximate: compare
// against references with a tolerance, as for any float result).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
