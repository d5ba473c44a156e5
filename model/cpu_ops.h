// The CPU backend: fp32 host memory, kernels/ reference ops, OpenMP threads.
#pragma once

#include "model/ops.h"

namespace kiln {

std::unique_ptr<Ops> make_cpu_ops();

}  // namespace kiln
