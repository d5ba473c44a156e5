// Distributed checkpoints (docs/design.md §7): RUN_DIR/step_XXXXXXXX/ holds manifest.json and one HDF5
// file per rank that stores something, and RUN_DIR/latest names the newest complete checkpoint.
//
// What is stored is the fp32 master weights and the AdamW moments, never the bf16 working copy.
// Each stored piece is (tensor, its tensor-parallel box of the global shape, a flat range of that
// box): a rank's QKV heads ([3, H, D, C] globally), a ZeRO-1 shard cutting across tensors, a
// whole replicated tensor. Tensors replicated over DP or TP are written once. The manifest names
// every piece's file and dataset, so any layout (TP, DP, ZeRO-1, CPU or CUDA) can load any other's.
//
// A save writes into step_X.tmp/, fsyncs every file, records each file's size and FNV-1a hash in
// the manifest, renames the directory, fsyncs the run directory, then replaces `latest`
// atomically: a crash at any moment leaves the previous checkpoint intact and `latest` naming it.
#pragma once

#include <cstdint>
#include <future>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.h"
#include "model/gpt.h"
#include "parallel/comm/comm.h"
#include "train/optimizer.h"

namespace kiln {

// Format 2 adds the manifest's own checksum ("checksum": FNV-1a of the manifest's compact JSON
// without that field). Format 1 checkpoints still load, their manifest unchecked.
inline constexpr int kCheckpointFormat = 2;
inline constexpr int kOldestCheckpointFormat = 1;

// What decodes a model's tokens, recorded in every checkpoint so that it is usable alone.
struct TokenizerRecord {
  std::string name;         // what make_tokenizer() takes; empty: trained on random tokens
  std::string fingerprint;  // Tokenizer::fingerprint() of the files that made the data
  std::string files_dir;    // where its files are when they are not the bundled ones ("": bundled, or
                            // none): saving copies them into the checkpoint; loading finds them there
};

// What resumes a run besides the tensors.
struct TrainingState {
  int64_t step = 0;                   // optimizer steps taken
  std::optional<LoaderState> loader;  // the training data's position (global, so any DP size)
  std::string random_tokens;          // the random-token source's generator state, as text
  TokenizerRecord tokenizer;
};

// Where this rank sits in the job.
struct CheckpointRank {
  int tp = 1, tp_rank = 0, dp = 1, dp_rank = 0;
  bool zero1 = false;
  int world_rank() const { return dp_rank * tp + tp_rank; }
};

// One stored piece: elements [begin, end) of the row-major box (start, count) of a tensor's
// global shape, in dataset `dataset` of `file`.
struct CheckpointPiece {
  std::string kind;  // master, m or v
  std::string tensor;
  std::vector<int64_t> start, count;
  int64_t begin = 0, end = 0;
  std::string file, dataset;
};

// A checkpoint as taken at one step, in host memory: every rank's pieces (for the manifest) and
// the values of this rank's own.
struct CheckpointSnapshot {
  GPTConfig config;
  CheckpointRank rank;
  TrainingState state;
  std::string settings;
  int64_t adamw_step = 0;
  std::vector<CheckpointPiece> pieces;
  std::vector<std::vector<float>> values;  // per piece: this rank's, empty for the others'
  int64_t bytes() const;                   // host memory the values take
};
// The bytes of this rank's values in a snapshot, known before taking one.
int64_t snapshot_bytes(const GPTConfig& config, const CheckpointRank& rank);
CheckpointSnapshot snapshot_checkpoint(const std::string& settings, GPT& model, AdamW& optimizer,
                                       const CheckpointRank& rank, const TrainingState& state);
// Writes a snapshot into run_dir, as save_checkpoint does (a collective over `world`).
std::string write_checkpoint(const std::string& run_dir, const CheckpointSnapshot& snapshot, Comm& world, int keep);

// Faults for the tests to inject into saves and loads; none unless set. The kiln CLI sets stop_at
// from KILN_FAULT_STOP_AT (for tools/scripts/kill9-soak.sh); the save path reads only this.
struct CheckpointFaults {
  int fail_write = 0;   // the N-th HDF5 dataset write from now fails as on a full disk (0: none)
  std::string stop_at;  // the process stops itself (SIGSTOP) here: "load" (weights read, the rest
                        // not), "save-files" (rank files written, no manifest), "save-renamed" (the
                        // step directory in place, `latest` not yet naming it), "save-latest"
                        // (`latest` updated, old steps not yet pruned)
};
void inject_checkpoint_faults(const CheckpointFaults& faults);

// Saves step `state.step` of `model` and `optimizer` into run_dir. A collective over `world`:
// every rank writes its pieces, then rank 0 commits. Keeps the newest `keep` checkpoints (0: all).
// Throws on every rank if any rank failed, after removing the partial step_X.tmp/.
// The environment variable KILN_FAULT_ENOSPC=N makes the N-th dataset write of this process fail
// as a full disk would (for tests of that path).
std::string save_checkpoint(const std::string& run_dir, const std::string& settings, GPT& model, AdamW& optimizer,
                            const CheckpointRank& rank, const TrainingState& state, Comm& world, int keep);

// Writes snapshots on a background thread while training goes on, one at a time: host memory
// holds at most one snapshot being written. `comm` is the writer's own communicator (the job's,
// split off for it), so that its collectives run beside the training thread's.
class AsyncCheckpointWriter {
 public:
  explicit AsyncCheckpointWriter(Comm& comm) : comm_(comm) {}
  ~AsyncCheckpointWriter();  // waits for a save in flight (its error is lost: call wait() first)
  // Starts writing; the previous save must have been waited for.
  void start(const std::string& run_dir, CheckpointSnapshot snapshot, int keep);
  // Waits for the save in flight: its directory and seconds spent writing, or nothing when there
  // was none. Throws what the save threw (the same on every rank: the save is collective).
  std::optional<std::pair<std::string, double>> wait();

 private:
  Comm& comm_;
  std::future<std::pair<std::string, double>> writing_;
};

// The directory `latest` names in run_dir, or "" when there is none.
std::string latest_checkpoint(const std::string& run_dir);

// Loads a checkpoint saved under any layout into this rank's model (master weights and the
// compute-dtype copy) and optimizer shard. Refuses a model of another shape, naming the field.
TrainingState load_checkpoint(const std::string& dir, GPT& model, AdamW& optimizer);
// Only the parameters (fine-tuning from a checkpoint: new optimizer, data and schedule).
void load_parameters(const std::string& dir, GPT& model);

// A step directory as given, or the one a run directory's `latest` names; throws otherwise.
std::string resolve_checkpoint(const std::string& path);
// The model sizes a checkpoint was saved with (the other GPTConfig fields their defaults), and the
// settings of the run that saved it.
struct CheckpointInfo {
  GPTConfig model;
  std::string settings;
};
CheckpointInfo checkpoint_info(const std::string& dir);

// The whole model's master weights in the unsharded layout (ParamLayout(config)), whatever layout
// saved them, with the model's sizes and the run's settings: for generation and export.
struct CheckpointWeights {
  GPTConfig config;
  std::vector<float> weights;
  std::string settings;
  TokenizerRecord tokenizer;
};
CheckpointWeights read_checkpoint_weights(const std::string& dir);
// Step 0 of run_dir from weights alone (fresh AdamW moments): an imported model, ready for
// `kiln train --init-from` and `kiln generate`.
std::string save_weights_checkpoint(const std::string& run_dir, const GPTConfig& config, std::vector<float> weights);

// Checks every file's size and checksum and every piece's dataset and length; throws
// std::runtime_error naming the file and what is wrong.
void verify_checkpoint(const std::string& dir);
// The largest absolute difference between two checkpoints' master weights, and between their
// moments, tensor by tensor, whatever layouts saved them. Throws when the models' sizes differ.
// With a reference checkpoint (say, an earlier step of a's run) also the L2 norms of a - b and of
// a - reference: how far b is from a against how far a moved since the reference.
struct TensorDifference {
  std::string tensor, kind;  // kind: master, m or v
  double max_abs = 0;
  double norm = 0, update_norm = 0;  // ||a - b||, ||a - reference||: with a reference only
  // ||a - b|| / ||a - reference||: 0 when both are 0, infinite when only the update is (or a NaN).
  double relative() const;
};
std::vector<TensorDifference> compare_checkpoints(const std::string& a, const std::string& b,
                                                  const std::string& reference = "");

// Step, layout, model, and every tensor's global shape and pieces, for `kiln ckpt inspect`.
std::string describe_checkpoint(const std::string& dir);

}  // namespace kiln
