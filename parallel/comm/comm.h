// Collectives over a group of ranks (docs/design.md §2): all-reduce, reduce-scatter, all-gather,
// broadcast and barrier on host buffers. Two implementations: over MPI (the CPU backend's
// transport, one communicator per group) and the trivial one of a single process, so that code
// written for N ranks runs unchanged without a launcher. Every rank of a group must issue the
// same collectives in the same order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace kiln {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group of the ranks that pass the same color, ordered by key (MPI_Comm_split). A collective.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
  // Collectives issued so far (started all-reduces count when started), and the bytes this rank
  // put into them (its data argument: a reduce-scatter's whole input, an all-gather's block), for
  // tests and logs.
  virtual int64_t collectives() const = 0;
  virtual int64_t bytes() const = 0;
  // Makes the next collectives wait for the work queued so far on a device stream (a
  // cudaStream_t) without blocking the host, and returns true; false when this Comm cannot (it
  // reads host memory: the caller synchronizes the host with the stream first).
  virtual bool order_after(void* /*stream*/) { return false; }
  // In place: every rank ends with the element-wise sum over the group (the same bits on all).
  virtual void all_reduce_sum(std::span<float> data) = 0;
  virtual void all_reduce_max(std::span<float> data) = 0;
  virtual void all_reduce_sum(std::span<double> data) = 0;
  virtual void all_reduce_sum(std::span<int64_t> data) = 0;
  // bf16 values (their bits), the same bits on all ranks: over MPI summed in fp32 and rounded to
  // nearest even once, over NCCL by its bf16 reduction.
  virtual void all_reduce_sum_bf16(std::span<uint16_t> data) = 0;
  // Starts an in-place all-reduce of `data` and returns; wait_all() completes every one started.
  // The data must not be touched in between.
  virtual void all_reduce_sum_start(std::span<float> data) = 0;
  virtual void wait_all() = 0;
  // in holds size() * out.size() values; rank r gets the sum of every rank's block r.
  virtual void reduce_scatter_sum(std::span<const float> in, std::span<float> out) = 0;
  // out holds size() * in.size() values: block r is rank r's in.
  virtual void all_gather(std::span<const float> in, std::span<float> out) = 0;
  // The same for raw bytes (any dtype: nothing is added up). `in` may be out's own block (in place).
  virtual void all_gather_bytes(std::span<const std::byte> in, std::span<std::byte> out) = 0;
  // root's bytes to every rank.
  virtual void broadcast(std::span<std::byte> data, int root) = 0;
  virtual void barrier() = 0;
  // What the job is doing ("step 12"), for the message of a collective that times out.
  virtual void set_context(const std::string& where) = 0;
};

// The group of one process.
std::unique_ptr<Comm> make_self_comm();

// MPI for the lifetime of the object: MPI_Init_thread asking for MPI_THREAD_MULTIPLE (the loader's
// and, later, the checkpoint writer's threads may call MPI), refusing a library that grants less.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  // The whole job (a duplicate of MPI_COMM_WORLD, so that kiln's messages never mix with others').
  // A collective still unfinished after timeout_s seconds (a rank died or hangs) aborts the whole
  // job with MPI_Abort, after printing the rank, the collective and the context.
  std::unique_ptr<Comm> world(double timeout_s) const;
  // Ends every process of the job (MPI_Abort): for a rank that fails alone, which would otherwise
  // leave the others waiting in a collective and itself in MPI_Finalize.
  [[noreturn]] static void abort_job(int code);
};

}  // namespace kiln
