#include "train/trainer.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <tuple>

#include "kernels/cpu/blas.h"
#include "parallel/device_info.h"
#include "model/cpu_ops.h"
#include "model/cuda_ops.h"
#include "model/gpt.h"
#include "model/params.h"
#include "parallel/context.h"
#include "parallel/comm/nccl_comm.h"
#include "train/batch_source.h"
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
  const int64_t s = std::llround(seconds);
  return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

std::string format_bytes(int64_t bytes) { return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0)); }

// run.device = auto: cuda when a GPU is present, else cpu.
Device resolve_device(const TrainConfig& cfg) {
  if (cfg.device != Device::automatic) return cfg.device;
  return query_cuda().devices.empty() ? Device::cpu : Device::cuda;
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

DeviceTarget device_target(const TrainConfig& cfg, Device device) {
  constexpr int64_t kH100Bytes = 80LL << 30;
  DeviceTarget t;
  if (device == Device::cpu) {
    // Host memory is planned like a GPU's: against what the machine has free (or run.gpu_memory).
    const int64_t available = available_host_memory();
    t = {cfg.gpu_memory_bytes > 0 ? "cpu (run.gpu_memory)" : "cpu (MemAvailable)",
         cfg.gpu_memory_bytes > 0 ? cfg.gpu_memory_bytes : available, 0};
  } else if (device == Device::emu) {
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

std::unique_ptr<Ops> make_ops(const TrainConfig& cfg, Device device, const DeviceTarget& target) {
  if (device == Device::cpu) return make_cpu_ops();
  if (device == Device::emu) return emu::make_cuda_ops({cfg.deterministic, 0, target.memory_bytes});
  const CudaOpsOptions options{cfg.deterministic, detect_process().local_rank, 0};  // one GPU per process
#ifdef KILN_HAVE_CUDA
  return cuda::make_cuda_ops(options);
#else
  throw std::runtime_error("run.device = cuda: this kiln was built without CUDA");
#endif
}

std::string describe(const MemoryPlan& m) {
  return fmt::format(
      "parameters {}, master weights {}, gradients {}, AdamW moments {}, activations {}, logits {}, "
      "workspace {}, reserved {}: total {}",
      format_bytes(m.parameters), format_bytes(m.master), format_bytes(m.gradients), format_bytes(m.moments),
      format_bytes(m.activations), format_bytes(m.logits), format_bytes(m.workspace), format_bytes(m.reserved),
      format_bytes(m.total()));
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

// Each group's collectives and bytes in one step: what the tests check the layout by.
struct Traffic {
  int64_t collectives = 0, bytes = 0;
  Traffic operator-(const Traffic& o) const { return {collectives - o.collectives, bytes - o.bytes}; }
};
Traffic traffic(std::initializer_list<const Comm*> comms) {
  Traffic t;
  for (const Comm* c : comms)
    if (c) t.collectives += c->collectives(), t.bytes += c->bytes();
  return t;
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// What one optimizer step computed.
struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0, seconds = 0;
  bool finite = true;  // false: the update was skipped
};

// The process groups: tensor-parallel groups of consecutive ranks (one node's GPUs), data
// parallel across them.
struct ProcessGroups {
  ProcessGroups(const TrainConfig& cfg, Comm& world) : tp(cfg.parallel.tp) {
    if (world.size() % tp != 0)
      throw std::runtime_error(cfg.source + ": parallel.tp = " + std::to_string(tp) + " does not divide the " +
                               std::to_string(world.size()) + " ranks");
    tp_comm = world.split(world.rank() / tp, world.rank() % tp);
    dp_comm = world.split(world.rank() % tp, world.rank() / tp);
  }
  int tp;
  std::unique_ptr<Comm> tp_comm, dp_comm;
};

// One training run, cut into the stages train() calls in order: set up and plan, allocate,
// resume, then per step train_step, training_log and checkpoint_and_decide_exit (as Megatron's
// loop is cut), and finish.
class TrainingRun {
 public:
  // The process groups, the device, the data and the memory plan; nothing allocated yet.
  TrainingRun(const TrainConfig& cfg, std::ostream& rank0_log, Comm& comm, const PreemptionSignals& signals)
      : cfg_(cfg),
        comm_(comm),
        signals_(signals),
        silent_(&discard_),
        log_(comm.rank() == 0 ? rank0_log : silent_),
        groups_(cfg, comm),
        device_(resolve_device(cfg)),
        target_(device_target(cfg, device_)),
        model_cfg_(cfg.checkpoint.init_from.empty() ? cfg.model : fine_tuning_model(cfg)),
        data_(cfg, model_cfg_, cfg.vocab_size_set || !cfg.checkpoint.init_from.empty(), groups_.dp_comm->rank(),
              groups_.dp_comm->size()),
        plan_in_(plan_input()),
        plan_(plan_memory(plan_in_)),
        preempted_marker_(cfg.run_dir + "/preempted") {
    log_ << fmt::format("memory plan ({}, per rank): {}\n", device_name(device_), describe(plan_));
  }

  // --dry-run: the plan against the device, and what fits.
  void report_dry_run() const { kiln::report_dry_run(log_, plan_in_, target_); }

  // Checks the plan against the device, takes the run directory, and allocates the model, the
  // gradient reduction and the optimizer.
  void allocate() {
    const int B = cfg_.train.batch_size, T = cfg_.train.seq_len;
    if (target_.memory_bytes > 0 && plan_.total() > target_.memory_bytes)
      throw std::runtime_error(
          fmt::format("the model does not fit: {} x {} tokens with recompute {} needs {} ({}) but {} has {}; try "
                      "--train.recompute=block or a smaller --batch-size (kiln train --dry-run shows what fits)",
                      B, T, recompute_name(cfg_.train.recompute), format_bytes(plan_.total()), describe(plan_),
                      target_.name, format_bytes(target_.memory_bytes)));
    // One run at a time in a run directory: rank 0 holds its lock for the job, and under it clears
    // what killed saves left behind.
    if (comm_.rank() == 0) {
      lock_.emplace(cfg_.run_dir);
      if (const int stale = remove_stale_saves(cfg_.run_dir))
        log_ << fmt::format("removed {} unfinished save(s) (step_*.tmp) left by a killed run\n", stale);
    }
    ops_ = make_ops(cfg_, device_, target_);
    Comm& tp_comm = *groups_.tp_comm;
    Comm& dp_comm = *groups_.dp_comm;
    // A GPU's activations and gradients are reduced over NCCL; host scalars (loss, token counts)
    // stay on MPI. The emulator's device memory is the host's: MPI reaches it.
#ifdef KILN_HAVE_CUDA
    if (device_ == Device::cuda && dp_comm.size() > 1)
      gradient_comm_ = make_nccl_comm(dp_comm, cfg_.parallel.timeout_s);
    if (device_ == Device::cuda && groups_.tp > 1) activation_comm_ = make_nccl_comm(tp_comm, cfg_.parallel.timeout_s);
#endif
    // ZeRO-1 shards the flat buffers over the data-parallel ranks (the master weights too).
    const bool zero1 = cfg_.parallel.zero == 1 && dp_comm.size() > 1;
    const ZeroSharding zero = zero1 ? ZeroSharding{dp_comm.size(), dp_comm.rank()} : ZeroSharding{};
    model_.emplace(model_cfg_, *ops_, B, T, TensorParallel{groups_.tp, tp_comm.rank()},
                   activation_comm_ ? activation_comm_.get() : &tp_comm, cfg_.train.recompute, zero);
    model_->init_weights(cfg_.train.seed);
    data_parallel_.emplace(*model_, gradient_comm_ ? *gradient_comm_ : dp_comm, tp_comm, cfg_.parallel.zero == 1,
                           cfg_.parallel.bucket_mb * 1e6);
    optimizer_.emplace(*model_, cfg_.optim, data_parallel_->shard_first(), data_parallel_->shard_count());
    ckpt_rank_ = {groups_.tp, tp_comm.rank(), dp_comm.size(), dp_comm.rank(), zero1};
  }

  // Resumes from the run directory's latest checkpoint (or checkpoint.resume), whatever layout
  // saved it, or takes a fine-tuning run's parameters. False when the run has nothing left to do.
  bool resume_or_initialize() {
    const std::string resume =
        cfg_.checkpoint.resume.empty() ? latest_checkpoint(cfg_.run_dir) : resolve_checkpoint(cfg_.checkpoint.resume);
    if (comm_.rank() == 0) {
      if (resume.empty() && !cfg_.train.eval_only) check_fresh_start(cfg_.run_dir, cfg_.settings, cfg_.force);
      if (!cfg_.train.eval_only) record_settings(cfg_.run_dir, cfg_.settings);
    }
    if (!resume.empty()) {
      if (const std::string changed = describe_changed_settings(checkpoint_info(resume).settings, cfg_.settings);
          !changed.empty())
        log_ << "resuming with changed settings:\n" << changed;
      const auto load_start = Clock::now();
      const TrainingState state = load_checkpoint(resume, *model_, *optimizer_);
      data_.restore_position(state);
      first_step_ = state.step;
      log_ << fmt::format("resumed from {} at step {} (loaded in {:.2f} s)\n", resume, first_step_,
                          seconds_since(load_start));
      if (first_step_ >= cfg_.train.steps && resume == latest_checkpoint(cfg_.run_dir) && !cfg_.train.eval_only) {
        log_ << fmt::format("run already at step {} of {}: nothing to do (raise --max-steps to train further)\n",
                            first_step_, cfg_.train.steps);
        return false;
      }
    } else if (!cfg_.checkpoint.init_from.empty()) {
      const std::string from = resolve_checkpoint(cfg_.checkpoint.init_from);
      load_parameters(from, *model_);
      log_ << fmt::format("parameters from {} (optimizer, data and schedule start afresh)\n", from);
    }
    if (comm_.rank() == 0) std::filesystem::remove(preempted_marker_);  // this is the requeued job
    return true;
  }

  // --eval-only: the resumed (or initial) model on the validation split.
  StepRecord evaluate_only() {
    if (!data_.validation())
      throw std::runtime_error(cfg_.data.path +
                               ": no validation split to evaluate (prepare it with --val-fraction or "
                               "--val-docs)");
    const auto eval_start = Clock::now();
    const double val_loss = evaluate(*model_, *data_.validation(), cfg_.train.eval_batches);
    log_ << fmt::format("eval only, at step {}: val loss {:.4f}, perplexity {:.2f} ({:.2f} s)\n", first_step_, val_loss,
                        std::exp(val_loss), seconds_since(eval_start));
    return StepRecord{first_step_, val_loss, 0, 0, 0, 0, val_loss};
  }

  // A signal during start-up: nothing new to save; the marker has the job requeued.
  bool preempted_during_start_up() {
    if (!signal_on_any_rank()) return false;
    if (comm_.rank() == 0) std::ofstream(preempted_marker_) << first_step_ << "\n";
    log_ << fmt::format(
        "preempted (a signal) before the first step: nothing new to save, stopping at step {}; {} "
        "tells the launcher to requeue\n",
        first_step_, preempted_marker_);
    return true;
  }

  // The metrics files, the background checkpoint writer, and the banner.
  void start_logging() {
    if (comm_.rank() == 0) {
      metrics_.emplace(cfg_.run_dir, first_step_);  // rows past the checkpoint are dropped
      tensorboard_.emplace(cfg_.run_dir);
    }
    // Background saves: a communicator of their own, so their collectives run beside training's.
    if (cfg_.checkpoint.every > 0 && cfg_.checkpoint.async) {
      checkpoint_comm_ = comm_.split(0, comm_.rank());
      writer_.emplace(*checkpoint_comm_);
    }
    snapshot_mb_ = (snapshot_bytes(model_cfg_, ckpt_rank_) + (1 << 20) - 1) >> 20;
    const int B = cfg_.train.batch_size, T = cfg_.train.seq_len;
    model_params_ = ParamLayout(model_cfg_, {1, 0}).total();
    tokens_per_step_ = (int64_t)B * T * cfg_.train.grad_accum * groups_.dp_comm->size();
    step_flops_ = flops_per_token(model_params_, cfg_.model.n_layer, T, cfg_.model.n_embd) * tokens_per_step_;
    peak_flops_ = target_.peak_tflops * 1e12 * comm_.size();
    log_banner();
  }

  int64_t first_step() const { return first_step_; }

  // Forward and backward over the micro-batches, the gradient reduction and norm, and the update
  // (skipped when the loss or the norm is not finite and train.nonfinite allows it).
  StepResult train_step(int64_t step) {
    const auto start = Clock::now();
    const Traffic tp_before = tp_traffic(), dp_before = dp_traffic();
    for (Comm* c : {&comm_, groups_.tp_comm.get(), groups_.dp_comm.get(), gradient_comm_.get(), activation_comm_.get()})
      if (c) c->set_context(fmt::format("step {}", step + 1));
    Comm& dp_comm = *groups_.dp_comm;
    model_->zero_grads();
    StepResult r;
    const int B = cfg_.train.batch_size, T = cfg_.train.seq_len;
    for (int micro = 0; micro < cfg_.train.grad_accum; micro++) {
      const Batch& batch = data_.next();
      // This rank's share of the global batch's unmasked tokens weights its mean loss, so that the
      // sum over ranks is the global mean (1 exactly on one rank).
      const int64_t local_tokens = unmasked(batch);
      int64_t global_tokens = local_tokens;
      dp_comm.all_reduce_sum(std::span<int64_t>(&global_tokens, 1));
      const double share = global_tokens > 0 ? (double)local_tokens / (double)global_tokens : 0.0;
      const bool last_micro = micro + 1 == cfg_.train.grad_accum;  // its backward finishes the gradients
      r.loss +=
          share * model_->forward_backward(batch.inputs, batch.targets, B, T, (float)(share / cfg_.train.grad_accum),
                                           last_micro ? data_parallel_->grads_ready() : GPT::GradsReady{});
    }
    r.loss /= cfg_.train.grad_accum;
    dp_comm.all_reduce_sum(std::span<double>(&r.loss, 1));  // the tensor-parallel ranks have the same
    r.grad_norm = data_parallel_->reduce_gradients();
    r.lr = learning_rate(cfg_.optim, step, cfg_.train.steps);
    // Every rank sees the same loss and norm, so all stop or skip together.
    r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
    if (!r.finite && cfg_.train.nonfinite == NonFinite::stop)
      throw std::runtime_error(
          fmt::format("step {}: the loss is {} and the gradient norm {}: stopping "
                      "(train.nonfinite = skip would skip such steps)",
                      step + 1, r.loss, r.grad_norm));
    if (r.finite) {
      optimizer_->step(r.lr, ref::clip_factor(r.grad_norm, cfg_.optim.grad_clip), data_parallel_->optimizer_grads());
      data_parallel_->gather_parameters();
    } else {
      skipped_++;
      log_ << fmt::format("step {}: loss {}, gradient norm {}: step skipped ({} so far)\n", step + 1, r.loss,
                          r.grad_norm, skipped_);
    }
    tp_step_ = tp_traffic() - tp_before;
    dp_step_ = dp_traffic() - dp_before;
    r.seconds = seconds_since(start);
    elapsed_s_ += r.seconds;
    op_span_s_ += r.seconds;
    return r;
  }

  // The step's evaluation (when due), metrics rows, progress line and sample.
  StepRecord training_log(int64_t step, const StepResult& r) {
    StepRecord rec{step + 1, r.loss, r.lr, r.grad_norm, r.seconds * 1e3, tokens_per_step_ / r.seconds, std::nullopt};
    const bool last = step + 1 == cfg_.train.steps;
    const auto eval_start = Clock::now();
    if (data_.validation() && ((step + 1) % cfg_.train.eval_every == 0 || last))
      rec.val_loss = evaluate(*model_, *data_.validation(), cfg_.train.eval_batches);
    op_span_s_ += seconds_since(eval_start);

    const double flops = step_flops_ / r.seconds;
    nlohmann::json row = {{"step", rec.step},           {"loss", rec.loss}, {"lr", rec.lr},
                          {"grad_norm", rec.grad_norm}, {"ms", rec.ms},     {"tokens_per_s", rec.tokens_per_s}};
    const std::string mfu = peak_flops_ > 0 ? fmt::format("{:.1f}%", 100.0 * flops / peak_flops_) : "-";
    if (peak_flops_ > 0) row["mfu"] = flops / peak_flops_;
    if (!r.finite) row["skipped"] = true;
    if (rec.val_loss) row["val_loss"] = *rec.val_loss;
    if (metrics_) metrics_->write(row);
    if (tensorboard_) {
      std::vector<std::pair<std::string, double>> scalars = {{"train/loss", r.loss},
                                                             {"train/lr", r.lr},
                                                             {"train/grad_norm", r.grad_norm},
                                                             {"perf/tokens_per_s", rec.tokens_per_s},
                                                             {"train/skipped_steps", (double)skipped_}};
      if (peak_flops_ > 0) scalars.emplace_back("perf/mfu", flops / peak_flops_);
      if (rec.val_loss) scalars.emplace_back("val/loss", *rec.val_loss);
      tensorboard_->write_scalars(rec.step, scalars);
    }

    if ((step + 1) % cfg_.train.log_every == 0 || last || rec.val_loss) {
      const double eta = elapsed_s_ / (double)(step + 1 - first_step_) * (double)(cfg_.train.steps - step - 1);
      log_ << fmt::format(
          "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.1f} ms | {:.0f} tok/s | "
          "{:.2f} GFLOP/s | MFU {} | ETA {}",
          rec.step, std::to_string(cfg_.train.steps).size(), cfg_.train.steps, r.loss, r.lr, r.grad_norm, rec.ms,
          rec.tokens_per_s, flops / 1e9, mfu, format_duration(eta));
      if (rec.val_loss) log_ << fmt::format(" | val loss {:.4f}", *rec.val_loss);
      log_ << std::endl;
    }
    if (cfg_.train.sample_every > 0 && (step + 1) % cfg_.train.sample_every == 0 && data_.tokenizer() &&
        groups_.tp == 1) {
      const auto sample_start = Clock::now();
      const std::vector<int32_t> text = sample_tokens(*model_, data_.tokenizer()->encode(cfg_.train.sample_prompt),
                                                      cfg_.train.sample_tokens, cfg_.train.seed + step);
      log_ << fmt::format("sample at step {}: {:?}\n", step + 1,
                          cfg_.train.sample_prompt + data_.tokenizer()->decode(text));
      op_span_s_ += seconds_since(sample_start);
    }
    return rec;
  }

  // Saves when due (every checkpoint.every steps, at the end, and on a signal on any rank), and
  // says whether to stop now: true after a signal, with the marker that has the job requeued.
  bool checkpoint_and_decide_exit(int64_t step) {
    const bool preempt = signal_on_any_rank();
    const bool last = step + 1 == cfg_.train.steps;
    // Every run saves at its end, so that generate, eval and init-from have something to read.
    if (!preempt && !last && !(cfg_.checkpoint.every > 0 && (step + 1) % cfg_.checkpoint.every == 0)) return false;
    TrainingState state;
    state.step = step + 1;
    data_.save_position(state);
    finish_background_save();  // one snapshot in host memory at a time
    const auto save_start = Clock::now();
    try {
      if (writer_ && !preempt && snapshot_mb_ <= cfg_.checkpoint.async_max_mb) {
        writer_->start(cfg_.run_dir, snapshot_checkpoint(cfg_.settings, *model_, *optimizer_, ckpt_rank_, state),
                       cfg_.checkpoint.keep);
        log_ << fmt::format("step {}: checkpoint snapshot ({} MiB) taken in {:.2f} s, writing in the background\n",
                            step + 1, snapshot_mb_, seconds_since(save_start));
      } else {
        const std::string dir = save_checkpoint(cfg_.run_dir, cfg_.settings, *model_, *optimizer_, ckpt_rank_, state,
                                                comm_, cfg_.checkpoint.keep);
        log_ << fmt::format("saved {} in {:.2f} s\n", dir, seconds_since(save_start));
      }
    } catch (const std::exception& e) {
      if (cfg_.checkpoint.on_error == OnSaveError::stop || preempt) throw;
      log_ << fmt::format("{}; training goes on (checkpoint.on_error = continue)\n", e.what());
    }
    if (!preempt) return false;
    // The save above waited for any background one, then saved in place.
    if (comm_.rank() == 0) std::ofstream(preempted_marker_) << step + 1 << "\n";
    log_ << fmt::format("preempted (a signal): saved at step {}, stopping; {} tells the launcher to requeue\n",
                        step + 1, preempted_marker_);
    return true;
  }

  // The last save finished, a resumed run's state saved where it ends, and the run's summary.
  void finish() {
    finish_background_save();
    // Resumed where the run ends: the state is saved in this run directory, in this job's layout
    // (so `--resume OTHER --max-steps STEP` copies, and reshards, a checkpoint).
    if (first_step_ == cfg_.train.steps &&
        latest_checkpoint(cfg_.run_dir) != cfg_.run_dir + fmt::format("/step_{:08}", first_step_)) {
      TrainingState state;
      state.step = first_step_;
      data_.save_position(state);
      log_ << fmt::format("no steps left: saved {}\n",
                          save_checkpoint(cfg_.run_dir, cfg_.settings, *model_, *optimizer_, ckpt_rank_, state, comm_,
                                          cfg_.checkpoint.keep));
    }
    if (skipped_ > 0) log_ << fmt::format("{} step(s) skipped for a non-finite loss or gradient norm\n", skipped_);
    if (cfg_.train.steps > first_step_)
      log_ << fmt::format("done: {} steps in {}, {:.0f} tokens/s\n", cfg_.train.steps - first_step_,
                          format_duration(elapsed_s_),
                          tokens_per_step_ * (cfg_.train.steps - first_step_) / elapsed_s_);
    if (groups_.tp > 1) {
      check_replicas_agree(*model_, *groups_.tp_comm);
      log_ << fmt::format(
          "tensor parallel over {} ranks: {} collectives ({} bytes) per step; replicated parameters "
          "bitwise equal\n",
          groups_.tp, tp_step_.collectives, tp_step_.bytes);
    }
    if (groups_.dp_comm->size() > 1)
      log_ << fmt::format("gradient reduction over {} ranks: {}; {} collectives ({} bytes) per step\n",
                          groups_.dp_comm->size(),
                          data_parallel_->buckets_last_step() > 0
                              ? fmt::format("{} bucket(s) per step, started during the backward pass",
                                            data_parallel_->buckets_last_step())
                              : std::string(cfg_.parallel.zero ? "reduce-scatter after the backward pass (ZeRO-1)"
                                                               : "one all-reduce after the backward pass"),
                          dp_step_.collectives, dp_step_.bytes);
    if (!ops_->op_seconds().empty()) log_ << op_breakdown(*ops_, op_span_s_) << "\n";
  }

 private:
  // Each group's traffic so far, over MPI and (on GPUs) NCCL.
  Traffic tp_traffic() const { return traffic({groups_.tp_comm.get(), activation_comm_.get()}); }
  Traffic dp_traffic() const { return traffic({groups_.dp_comm.get(), gradient_comm_.get()}); }

  PlanInput plan_input() const {
    PlanInput in;
    in.model = model_cfg_;
    in.backend = device_ == Device::cpu ? PlanBackend::cpu : PlanBackend::cuda;
    in.deterministic = cfg_.deterministic;
    in.micro_batch = cfg_.train.batch_size;
    in.seq_len = cfg_.train.seq_len;
    in.gpus = comm_.size();
    in.tp = groups_.tp;
    in.zero1 = cfg_.parallel.zero == 1;
    in.recompute = cfg_.train.recompute;
    if (device_ == Device::emu) in.gpu.reserved_bytes = 0;  // no CUDA context to make room for
    return in;
  }

  // Whether any rank has had a signal: the ranks see signals at different moments, and must agree.
  bool signal_on_any_rank() {
    int64_t received = signals_.received() != 0;
    if (comm_.size() > 1) comm_.all_reduce_sum(std::span<int64_t>(&received, 1));
    return received > 0;
  }

  // Waits for the save in flight, at the same step on every rank (its outcome is the same on all).
  void finish_background_save() {
    if (!writer_) return;
    try {
      if (const auto saved = writer_->wait())
        log_ << fmt::format("saved {} ({:.2f} s writing in the background)\n", saved->first, saved->second);
    } catch (const std::exception& e) {
      if (cfg_.checkpoint.on_error == OnSaveError::stop) throw;
      log_ << fmt::format("{}; training goes on (checkpoint.on_error = continue)\n", e.what());
    }
  }

  void log_banner() {
    const int B = cfg_.train.batch_size, T = cfg_.train.seq_len;
    const int64_t params = model_->layout().total();  // this tensor-parallel rank's
    log_ << fmt::format(
        "kiln train: model {} ({} layers, {} heads, width {}, vocab {} padded to {}), {:.2f}M parameters\n",
        cfg_.preset, model_cfg_.n_layer, model_cfg_.n_head, model_cfg_.n_embd, model_cfg_.vocab_size,
        model_cfg_.padded_vocab(), model_->layout().trained() / 1e6);
    log_ << fmt::format("data: {}; batch {}x{} x{} accum x{} data-parallel ranks (TP {}) = {} tokens/step, {}\n",
                        data_.describe(cfg_.data.path), B, T, cfg_.train.grad_accum, groups_.dp_comm->size(),
                        groups_.tp, tokens_per_step_,
                        ops_->name() == "cpu" ? fmt::format("{} threads, {}", omp_get_max_threads(), cpu::blas_name())
                                              : fmt::format("{} backend on {}{}", ops_->name(), target_.name,
                                                            cfg_.deterministic ? ", deterministic" : ""));
    if (cfg_.train.eval_every > 0 && !data_.validation())
      log_ << fmt::format(
          "note: train.eval_every = {}, but {} has no validation split, so nothing is evaluated "
          "(prepare the data with --val-fraction or --val-docs)\n",
          cfg_.train.eval_every, cfg_.data.path == "random" ? "random data" : cfg_.data.path);
    const int64_t allocated = model_->memory().total() + optimizer_->state_bytes() + data_parallel_->staging_bytes();
    const int64_t planned = plan_.total() - plan_.reserved;
    log_ << fmt::format("allocated {} on rank 0 ({})\n", format_bytes(allocated),
                        allocated == planned
                            ? "the plan, to the byte"
                            : fmt::format("the plan said {}: {:+} bytes", format_bytes(planned), allocated - planned));
    log_ << fmt::format("optimizer state floats on rank 0: {}\n", optimizer_->state_floats());
    log_ << fmt::format("MFU: model FLOPs 6 N + 12 L T C per token (N = {} parameters) against {}\n", model_params_,
                        peak_flops_ > 0 ? fmt::format("a peak of {} TFLOP/s per device", target_.peak_tflops)
                                        : std::string("no known peak (set train.peak_tflops)"));
    if (groups_.tp > 1) log_ << fmt::format("parameters on rank 0: {} of the model's {}\n", params, model_params_);
    if (metrics_)
      log_ << "metrics: " << metrics_->path() << " and " << tensorboard_->path() << " (tensorboard --logdir)\n";
  }

  const TrainConfig& cfg_;
  Comm& comm_;
  const PreemptionSignals& signals_;
  NullBuffer discard_;
  std::ostream silent_;
  std::ostream& log_;  // rank 0's log; the others discard theirs
  ProcessGroups groups_;
  Device device_;
  DeviceTarget target_;
  GPTConfig model_cfg_;
  BatchSource data_;
  PlanInput plan_in_;
  MemoryPlan plan_;
  std::string preempted_marker_;
  // allocate()
  std::optional<RunDirectoryLock> lock_;
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<Comm> gradient_comm_, activation_comm_;
  std::optional<GPT> model_;
  std::optional<DataParallel> data_parallel_;
  std::optional<AdamW> optimizer_;
  CheckpointRank ckpt_rank_{};
  // resume_or_initialize() and start_logging()
  int64_t first_step_ = 0;
  std::optional<MetricsWriter> metrics_;
  std::optional<TensorBoardWriter> tensorboard_;
  std::unique_ptr<Comm> checkpoint_comm_;
  std::optional<AsyncCheckpointWriter> writer_;
  int64_t snapshot_mb_ = 0, model_params_ = 0, tokens_per_step_ = 0;
  double step_flops_ = 0, peak_flops_ = 0;
  // the steps
  double elapsed_s_ = 0;       // training steps only (for tokens/s)
  double op_span_s_ = 0;       // what the op timers cover: steps, evaluations and samples, not saves
  Traffic tp_step_, dp_step_;  // each group's traffic in the last step
  int64_t skipped_ = 0;
};

}  // namespace

double flops_per_token(int64_t params, int n_layer, int seq_len, int n_embd) {
  return 6.0 * (double)params + 12.0 * n_layer * (double)seq_len * n_embd;
}

std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& rank0_log, Comm& comm) {
  // First of all, so that a signal during a long start-up (a checkpoint load) still stops the run
  // cleanly, with the marker that has it requeued.
  const PreemptionSignals signals;
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
  if (comm.size() > 1) check_ranks_agree(comm, binary_hash(), cfg.settings);
  TrainingRun run(cfg, rank0_log, comm, signals);
  if (cfg.dry_run) {
    run.report_dry_run();
    return {};
  }
  run.allocate();
  if (!run.resume_or_initialize()) return {};
  if (cfg.train.eval_only) return {run.evaluate_only()};
  if (run.preempted_during_start_up()) return {};
  run.start_logging();
  std::vector<StepRecord> records;
  for (int64_t step = run.first_step(); step < cfg.train.steps; step++) {
    const StepResult result = run.train_step(step);
    records.push_back(run.training_log(step, result));
    if (run.checkpoint_and_decide_exit(step)) return records;
  }
  run.finish();
  return records;
}

}  // namespace kiln
