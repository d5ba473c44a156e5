#include "train/trainer.h"

#include <fmt/format.h>
#include <omp.h>

#include <chrono>

#include "data/dataset.h"
#include "data/loader.h"
#include "kernels/device_info.h"
#include "model/cpu_ops.h"
#include "model/gpt.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

std::string format_duration(double seconds) {
  const auto s = (int64_t)(seconds + 0.5);
  return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

std::string format_bytes(int64_t bytes) { return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0)); }

// Targets whose loss-mask entry is 0 (prompt tokens in fine-tuning data) are ignored by the loss.
void apply_loss_mask(Batch& batch) {
  for (size_t i = 0; i < batch.loss_mask.size(); i++)
    if (!batch.loss_mask[i]) batch.targets[i] = -1;
}

// Mean validation loss over the validation split in its fixed order (the first `eval_batches`
// batches of it, if that is not 0), weighting each batch by its rows.
double evaluate(GPT& model, DataLoader& val, int max_batches) {
  val.restore({});
  double sum = 0;
  int64_t rows = 0;
  int batches = 0;
  for (const Batch* b; (max_batches == 0 || batches < max_batches) && (b = val.next()); batches++) {
    Batch masked = *b;
    apply_loss_mask(masked);
    sum += model.forward(masked.inputs, masked.targets, masked.B, masked.T) * masked.B;
    rows += masked.B;
  }
  return rows ? sum / (double)rows : 0.0;
}

// The backend for run.device. Only the CPU backend exists so far; asking for CUDA says why not.
std::unique_ptr<Ops> make_ops(const TrainConfig& cfg) {
  if (cfg.device == "cpu") return make_cpu_ops();
  if (cfg.device == "cuda") {
    const CudaInfo cuda = query_cuda();
    if (cuda.devices.empty()) throw std::runtime_error("run.device = cuda: " + cuda.status);
  }
  throw std::runtime_error("run.device = " + cfg.device + ": the CUDA backend is not implemented yet; use cpu");
}

}  // namespace

double flops_per_token(int64_t params, int n_layer, int seq_len, int n_embd) {
  return 6.0 * (double)params + 12.0 * n_layer * (double)seq_len * n_embd;
}

std::vector<StepRecord> train(const TrainConfig& cfg, std::ostream& log) {
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
  std::unique_ptr<Ops> ops = make_ops(cfg);
  const Dataset data = Dataset::open(cfg.data.path);
  GPTConfig model_cfg = cfg.model;
  if (!cfg.vocab_size_set) model_cfg.vocab_size = (int)data.meta.vocab_size;
  if (model_cfg.vocab_size != data.meta.vocab_size)
    throw std::runtime_error(cfg.source + ": model.vocab_size = " + std::to_string(model_cfg.vocab_size) +
                             " differs from the vocabulary of " + cfg.data.path + " (" +
                             std::to_string(data.meta.vocab_size) + ", tokenizer " + data.meta.tokenizer + ")");
  const int B = cfg.train.batch_size, T = cfg.train.seq_len;
  DataLoader loader(data.train, {B, T, cfg.train.seed, 0, 1, true, 4});
  const bool eval_enabled = cfg.train.eval_every > 0 && data.val.num_tokens > 0;
  std::unique_ptr<DataLoader> val_loader;
  if (eval_enabled) val_loader = std::make_unique<DataLoader>(data.val, LoaderOptions{B, T, cfg.train.seed, 0, 1, false, 4});
  MetricsWriter metrics(cfg.run_dir);

  GPT model(model_cfg, *ops, B, T);
  model.init_weights(cfg.train.seed);
  AdamW optimizer(model, cfg.optim);

  const int64_t params = model.layout().total();
  const int64_t tokens_per_step = (int64_t)B * T * cfg.train.grad_accum;
  const double step_flops = flops_per_token(params, cfg.model.n_layer, T, cfg.model.n_embd) * tokens_per_step;
  log << fmt::format("kiln train: model {} ({} layers, {} heads, width {}, vocab {} padded to {}), {:.2f}M parameters\n",
                     cfg.preset, model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.vocab_size,
                     model_cfg.padded_vocab(), model.layout().trained() / 1e6);
  log << fmt::format("data: {} ({}, {} train / {} val tokens), batch {}x{} x{} accum = {} tokens/step, "
                     "{} steps/epoch, {} threads\n",
                     cfg.data.path, data.meta.tokenizer, data.train.num_tokens, data.val.num_tokens, B, T,
                     cfg.train.grad_accum, tokens_per_step, loader.batches_per_epoch() / cfg.train.grad_accum,
                     omp_get_max_threads());
  log << fmt::format("memory plan (device {}): params {}, grads {}, AdamW moments {}, activations {}\n", ops->name(),
                     format_bytes(params * 4), format_bytes(params * 4), format_bytes(params * 8),
                     format_bytes(model.activation_bytes()));
  log << "metrics: " << metrics.path() << "\n";

  std::vector<StepRecord> records;
  double elapsed_s = 0;
  for (int64_t step = 0; step < cfg.train.steps; step++) {
    const auto start = Clock::now();
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < cfg.train.grad_accum; micro++) {
      Batch batch = *loader.next();
      apply_loss_mask(batch);
      loss += model.forward_backward(batch.inputs, batch.targets, B, T, 1.0f / cfg.train.grad_accum);
    }
    loss /= cfg.train.grad_accum;
    const double grad_norm = clip_grad_norm(*ops, model.grads(), cfg.optim.grad_clip);
    const double lr = learning_rate(cfg.optim, step, cfg.train.steps);
    optimizer.step(lr);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    elapsed_s += seconds;

    StepRecord rec{step + 1, loss, lr, grad_norm, seconds * 1e3, tokens_per_step / seconds, std::nullopt};
    const bool last = step + 1 == cfg.train.steps;
    if (eval_enabled && ((step + 1) % cfg.train.eval_every == 0 || last))
      rec.val_loss = evaluate(model, *val_loader, cfg.train.eval_batches);

    nlohmann::json row = {{"step", rec.step}, {"loss", rec.loss}, {"lr", rec.lr}, {"grad_norm", rec.grad_norm},
                          {"ms", rec.ms}, {"tokens_per_s", rec.tokens_per_s}};
    const std::string mfu =
        cfg.train.peak_tflops > 0 ? fmt::format("{:.1f}%", 100.0 * step_flops / seconds / (cfg.train.peak_tflops * 1e12))
                                  : "-";
    if (cfg.train.peak_tflops > 0) row["mfu"] = step_flops / seconds / (cfg.train.peak_tflops * 1e12);
    if (rec.val_loss) row["val_loss"] = *rec.val_loss;
    metrics.write(row);

    if ((step + 1) % cfg.train.log_every == 0 || last || rec.val_loss) {
      const double eta = elapsed_s / (double)(step + 1) * (double)(cfg.train.steps - step - 1);
      log << fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.1f} ms | {:.0f} tok/s | "
                         "{:.2f} GFLOP/s | MFU {} | ETA {}",
                         rec.step, std::to_string(cfg.train.steps).size(), cfg.train.steps, loss, lr, grad_norm,
                         rec.ms, rec.tokens_per_s, step_flops / seconds / 1e9, mfu, format_duration(eta));
      if (rec.val_loss) log << fmt::format(" | val loss {:.4f}", *rec.val_loss);
      log << std::endl;
    }
    records.push_back(rec);
  }
  log << fmt::format("done: {} steps in {}, {:.0f} tokens/s\n", cfg.train.steps, format_duration(elapsed_s),
                     tokens_per_step * cfg.train.steps / elapsed_s);
  return records;
}

}  // namespace kiln
