#include "train/job_check.h"

#include "kernels/fnv1a.h"
#include "parallel/context.h"

#include <sstream>
#include <stdexcept>
#include <vector>

namespace kiln {
namespace {

// Broadcasts rank 0's bytes of `text` (its length first) and returns them on every rank.
std::string broadcast_text(Comm& comm, const std::string& text) {
  int64_t size = (int64_t)text.size();
  comm.broadcast(std::as_writable_bytes(std::span<int64_t>(&size, 1)), 0);
  std::string out = comm.rank() == 0 ? text : std::string((size_t)size, '\0');
  comm.broadcast(std::as_writable_bytes(std::span<char>(out.data(), out.size())), 0);
  return out;
}

// The first line of `mine` that rank 0's text lacks, or that rank 0 has and `mine` lacks.
std::string first_difference(const std::string& root_text, const std::string& mine) {
  std::istringstream a(root_text), b(mine);
  for (std::string x, y;;) {
    const bool more_a = (bool)std::getline(a, x), more_b = (bool)std::getline(b, y);
    if (!more_a && !more_b) return "";
    if (!more_a) return "'" + y + "', which rank 0 does not set";
    if (!more_b) return "no setting where rank 0 has '" + x + "'";
    if (x != y) return "'" + y + "' where rank 0 has '" + x + "'";
  }
}

// Rank 0's value, on every rank.
uint64_t root_value(Comm& comm, uint64_t value) {
  comm.broadcast(std::as_writable_bytes(std::span<uint64_t>(&value, 1)), 0);
  return value;
}

// How many ranks of the group pass true.
int64_t count_ranks(Comm& comm, bool mine) {
  int64_t count = mine;
  comm.all_reduce_sum(std::span<int64_t>(&count, 1));
  return count;
}

}  // namespace

void check_ranks_agree(Comm& comm, uint64_t binary, const std::string& settings) {
  const uint64_t root_binary = root_value(comm, binary);
  const std::string root_settings = broadcast_text(comm, settings);
  std::string problem;
  if (root_binary != binary)
    problem = "its kiln binary differs from rank 0's (hash " + std::to_string(binary) + " vs " +
              std::to_string(root_binary) + "): run the same build on every node";
  else if (root_settings != settings)
    problem = "its settings differ from rank 0's: " + first_difference(root_settings, settings);
  const int64_t differing = count_ranks(comm, !problem.empty());
  // kiln's MPI launcher prefixes each rank's message with "rank N: ".
  if (!problem.empty()) throw std::runtime_error(problem);
  if (differing > 0)
    throw std::runtime_error(std::to_string(differing) +
                             " rank(s) run another binary or other settings (see their messages); refusing to train");
}

void check_replicas_agree(const GPT& model, Comm& tp) {
  std::vector<float> host((size_t)model.layout().total());
  model.ops().download(host, model.params());
  uint64_t hash = kFnv1aStart;
  for (const ParamSpec& s : model.layout().specs())
    if (s.replicated) hash = fnv1a(host.data() + s.offset, (size_t)s.numel * sizeof(float), hash);
  const int64_t differing = count_ranks(tp, root_value(tp, hash) != hash);
  if (differing > 0)
    throw std::runtime_error("replicated parameters (layernorms, row-parallel biases, wpe) differ on " +
                             std::to_string(differing) + " tensor-parallel rank(s): their gradients diverged");
}

}  // namespace kiln
