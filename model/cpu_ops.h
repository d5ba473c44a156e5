// The CPU backend: fp32 host memory and OpenMP threads. Two paths behind the same Ops: `fast`
// (BLAS and fused, vectorised row passes from kernels/cpu/; what kiln train uses) and `reference`
// (kernels/ref/ref.h, the oracle the fast path and the GPU kernels are tested against).
#pragma once

#include "model/ops.h"

namespace kiln {

enum class CpuPath { fast, reference };

std::unique_ptr<Ops> make_cpu_ops(CpuPath path = CpuPath::fast);

}  // namespace kiln
