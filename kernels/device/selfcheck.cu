#include "kernels/device/selfcheck.h"

#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {
namespace {

// out[block] = sum of in[block*256 .. +256) * 2, via shared memory and a warp-shuffle finish.
__global__ void doubled_block_sums(const int* in, int* out) {
  __shared__ int warp_sums[8];
  int v = 2 * in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < 8; w++) total += warp_sums[w];
    out[blockIdx.x] = total;
  }
}

}  // namespace

std::string device_self_check() {
  try {
    constexpr int kBlocks = 4, kThreads = 256;
    std::vector<int> in(kBlocks * kThreads);
    for (size_t i = 0; i < in.size(); i++) in[i] = (int)i;
    Stream s;
    DeviceBuffer<int> d_in(in.size()), d_out(kBlocks);
    d_in.upload(in, s);
    launch(doubled_block_sums, kBlocks, kThreads, 0, s, d_in.data(), d_out.data());
    const std::vector<int> out = d_out.to_host(s);
    for (int b = 0; b < kBlocks; b++) {
      const int first = b * kThreads, last = first + kThreads - 1;
      const int want = (first + last) * kThreads;  // 2 * arithmetic series
      if (out[b] != want)
        return "block " + std::to_string(b) + " summed to " + std::to_string(out[b]) + ", expected " +
               std::to_string(want);
    }
    return "ok";
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace kiln::KILN_NS
