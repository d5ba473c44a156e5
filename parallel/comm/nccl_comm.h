// Collectives over NCCL for a GPU's gradients (docs/design.md §2): the same Comm interface, but every
// span is DEVICE memory of the current device, and each collective runs on the Comm's own CUDA
// stream. The caller makes the data ready first (the CUDA backend's Ops::synchronize()); the
// started all-reduces overlap whatever the device computes next, and wait_all() waits for them.
// Built only with CUDA, and run only on GPUs (CI compiles it). Host scalars (losses, token counts)
// go over the MPI Comm the NCCL one was bootstrapped from.
#pragma once

#include <memory>

#include "parallel/comm/comm.h"

namespace kiln {

// A collective over `bootstrap`'s ranks: rank 0 makes the NCCL unique id and broadcasts it over
// `bootstrap` (an MPI group). A collective unfinished after timeout_s aborts the communicator and
// then the job, naming the rank, the collective and the context, as the MPI Comm does.
std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, double timeout_s);

}  // namespace kiln
