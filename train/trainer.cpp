#include "train/trainer.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <tuple>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/gpt2_tokenizer.h"
#include "data/tokenizer.h"
#include "kernels/cpu/blas.h"
#include "kernels/device_info.h"
#include "model/cpu_ops.h"
#include "model/cuda_ops.h"
#include "model/gpt.h"
#include "model/params.h"
#include "parallel/context.h"
#include "parallel/nccl_comm.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/evaluate.h"
#include "train/job_check.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/plan.h"
#include "train/preemption.h"
#include "train/run_directory.h"
#include "train/sample.h"
#include "train/schedule.h"
#include "train/tensorboard.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

std::string format_duration(double seconds) {
  const auto s = (int64_t)(seconds + 0.5);
  return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

std::string format_bytes(int64_t bytes) { return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0)); }

// run.device = auto: cuda when a GPU is present, else cpu.
std::string resolve_device(const TrainConfig& cfg) {
  if (cfg.device != "auto") return cfg.device;
  return query_cuda().devices.empty() ? "cpu" : "cuda";
}

// What the run is planned for: the device's name, memory and peak (0: unknown or not limited).
struct DeviceTarget {
  std::string name;
  int64_t memory_bytes = 0;
  double peak_tflops = 0;
};

// MemAvailable from /proc/meminfo, in bytes; 0 (not limited) where it cannot be read.
int64_t available_host_memory() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    int64_t kib = 0;
    std::string unit;
    meminfo >> kib >> unit;
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

DeviceTarget device_target(const TrainConfig& cfg, const std::string& device) {
  constexpr int64_t kH100Bytes = 80LL << 30;
  DeviceTarget t;
  if (device == "cpu") {
    // Host memory is planned like a GPU's: against what the machine has free (or run.gpu_memory).
    const int64_t available = available_host_memory();
    t = {cfg.gpu_memory_bytes > 0 ? "cpu (run.gpu_memory)" : "cpu (MemAvailable)",
         cfg.gpu_memory_bytes > 0 ? cfg.gpu_memory_bytes : available, 0};
  } else if (device == "emu") {
    t = {"emulator", cfg.gpu_memory_bytes > 0 ? cfg.gpu_memory_bytes : kH100Bytes, 0};
  } else if (!cfg.gpu.empty()) {  // a dry run for a named GPU, whatever this machine has
    t = {cfg.gpu, cfg.gpu_memory_bytes, dense_bf16_peak_tflops(cfg.gpu)};
  } else {
    const CudaInfo cuda = query_cuda();
    if (!cuda.devices.empty()) {
      const CudaDevice& d = cuda.devices.front();
      t = {d.name, (int64_t)d.memory_bytes, dense_bf16_peak_tflops(d.name)};
      if (cfg.gpu_memory_bytes > 0) t.memory_bytes = std::min(t.memory_bytes, cfg.gpu_memory_bytes);
    } else if (cfg.dry_run) {  // planning for a GPU elsewhere
      t = {"H100 (assumed: no GPU here)", cfg.gpu_memory_bytes > 0 ? cfg.gpu_memory_bytes : kH100Bytes, 989};
    } else {
      throw std::runtime_error("run.device = cuda: " + cuda.status);
    }
  }
  if (cfg.train.peak_tflops > 0) t.peak_tflops = cfg.train.peak_tflops;
  return t;
}

std::unique_ptr<Ops> make_ops(const TrainConfig& cfg, const std::string& device, const DeviceTarget& target) {
  if (device == "cpu") return make_cpu_ops();
  if (device == "emu") return emu::make_cuda_ops({cfg.deterministic, 0, target.memory_bytes});
  const CudaOpsOptions options{cfg.deterministic, detect_process().local_rank, 0};  // one GPU per process
#ifdef KILN_HAVE_CUDA
  return cuda::make_cuda_ops(options);
#else
  throw std::runtime_error("run.device = cuda: this kiln was built without CUDA");
#endif
}

std::string describe(const MemoryPlan& m) {
  return fmt::format("parameters {}, master weights {}, gradients {}, AdamW moments {}, activations {}, logits {}, "
                     "workspace {}, reserved {}: total {}",
                     format_bytes(m.parameters), format_bytes(m.master), format_bytes(m.gradients),
                     format_bytes(m.moments), format_bytes(m.activations), format_bytes(m.logits),
                     format_bytes(m.workspace), format_bytes(m.reserved), format_bytes(m.total()));
}

// --dry-run: the plan against the device, and the largest micro-batch each recompute setting fits.
void report_dry_run(std::ostream& log, const PlanInput& in, const DeviceTarget& target) {
  const MemoryPlan plan = plan_memory(in);
  log << fmt::format("dry run: batch {}x{}, recompute {} on {} ({}): ", in.micro_batch, in.seq_len,
                     recompute_name(in.recompute), target.name,
                     target.memory_bytes > 0 ? format_bytes(target.memory_bytes) : "memory not limited");
  const bool fits = target.memory_bytes == 0 || plan.total() <= target.memory_bytes;
  log << (fits ? "fits" : "does NOT fit") << "\n";
  if (target.memory_bytes > 0) {
    PlanInput alt = in;
    alt.gpu.memory_bytes = (double)target.memory_bytes;
    log << "largest micro-batch that fits:";
    for (Recompute r : {Recompute::none, Recompute::mlp, Recompute::block}) {
      alt.recompute = r;
      log << fmt::format(" {} (recompute {})", largest_micro_batch(alt), recompute_name(r));
    }
    log << "\n";
  }
  if (!fits)
    throw std::runtime_error(fmt::format("dry run: the plan needs {} but {} has {}", format_bytes(plan.total()),
                                         target.name, format_bytes(target.memory_bytes)));
}

// Where training batches come from: a prepared dataset (with its validation split), or uniform
// random tokens over the model's vocabulary (data.path = "random", for benchmarks).
// With several data-parallel ranks, each gets rows [rank B, (rank + 1) B) of every global batch.
class BatchSource {
 public:
  // The model's vocabulary is the dataset's unless `vocab_fixed` (set in the config, or a fine-tuned
  // checkpoint's), when the two must agree.
  BatchSource(const TrainConfig& cfg, GPTConfig& model_cfg, bool vocab_fixed, int dp_rank, int dp_size)
      : rng_(cfg.train.seed), dp_rank_(dp_rank), dp_size_(dp_size) {
    batch_.B = cfg.train.batch_size;
    batch_.T = cfg.train.seq_len;
    if (cfg.data.path == "random") {
      vocab_ = model_cfg.vocab_size;
      return;
    }
    const auto opened = std::chrono::steady_clock::now();
    data_.emplace(Dataset::open(cfg.data.path, cfg.data.verify ? DataCheck::checksums : DataCheck::sizes));
    if (cfg.data.verify)
      verified_ = fmt::format(", checksums verified: {:.1f} MB in {:.2f} s", (data_->train.bytes + data_->val.bytes) / 1e6,
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - opened).count());
    const bool own_files = !Gpt2Tokenizer::files_in(data_->dir).first.empty();
    tokenizer_record_ = {data_->tokenizer_name, data_->meta.tokenizer, own_files ? data_->dir : ""};
    // Only samples need the tokenizer: training reads token ids.
    if (cfg.train.sample_every > 0) {
      tokenizer_ = tokenizer_matching(data_->tokenizer_name, data_->meta.tokenizer, data_->dir, data_->dir);
      // Checked now, not at the first sample, where a failure would end the run unsaved.
      const size_t prompt = tokenizer_->encode(cfg.train.sample_prompt).size();
      if (prompt >= (size_t)model_cfg.max_seq_len)
        throw std::runtime_error(fmt::format("train.sample_prompt: {} tokens, but the model's context holds {} "
                                             "(model.max_seq_len) and the sample needs room to grow",
                                             prompt, model_cfg.max_seq_len));
    }
    if (!vocab_fixed) model_cfg.vocab_size = (int)data_->meta.vocab_size;
    if (model_cfg.vocab_size != data_->meta.vocab_size)
      throw std::runtime_error((cfg.checkpoint.init_from.empty() ? cfg.source : "init-from " + cfg.checkpoint.init_from) +
                               ": model.vocab_size = " + std::to_string(model_cfg.vocab_size) +
                               " differs from the vocabulary of " + cfg.data.path + " (" +
                               std::to_string(data_->meta.vocab_size) + ", tokenizer " + data_->meta.tokenizer + ")");
    train_ = std::make_unique<DataLoader>(data_->train,
                                          LoaderOptions{batch_.B, batch_.T, cfg.train.seed, dp_rank, dp_size, true, 4});
    // Every rank evaluates the whole validation split: the same time on all, so none waits for
    // rank 0 in a collective (and trips the watchdog), and the same val_loss everywhere.
    if ((cfg.train.eval_every > 0 || cfg.train.eval_only) && data_->val.num_tokens > 0)
      val_ = std::make_unique<DataLoader>(data_->val, LoaderOptions{batch_.B, batch_.T, cfg.train.seed, 0, 1, false, 4});
  }

  // The next training batch, loss mask applied. Reuses its buffers: no allocation per step.
  const Batch& next() {
    if (train_) {
      const Batch& b = *train_->next();
      batch_.inputs.assign(b.inputs.begin(), b.inputs.end());
      batch_.targets.assign(b.targets.begin(), b.targets.end());
      batch_.loss_mask.assign(b.loss_mask.begin(), b.loss_mask.end());
      apply_loss_mask(batch_);
      return batch_;
    }
    // Every rank draws the whole global batch, inputs then targets, and keeps its rows.
    std::uniform_int_distribution<int32_t> token(0, vocab_ - 1);
    const size_t rows = (size_t)batch_.B * batch_.T, first = (size_t)dp_rank_ * rows;
    batch_.inputs.resize(rows);
    batch_.targets.resize(rows);
    for (std::vector<int32_t>* part : {&batch_.inputs, &batch_.targets})
      for (size_t i = 0; i < rows * dp_size_; i++) {
        const int32_t t = token(rng_);
        if (i >= first && i < first + rows) (*part)[i - first] = t;
      }
    return batch_;
  }
  DataLoader* validation() const { return val_.get(); }
  // The data's part of a checkpoint: where the stream is, and what decodes its tokens; and back.
  void save_position(TrainingState& state) const {
    if (train_) state.loader = train_->state();
    std::ostringstream rng;
    rng << rng_;
    state.random_tokens = rng.str();
    state.tokenizer = tokenizer_record_;
  }
  void restore_position(const TrainingState& state) {
    if (train_ && state.loader) train_->restore(*state.loader);
    if (!state.random_tokens.empty()) std::istringstream(state.random_tokens) >> rng_;
  }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }  // none for random tokens
  std::string describe(const std::string& path) const {
    if (!data_) return fmt::format("random tokens over {} ids (no validation)", vocab_);
    return fmt::format("{} ({}, {} train / {} val tokens, {} batches/epoch{})", path, data_->meta.tokenizer,
                       data_->train.num_tokens, data_->val.num_tokens, train_->batches_per_epoch(), verified_);
  }

 private:
  std::optional<Dataset> data_;
  std::string verified_;  // how long verifying the checksums took, with --verify-data
  std::unique_ptr<DataLoader> train_, val_;
  std::unique_ptr<Tokenizer> tokenizer_;
  TokenizerRecord tokenizer_record_;  // none for random tokens
  std::mt19937_64 rng_;
  int dp_rank_, dp_size_;
  int vocab_ = 0;
  Batch batch_;
};

int64_t unmasked(const Batch& batch) {
  return std::count_if(batch.targets.begin(), batch.targets.end(), [](int32_t t) { return t >= 0; });
}

// Discards everything written to it: the log of ranks other than 0.
struct NullBuffer : std::streambuf {
  int overflow(int c) override { return c; }
};

// Time per op category over `total_s` (the steps, evaluations and samples; not the saves), largest
// first; "untimed" is the rest of that span.
std::string op_breakdown(const Ops& ops, double total_s) {
  std::vector<std::pair<double, std::string>> rows;
  double timed = 0;
  for (const auto& [op, s] : ops.op_seconds()) {
    rows.emplace_back(s, op);
    if (op != "other") timed += s;
  }
  std::sort(rows.rbegin(), rows.rend());
  std::string out = "time per op:";
  for (const auto& [s, op] : rows) out += fmt::format(" {} {:.1f}%", op, 100 * s / total_s);
  return out + fmt::format(" (untimed {:.1f}%)", 100 * std::max(0.0, total_s - timed) / total_s);
}

// Fine-tuning: the checkpoint's shape is the model's. Only a --model.* override on the command
// line that disagrees with it is refused, every such key named.
GPTConfig fine_tuning_model(const TrainConfig& cfg) {
  const std::string from = resolve_checkpoint(cfg.checkpoint.init_from);
  const GPTConfig saved = checkpoint_info(from).model;
  GPTConfig model = cfg.model;
  std::string conflicts;
  for (auto [key, saved_value, value] : {std::tuple{"model.vocab_size", saved.vocab_size, &model.vocab_size},
                                         std::tuple{"model.max_seq_len", saved.max_seq_len, &model.max_seq_len},
                                         std::tuple{"model.n_layer", saved.n_layer, &model.n_layer},
                                         std::tuple{"model.n_head", saved.n_head, &model.n_head},
                                         std::tuple{"model.n_embd", saved.n_embd, &model.n_embd}}) {
    if (cfg.command_line_keys.count(key) && *value != saved_value)
      conflicts += fmt::format("; {} = {} on the command line, {} in the checkpoint", key, *value, saved_value);
    *value = saved_value;
  }
  if (!conflicts.empty())
    throw std::runtime_error("init-from " + from + ": fine-tuning keeps the checkpoint's model shape" + conflicts);
  return model;
}

}  // namespace

double flops_per_token(int64_t params, int n_layer, int seq_len, int n_embd) {
  return 6.0 * (double)params + 12.0 * n_layer * (double)seq_len * n_embd;
}

std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& rank0_log, Comm& comm) {
  // First of all, so that a signal during a long start-up (a checkpoint load) still stops the run
  // cleanly, with the marker that has it requeued.
  const PreemptionSignals signals;
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
  NullBuffer discard;
  std::ostream silent(&discard);
  std::ostream& log = comm.rank() == 0 ? rank0_log : silent;
  if (comm.size() > 1) check_ranks_agree(comm, binary_hash(), cfg.settings);
  // Tensor-parallel groups of consecutive ranks (one node's GPUs), data parallel across them.
  const int tp = cfg.parallel.tp;
  if (comm.size() % tp != 0)
    throw std::runtime_error(cfg.source + ": parallel.tp = " + std::to_string(tp) + " does not divide the " +
                             std::to_string(comm.size()) + " ranks");
  const std::unique_ptr<Comm> tp_comm = comm.split(comm.rank() / tp, comm.rank() % tp);
  const std::unique_ptr<Comm> dp_comm = comm.split(comm.rank() % tp, comm.rank() / tp);
  const std::string device = resolve_device(cfg);
  const DeviceTarget target = device_target(cfg, device);
  GPTConfig model_cfg = cfg.checkpoint.init_from.empty() ? cfg.model : fine_tuning_model(cfg);
  BatchSource data(cfg, model_cfg, cfg.vocab_size_set || !cfg.checkpoint.init_from.empty(), dp_comm->rank(),
                   dp_comm->size());
  const int B = cfg.train.batch_size, T = cfg.train.seq_len;

  // The memory plan, checked against the device before anything is allocated on it.
  PlanInput plan_in;
  plan_in.model = model_cfg;
  plan_in.backend = device == "cpu" ? PlanBackend::cpu : PlanBackend::cuda;
  plan_in.deterministic = cfg.deterministic;
  plan_in.micro_batch = B;
  plan_in.seq_len = T;
  plan_in.gpus = comm.size();
  plan_in.tp = tp;
  plan_in.zero1 = cfg.parallel.zero == 1;
  plan_in.recompute = cfg.train.recompute;
  if (device == "emu") plan_in.gpu.reserved_bytes = 0;  // no CUDA context to make room for
  const MemoryPlan plan = plan_memory(plan_in);
  log << fmt::format("memory plan ({}, per rank): {}\n", device, describe(plan));
  if (cfg.dry_run) {
    report_dry_run(log, plan_in, target);
    return {};
  }
  if (target.memory_bytes > 0 && plan.total() > target.memory_bytes)
    throw std::runtime_error(fmt::format(
        "the model does not fit: {} x {} tokens with recompute {} needs {} ({}) but {} has {}; try "
        "--train.recompute=block or a smaller --batch-size (kiln train --dry-run shows what fits)",
        B, T, recompute_name(cfg.train.recompute), format_bytes(plan.total()), describe(plan), target.name,
        format_bytes(target.memory_bytes)));
  // One run at a time in a run directory: rank 0 holds its lock for the job, and under it clears
  // what killed saves left behind.
  std::optional<RunDirectoryLock> lock;
  if (comm.rank() == 0) {
    lock.emplace(cfg.run_dir);
    if (const int stale = remove_stale_saves(cfg.run_dir))
      log << fmt::format("removed {} unfinished save(s) (step_*.tmp) left by a killed run\n", stale);
  }
  std::unique_ptr<Ops> ops = make_ops(cfg, device, target);

  // A GPU's activations and gradients are reduced over NCCL; host scalars (loss, token counts)
  // stay on MPI. The emulator's device memory is the host's: MPI reaches it.
  std::unique_ptr<Comm> gradient_comm, activation_comm;
#ifdef KILN_HAVE_CUDA
  if (device == "cuda" && dp_comm->size() > 1) gradient_comm = make_nccl_comm(*dp_comm, cfg.parallel.timeout_s);
  if (device == "cuda" && tp > 1) activation_comm = make_nccl_comm(*tp_comm, cfg.parallel.timeout_s);
#endif
  // ZeRO-1 shards the flat buffers over the data-parallel ranks (the master weights too).
  const bool zero1 = cfg.parallel.zero == 1 && dp_comm->size() > 1;
  const ZeroSharding zero = zero1 ? ZeroSharding{dp_comm->size(), dp_comm->rank()} : ZeroSharding{};
  GPT model(model_cfg, *ops, B, T, {tp, tp_comm->rank()}, activation_comm ? activation_comm.get() : tp_comm.get(),
            cfg.train.recompute, zero);
  model.init_weights(cfg.train.seed);
  DataParallel data_parallel(model, gradient_comm ? *gradient_comm : *dp_comm, *tp_comm, cfg.parallel.zero == 1,
                             cfg.parallel.bucket_mb * 1e6);
  AdamW optimizer(model, cfg.optim, data_parallel.shard_first(), data_parallel.shard_count());

  // Resume from the run directory's latest checkpoint (or checkpoint.resume), whatever layout saved it.
  const CheckpointRank ckpt_rank{tp, tp_comm->rank(), dp_comm->size(), dp_comm->rank(), zero1};
  const std::string resume =
      cfg.checkpoint.resume.empty() ? latest_checkpoint(cfg.run_dir) : resolve_checkpoint(cfg.checkpoint.resume);
  int64_t first_step = 0;
  if (comm.rank() == 0) {
    if (resume.empty() && !cfg.train.eval_only) check_fresh_start(cfg.run_dir, cfg.settings, cfg.force);
    if (!cfg.train.eval_only) record_settings(cfg.run_dir, cfg.settings);
  }
  if (!resume.empty()) {
    if (const std::string changed = describe_changed_settings(checkpoint_info(resume).settings, cfg.settings);
        !changed.empty())
      log << "resuming with changed settings:\n" << changed;
    const auto load_start = Clock::now();
    const TrainingState state = load_checkpoint(resume, model, optimizer);
    data.restore_position(state);
    first_step = state.step;
    log << fmt::format("resumed from {} at step {} (loaded in {:.2f} s)\n", resume, first_step,
                       std::chrono::duration<double>(Clock::now() - load_start).count());
    if (first_step >= cfg.train.steps && resume == latest_checkpoint(cfg.run_dir) && !cfg.train.eval_only) {
      log << fmt::format("run already at step {} of {}: nothing to do (raise --max-steps to train further)\n",
                         first_step, cfg.train.steps);
      return {};
    }
  } else if (!cfg.checkpoint.init_from.empty()) {
    const std::string from = resolve_checkpoint(cfg.checkpoint.init_from);
    load_parameters(from, model);
    log << fmt::format("parameters from {} (optimizer, data and schedule start afresh)\n", from);
  }
  const std::string preempted_marker = cfg.run_dir + "/preempted";
  if (comm.rank() == 0) std::filesystem::remove(preempted_marker);  // this is the requeued job
  if (cfg.train.eval_only) {
    if (!data.validation())
      throw std::runtime_error(cfg.data.path + ": no validation split to evaluate (prepare it with --val-fraction or "
                               "--val-docs)");
    const auto eval_start = Clock::now();
    const double val_loss = evaluate(model, *data.validation(), cfg.train.eval_batches);
    log << fmt::format("eval only, at step {}: val loss {:.4f}, perplexity {:.2f} ({:.2f} s)\n", first_step, val_loss,
                       std::exp(val_loss), std::chrono::duration<double>(Clock::now() - eval_start).count());
    return {StepRecord{first_step, val_loss, 0, 0, 0, 0, val_loss}};
  }
  // Whether any rank has had a signal: the ranks see signals at different moments, and must agree.
  auto signal_on_any_rank = [&] {
    int64_t received = signals.received() != 0;
    if (comm.size() > 1) comm.all_reduce_sum(std::span<int64_t>(&received, 1));
    return received > 0;
  };
  // A signal during start-up: nothing new to save; the marker has the job requeued.
  if (signal_on_any_rank()) {
    if (comm.rank() == 0) std::ofstream(preempted_marker) << first_step << "\n";
    log << fmt::format("preempted (a signal) before the first step: nothing new to save, stopping at step {}; {} "
                       "tells the launcher to requeue\n",
                       first_step, preempted_marker);
    return {};
  }
  std::optional<MetricsWriter> metrics;
  std::optional<TensorBoardWriter> tensorboard;
  if (comm.rank() == 0) {
    metrics.emplace(cfg.run_dir, first_step);  // rows past the checkpoint are dropped
    tensorboard.emplace(cfg.run_dir);
  }
  // Background saves: a communicator of their own, so their collectives run beside training's.
  std::unique_ptr<Comm> checkpoint_comm;
  std::optional<AsyncCheckpointWriter> writer;
  if (cfg.checkpoint.every > 0 && cfg.checkpoint.async) {
    checkpoint_comm = comm.split(0, comm.rank());
    writer.emplace(*checkpoint_comm);
  }
  const int64_t snapshot_mb = (snapshot_bytes(model_cfg, ckpt_rank) + (1 << 20) - 1) >> 20;
  // Waits for the save in flight, at the same step on every rank (its outcome is the same on all).
  auto finish_background_save = [&] {
    if (!writer) return;
    try {
      if (const auto saved = writer->wait())
        log << fmt::format("saved {} ({:.2f} s writing in the background)\n", saved->first, saved->second);
    } catch (const std::exception& e) {
      if (cfg.checkpoint.on_error == "stop") throw;
      log << fmt::format("{}; training goes on (checkpoint.on_error = continue)\n", e.what());
    }
  };

  const int64_t params = model.layout().total();  // this tensor-parallel rank's
  const int64_t model_params = ParamLayout(model_cfg, {1, 0}).total();
  const int64_t tokens_per_step = (int64_t)B * T * cfg.train.grad_accum * dp_comm->size();
  const double step_flops = flops_per_token(model_params, cfg.model.n_layer, T, cfg.model.n_embd) * tokens_per_step;
  const double peak_flops = target.peak_tflops * 1e12 * comm.size();
  log << fmt::format("kiln train: model {} ({} layers, {} heads, width {}, vocab {} padded to {}), {:.2f}M parameters\n",
                     cfg.preset, model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.vocab_size,
                     model_cfg.padded_vocab(), model.layout().trained() / 1e6);
  log << fmt::format("data: {}; batch {}x{} x{} accum x{} data-parallel ranks (TP {}) = {} tokens/step, {}\n",
                     data.describe(cfg.data.path), B, T, cfg.train.grad_accum, dp_comm->size(), tp, tokens_per_step,
                     ops->name() == "cpu" ? fmt::format("{} threads, {}", omp_get_max_threads(), cpu::blas_name())
                                          : fmt::format("{} backend on {}{}", ops->name(), target.name,
                                                        cfg.deterministic ? ", deterministic" : ""));
  if (cfg.train.eval_every > 0 && !data.validation())
    log << fmt::format("note: train.eval_every = {}, but {} has no validation split, so nothing is evaluated (prepare "
                       "the data with --val-fraction or --val-docs)\n",
                       cfg.train.eval_every, cfg.data.path == "random" ? "random data" : cfg.data.path);
  const int64_t allocated = model.memory().total() + optimizer.state_bytes() + data_parallel.staging_bytes();
  const int64_t planned = plan.total() - plan.reserved;
  log << fmt::format("allocated {} on rank 0 ({})\n", format_bytes(allocated),
                     allocated == planned ? "the plan, to the byte"
                                          : fmt::format("the plan said {}: {:+} bytes", format_bytes(planned),
                                                        allocated - planned));
  log << fmt::format("optimizer state floats on rank 0: {}\n", optimizer.state_floats());
  log << fmt::format("MFU: model FLOPs 6 N + 12 L T C per token (N = {} parameters) against {}\n", model_params,
                     peak_flops > 0 ? fmt::format("a peak of {} TFLOP/s per device", target.peak_tflops)
                                    : std::string("no known peak (set train.peak_tflops)"));
  if (tp > 1) log << fmt::format("parameters on rank 0: {} of the model's {}\n", params, model_params);
  if (metrics) log << "metrics: " << metrics->path() << " and " << tensorboard->path() << " (tensorboard --logdir)\n";

  std::vector<StepRecord> records;
  double elapsed_s = 0;  // training steps only (for tokens/s)
  double op_span_s = 0;  // what the op timers cover: steps, evaluations and samples, not saves
  auto since = [](Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); };
  // Each group's collectives and bytes in the last step: what the tests check the layout by.
  struct Traffic {
    int64_t collectives = 0, bytes = 0;
  };
  auto traffic = [](std::initializer_list<const Comm*> comms) {
    Traffic t;
    for (const Comm* c : comms)
      if (c) t.collectives += c->collectives(), t.bytes += c->bytes();
    return t;
  };
  Traffic tp_step, dp_step;
  int64_t skipped = 0;
  for (int64_t step = first_step; step < cfg.train.steps; step++) {
    const auto start = Clock::now();
    const Traffic tp_before = traffic({tp_comm.get(), activation_comm.get()});
    const Traffic dp_before = traffic({dp_comm.get(), gradient_comm.get()});
    for (Comm* c : {&comm, tp_comm.get(), dp_comm.get(), gradient_comm.get(), activation_comm.get()})
      if (c) c->set_context(fmt::format("step {}", step + 1));
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < cfg.train.grad_accum; micro++) {
      const Batch& batch = data.next();
      // This rank's share of the global batch's unmasked tokens weights its mean loss, so that the
      // sum over ranks is the global mean (1 exactly on one rank).
      const int64_t local_tokens = unmasked(batch);
      int64_t global_tokens = local_tokens;
      dp_comm->all_reduce_sum(std::span<int64_t>(&global_tokens, 1));
      const double share = global_tokens > 0 ? (double)local_tokens / (double)global_tokens : 0.0;
      const bool last_micro = micro + 1 == cfg.train.grad_accum;  // its backward finishes the gradients
      loss += share * model.forward_backward(batch.inputs, batch.targets, B, T, (float)(share / cfg.train.grad_accum),
                                             last_micro ? data_parallel.grads_ready() : GPT::GradsReady{});
    }
    loss /= cfg.train.grad_accum;
    dp_comm->all_reduce_sum(std::span<double>(&loss, 1));  // the tensor-parallel ranks have the same
    const double norm = data_parallel.reduce_gradients();
    const double lr = learning_rate(cfg.optim, step, cfg.train.steps);
    // Every rank sees the same loss and norm, so all stop or skip together.
    const bool finite = std::isfinite(loss) && std::isfinite(norm);
    if (!finite && cfg.train.nonfinite == "stop")
      throw std::runtime_error(fmt::format("step {}: the loss is {} and the gradient norm {}: stopping "
                                           "(train.nonfinite = skip would skip such steps)",
                                           step + 1, loss, norm));
    if (finite) {
      optimizer.step(lr, ref::clip_factor(norm, cfg.optim.grad_clip), data_parallel.optimizer_grads());
      data_parallel.gather_parameters();
    } else {
      skipped++;
      log << fmt::format("step {}: loss {}, gradient norm {}: step skipped ({} so far)\n", step + 1, loss, norm, skipped);
    }
    const Traffic tp_after = traffic({tp_comm.get(), activation_comm.get()});
    const Traffic dp_after = traffic({dp_comm.get(), gradient_comm.get()});
    tp_step = {tp_after.collectives - tp_before.collectives, tp_after.bytes - tp_before.bytes};
    dp_step = {dp_after.collectives - dp_before.collectives, dp_after.bytes - dp_before.bytes};
    const double seconds = since(start);
    elapsed_s += seconds;

    StepRecord rec{step + 1, loss, lr, norm, seconds * 1e3, tokens_per_step / seconds, std::nullopt};
    const bool last = step + 1 == cfg.train.steps;
    const auto eval_start = Clock::now();
    if (data.validation() && ((step + 1) % cfg.train.eval_every == 0 || last))
      rec.val_loss = evaluate(model, *data.validation(), cfg.train.eval_batches);
    op_span_s += seconds + since(eval_start);

    nlohmann::json row = {{"step", rec.step}, {"loss", rec.loss}, {"lr", rec.lr}, {"grad_norm", rec.grad_norm},
                          {"ms", rec.ms}, {"tokens_per_s", rec.tokens_per_s}};
    const std::string mfu = peak_flops > 0 ? fmt::format("{:.1f}%", 100.0 * step_flops / seconds / peak_flops) : "-";
    if (peak_flops > 0) row["mfu"] = step_flops / seconds / peak_flops;
    if (!finite) row["skipped"] = true;
    if (rec.val_loss) row["val_loss"] = *rec.val_loss;
    if (metrics) metrics->write(row);
    if (tensorboard) {
      std::vector<std::pair<std::string, double>> scalars = {{"train/loss", loss},
                                                             {"train/lr", lr},
                                                             {"train/grad_norm", norm},
                                                             {"perf/tokens_per_s", rec.tokens_per_s},
                                                             {"train/skipped_steps", (double)skipped}};
      if (peak_flops > 0) scalars.emplace_back("perf/mfu", step_flops / seconds / peak_flops);
      if (rec.val_loss) scalars.emplace_back("val/loss", *rec.val_loss);
      tensorboard->write_scalars(rec.step, scalars);
    }

    if ((step + 1) % cfg.train.log_every == 0 || last || rec.val_loss) {
      const double eta = elapsed_s / (double)(step + 1 - first_step) * (double)(cfg.train.steps - step - 1);
      log << fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.1f} ms | {:.0f} tok/s | "
                         "{:.2f} GFLOP/s | MFU {} | ETA {}",
                         rec.step, std::to_string(cfg.train.steps).size(), cfg.train.steps, loss, lr, norm,
                         rec.ms, rec.tokens_per_s, step_flops / seconds / 1e9, mfu, format_duration(eta));
      if (rec.val_loss) log << fmt::format(" | val loss {:.4f}", *rec.val_loss);
      log << std::endl;
    }
    if (cfg.train.sample_every > 0 && (step + 1) % cfg.train.sample_every == 0 && data.tokenizer() && tp == 1) {
      const auto sample_start = Clock::now();
      const std::vector<int32_t> text = sample_tokens(model, data.tokenizer()->encode(cfg.train.sample_prompt),
                                                      cfg.train.sample_tokens, cfg.train.seed + step);
      log << fmt::format("sample at step {}: {:?}\n", step + 1, cfg.train.sample_prompt + data.tokenizer()->decode(text));
      op_span_s += since(sample_start);
    }
    records.push_back(rec);
    // A signal on any rank stops every rank after this step, with a checkpoint.
    const bool preempt = signal_on_any_rank();
    // Every run saves at its end, so that generate, eval and init-from have something to read.
    if (preempt || last || (cfg.checkpoint.every > 0 && (step + 1) % cfg.checkpoint.every == 0)) {
      TrainingState state;
      state.step = step + 1;
      data.save_position(state);
      finish_background_save();  // one snapshot in host memory at a time
      const auto save_start = Clock::now();
      try {
        if (writer && !preempt && snapshot_mb <= cfg.checkpoint.async_max_mb) {
          writer->start(cfg.run_dir, snapshot_checkpoint(cfg.settings, model, optimizer, ckpt_rank, state),
                        cfg.checkpoint.keep);
          log << fmt::format("step {}: checkpoint snapshot ({} MiB) taken in {:.2f} s, writing in the background\n",
                             step + 1, snapshot_mb, std::chrono::duration<double>(Clock::now() - save_start).count());
        } else {
          const std::string dir =
              save_checkpoint(cfg.run_dir, cfg.settings, model, optimizer, ckpt_rank, state, comm, cfg.checkpoint.keep);
          log << fmt::format("saved {} in {:.2f} s\n", dir,
                             std::chrono::duration<double>(Clock::now() - save_start).count());
        }
      } catch (const std::exception& e) {
        if (cfg.checkpoint.on_error == "stop" || preempt) throw;
        log << fmt::format("{}; training goes on (checkpoint.on_error = continue)\n", e.what());
      }
    }
    if (preempt) {  // the save above waited for any background one, then saved in place
      if (comm.rank() == 0) std::ofstream(preempted_marker) << step + 1 << "\n";
      log << fmt::format("preempted (a signal): saved at step {}, stopping; {} tells the launcher to requeue\n",
                         step + 1, preempted_marker);
      return records;
    }
  }
  finish_background_save();
  // Resumed where the run ends: the state is saved in this run directory, in this job's layout
  // (so `--resume OTHER --max-steps STEP` copies, and reshards, a checkpoint).
  if (first_step == cfg.train.steps &&
      latest_checkpoint(cfg.run_dir) != cfg.run_dir + fmt::format("/step_{:08}", first_step)) {
    TrainingState state;
    state.step = first_step;
    data.save_position(state);
    log << fmt::format("no steps left: saved {}\n", save_checkpoint(cfg.run_dir, cfg.settings, model, optimizer,
                                                                       ckpt_rank, state, comm, cfg.checkpoint.keep));
  }
  if (skipped > 0) log << fmt::format("{} step(s) skipped for a non-finite loss or gradient norm\n", skipped);
  if (cfg.train.steps > first_step)
    log << fmt::format("done: {} steps in {}, {:.0f} tokens/s\n", cfg.train.steps - first_step,
                       format_duration(elapsed_s), tokens_per_step * (cfg.train.steps - first_step) / elapsed_s);
  if (tp > 1) {
    check_replicas_agree(model, *tp_comm);
    log << fmt::format("tensor parallel over {} ranks: {} collectives ({} bytes) per step; replicated parameters "
                       "bitwise equal\n",
                       tp, tp_step.collectives, tp_step.bytes);
  }
  if (dp_comm->size() > 1)
    log << fmt::format("gradient reduction over {} ranks: {}; {} collectives ({} bytes) per step\n", dp_comm->size(),
                       data_parallel.buckets_last_step() > 0
                           ? fmt::format("{} bucket(s) per step, started during the backward pass",
                                         data_parallel.buckets_last_step())
                           : std::string(cfg.parallel.zero ? "reduce-scatter after the backward pass (ZeRO-1)"
                                                           : "one all-reduce after the backward pass"),
                       dp_step.collectives, dp_step.bytes);
  if (!ops->op_seconds().empty())
    log << op_breakdown(*ops, op_span_s) << "\n";
  return records;
}

}  // namespace kiln
