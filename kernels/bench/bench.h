// `kiln bench kernels`: every kernel family timed at GPT-2 shapes (124M C=768, 350M C=1024, 1.5B
// C=1600; B*T tokens, vocabulary 50257 padded to 50304), against the device's own copy bandwidth
// and, for the matmuls, against a plain cuBLASLt GEMM of the same shape.
//
// Times are CUDA-event medians over `reps` runs after `warmup` untimed ones. `bytes` is the
// minimal traffic of the kernel (every input read once, every output written once, accumulated
// outputs read and written; bench.cu gives the formula per kernel), so GB/s / copy GB/s says how
// close a memory-bound kernel is to the hardware. On the emulator the same code runs as a
// functional check only (`tiny` shapes): its times are CPU times and mean nothing for a GPU.
//
// Backend-neutral types, like kernels/device/selfcheck.h: the command line calls both backends.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct KernelBenchOptions {
  std::vector<std::string> models{"124m", "350m", "1558m"};
  std::vector<int> tokens{8192, 65536};  // B*T per shape; multiples of T = 1024
  int warmup = 5, reps = 50;
  bool tiny = false;  // C = 64, 64 tokens, vocabulary 512: the emulator's functional check
};

struct KernelBenchRow {
  std::string kernel, model;
  int64_t tokens = 0;  // 0 for the optimizer, which runs over the parameters
  std::string shape;
  double median_ms = 0, bytes = 0, gb_per_s = 0;
  double copy_fraction = 0;                        // gb_per_s / the copy bandwidth measured in the same run
  double flops = 0, tflops = 0, plain_tflops = 0;  // matmuls only (0 otherwise)
};

struct KernelBenchReport {
  std::string device_name;
  double copy_gb_per_s = 0;  // device-to-device cudaMemcpyAsync, read + write counted
  std::vector<KernelBenchRow> rows;
};

// Throws std::invalid_argument for an unknown model or a token count that is not a positive
// multiple of 1024, before touching the device.
namespace emu {
KernelBenchReport run_kernel_benchmarks(const KernelBenchOptions& options);
}
namespace cuda {
KernelBenchReport run_kernel_benchmarks(const KernelBenchOptions& options);
}

}  // namespace kiln
