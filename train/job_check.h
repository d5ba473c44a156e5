// Before a multi-process job trains, every rank must run the same build with the same settings:
// a node with another binary or a rank given other flags would otherwise train something else, or
// hang in a collective the others never issue.
#pragma once

#include <cstdint>
#include <string>

#include "model/gpt.h"
#include "parallel/comm/comm.h"

namespace kiln {

// Compares every rank's (binary hash, settings text) with rank 0's. Throws on every rank when any
// differs: the differing ranks name the first differing setting ("section.key = value") or the
// binary, the others say which ranks differ. A collective: all ranks call it.
void check_ranks_agree(Comm& comm, uint64_t binary, const std::string& settings);

// Throws unless the replicated parameters (ParamSpec::replicated) are bitwise the same on every rank of
// the tensor-parallel group: their gradients must have been identical at every step. A collective.
void check_replicas_agree(const GPT& model, Comm& tp);

}  // namespace kiln
