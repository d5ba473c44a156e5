// Training configuration: a TOML file plus `--section.key=value` overrides from the command line.
// Unknown keys and wrongly typed values are errors that name the key and the file.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace kiln {

struct DataConfig {
  std::string path;     // a dataset directory written by `kiln prepare`
  bool verify = false;  // read every shard and check its checksum at start-up (`--verify-data`)
};

// Settings that are choices among names, parsed once by load_train_config.
enum class NonFinite { stop, skip };              // train.nonfinite: a NaN/inf loss or gradient norm
enum class LrSchedule { cosine, wsd, constant };  // optim.schedule
enum class OnSaveError { stop, go_on };           // checkpoint.on_error: "stop" or "continue"
enum class Device { automatic, cpu, cuda, emu };  // run.device: "auto", "cpu", "cuda", "emu"
const char* device_name(Device d);                // as run.device spells it

struct TrainLoopConfig {
  int batch_size = 8;
  int seq_len = 64;
  int grad_accum = 1;  // micro-batches per optimizer step
  int64_t steps = 100;
  uint64_t seed = 1337;
  int log_every = 1;
  int eval_every = 50;     // 0 disables evaluation
  int eval_batches = 0;    // batches per evaluation; 0 = the whole validation split
  bool eval_only = false;  // evaluate the resumed (or initial) model on the validation split, train nothing
  double peak_tflops = 0;  // for MFU; 0 = the GPU's dense bf16 peak by its name (none on cpu/emu)
  Recompute recompute = Recompute::none;  // activations rebuilt in the backward: none, mlp, block
  NonFinite nonfinite = NonFinite::stop;  // a NaN/inf loss or gradient norm: stop, or skip the step
  int sample_every = 0;                   // steps between samples of text (prepared data only); 0 = never
  int sample_tokens = 32;
  std::string sample_prompt = "The";
};

struct OptimConfig {
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // final lr = lr * min_lr_ratio
  int64_t warmup_steps = 10;
  LrSchedule schedule = LrSchedule::cosine;
  double decay_fraction = 0.2;  // wsd: share of steps spent decaying
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;  // global-norm clipping; 0 disables
};

struct ParallelConfig {
  int tp = 1;              // tensor-parallel size: groups of consecutive ranks; data parallel = ranks / tp
  int zero = 0;            // 1: ZeRO-1, the optimizer state sharded over the data-parallel ranks
  double timeout_s = 600;  // a collective unfinished after this long aborts the job
  double bucket_mb = 25;   // gradient all-reduce buckets, started during backward; 0: one after it
  std::string rendezvous;  // RANK/WORLD_SIZE launches: the file the ranks meet through; "": RUN_DIR/rendezvous
};

struct CheckpointConfig {
  int every = 0;                             // steps between saves (and at the end); 0: never
  int keep = 3;                              // newest checkpoints kept; 0: all
  bool async = true;                         // write on a background thread while training goes on
  int64_t async_max_mb = 8192;               // host memory a background save may take; larger ones save in place
  std::string resume;                        // a checkpoint directory; empty: run.dir's latest, if any
  std::string init_from;                     // fine-tuning: a checkpoint's parameters only (new optimizer and data)
  OnSaveError on_error = OnSaveError::stop;  // a failed save: stop, or go on training (the previous one stays)
};

struct TrainConfig {
  std::string source;    // where it came from, for messages
  std::string settings;  // every key set by the file or an override, "section.key = value" per line, sorted
  std::set<std::string> command_line_keys;  // the keys an override set
  std::string preset = "tiny";
  GPTConfig model;
  bool vocab_size_set = false;  // model.vocab_size given; otherwise it is the dataset's
  bool seq_len_set = false;     // train.seq_len given; `kiln plan` otherwise plans the model's context
  DataConfig data;
  TrainLoopConfig train;
  OptimConfig optim;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  std::string run_dir = "runs/default";
  Device device = Device::automatic;  // auto: cuda when a GPU is present, else cpu; emu: CUDA backend on the emulator
  int threads = 0;                    // 0 = all cores
  bool deterministic = false;         // bitwise-identical runs for a seed on one device (slower kernels)
  bool dry_run = false;               // print the memory plan and exit, allocating nothing
  bool force = false;                 // start afresh in a run directory holding another run's metrics or checkpoints
  int64_t gpu_memory_bytes = 0;  // run.gpu_memory: the device size to plan for (and the emulator's); 0 = the device's
  std::string gpu;               // run.gpu: the GPU model a dry run plans for (e.g. H100), instead of this machine's
};

// "80GB", "80GiB", "512M", "1048576": binary units (GPU memory is quoted in GiB); -1 if malformed.
int64_t parse_memory_size(const std::string& text);

// A setting from the command line: "section.key=value" (the value in TOML syntax; a bare word is
// taken as a string), and how the user wrote it when that was a short flag ("--max-steps 0"), so
// that a message blames what was typed.
struct Override {
  std::string assignment;
  std::string flag;  // empty: written as --section.key=value
  Override(std::string a, std::string f = "") : assignment(std::move(a)), flag(std::move(f)) {}
  Override(const char* a) : assignment(a) {}
  std::string written() const { return flag.empty() ? "--" + assignment : flag; }
};

// Loads `path` (may be empty: defaults only) and applies the overrides in order. Throws
// std::runtime_error on any error, naming where the setting came from (the file, or the flag as
// typed on the command line), the key, and what was expected; an unknown key gets the nearest
// known one as a suggestion. Every numeric setting is range-checked, NaN included.
TrainConfig load_train_config(const std::string& path, const std::vector<Override>& overrides);

// Every key load_train_config() reads ("train.steps", ...), for suggestions.
const std::vector<std::string>& config_keys();

// The candidate nearest to `word` by edit distance, when it is near enough to be a likely typo
// (or one contains the other, as "steps" and "max-steps"); "" otherwise.
std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace kiln
