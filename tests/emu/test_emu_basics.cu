// First checks of the device layer on the emulator (and, built with nvcc, on a GPU).
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "kernels/device/runtime.h"
#include "tests/device_test.h"

namespace kiln::KILN_NS {
namespace {

// Sum of each block's slice, with a shared-memory tree and a warp-shuffle finish.
__global__ void block_sum(const float* x, float* out, size_t n) {
  __shared__ float partial[32];
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  float v = i < n ? x[i] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

using EmuBasics = DeviceTest;

TEST_F(EmuBasics, BlockReductionMatchesTheHostSum) {
  const size_t n = 5000;
  const int threads = 256, blocks = (int)((n + threads - 1) / threads);
  std::vector<float> host(n);
  std::mt19937 rng(1);
  for (float& v : host) v = std::uniform_int_distribution<int>(-100, 100)(rng);  // exact in float
  Stream s;
  DeviceBuffer<float> x(n), out(blocks);
  x.upload(host, s);
  launch(block_sum, blocks, threads, 0, s, x.data(), out.data(), (int)n);  // int converted to size_t
  const std::vector<float> sums = out.to_host(s);
  for (int b = 0; b < blocks; b++) {
    const size_t end = std::min(n, (size_t)(b + 1) * threads);
    EXPECT_EQ(sums[b], std::accumulate(host.begin() + b * threads, host.begin() + end, 0.0f)) << "block " << b;
  }
}

// Timing events give the time between them; asking an event made without timing is an error
// naming the call, on the GPU as on the emulator.
TEST_F(EmuBasics, TimingEventsMeasureAndOthersRefuse) {
  Stream s;
  Event start(true), end(true), plain;
  DeviceBuffer<float> x(1 << 16);
  start.record(s);
  x.fill_bytes(0, s);
  end.record(s);
  plain.record(s);
  end.synchronize();
  EXPECT_GE(end.elapsed_ms_since(start), 0.0f);
  try {
    (void)plain.elapsed_ms_since(start);
    ADD_FAILURE() << "no error for an event without timing";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cudaEventElapsedTime"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::KILN_NS
