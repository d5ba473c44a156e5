// Collectives over TCP, for jobs started without MPI: processes given RANK, WORLD_SIZE and
// LOCAL_RANK by hand, by a scheduler's script or by another launcher. The ranks meet through a
// file on a filesystem they all see: rank 0 listens on a free port and writes "host port" there
// (through a temporary file and a rename), the others read it and connect.
//
// Every collective goes through rank 0 (a star): it receives every rank's data, reduces it in
// rank order and sends the result back, so every rank gets the same bits. That is simple and
// exact, and enough for host scalars, the CPU backend at a few ranks and the NCCL unique id; it is
// not a bandwidth path for gradients at scale (use mpirun, or NCCL on GPUs, for that).
#pragma once

#include <memory>
#include <string>

#include "parallel/comm/comm.h"
#include "parallel/context.h"

namespace kiln {

// The whole job of `process` (launcher "env"), met through `rendezvous_file`. Rank 0 replaces a
// stale file; the others wait for a fresh one. Every wait (the rendezvous, each collective) that
// passes timeout_s ends the process with a message naming the rank, the operation and the
// context; the other ranks then see their connection close and end too, naming it.
std::unique_ptr<Comm> rendezvous_comm(const ProcessInfo& process, const std::string& rendezvous_file, double timeout_s);

}  // namespace kiln
