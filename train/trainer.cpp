#include "train/trainer.h"

#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <random>

#include "data/byte_tokenizer.h"
#include "data/text_corpus.h"
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

// Validation loss over a fixed set of batches: the same windows at every evaluation.
double evaluate(GPT& model, const TextCorpus& corpus, const TrainConfig& cfg, Batch& batch) {
  std::mt19937_64 rng(cfg.train.seed ^ 0x5eedULL);
  double sum = 0;
  for (int i = 0; i < cfg.train.eval_batches; i++) {
    corpus.sample(batch, true, rng);
    sum += model.forward(batch.inputs, batch.targets, batch.B, batch.T);
  }
  return sum / cfg.train.eval_batches;
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
  if (cfg.model.vocab_size < ByteTokenizer::kVocabSize)
    throw std::runtime_error(cfg.source + ": model.vocab_size = " + std::to_string(cfg.model.vocab_size) +
                             " is smaller than the byte tokenizer's " + std::to_string(ByteTokenizer::kVocabSize));
  std::unique_ptr<Ops> ops = make_ops(cfg);
  const TextCorpus corpus(cfg.data.path, cfg.data.val_fraction, cfg.train.seq_len);
  const bool eval_enabled = cfg.train.eval_every > 0 && cfg.train.eval_batches > 0 && corpus.val_tokens() > 0;
  MetricsWriter metrics(cfg.run_dir);

  const int B = cfg.train.batch_size, T = cfg.train.seq_len;
  GPT model(cfg.model, *ops, B, T);
  model.init_weights(cfg.train.seed);
  AdamW optimizer(model, cfg.optim);

  const int64_t params = model.layout().total();
  const int64_t tokens_per_step = (int64_t)B * T * cfg.train.grad_accum;
  const double step_flops = flops_per_token(params, cfg.model.n_layer, T, cfg.model.n_embd) * tokens_per_step;
  log << fmt::format("kiln train: model {} ({} layers, {} heads, width {}, vocab {} padded to {}), {:.2f}M parameters\n",
                     cfg.preset, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.vocab_size,
                     cfg.model.padded_vocab(), model.layout().trained() / 1e6);
  log << fmt::format("data: {} ({} train / {} val tokens), batch {}x{} x{} accum = {} tokens/step, {} threads\n",
                     cfg.data.path, corpus.train_tokens(), corpus.val_tokens(), B, T, cfg.train.grad_accum,
                     tokens_per_step, omp_get_max_threads());
  log << fmt::format("memory plan (device {}): params {}, grads {}, AdamW moments {}, activations {}\n", ops->name(),
                     format_bytes(params * 4), format_bytes(params * 4), format_bytes(params * 8),
                     format_bytes(model.activation_bytes()));
  log << "metrics: " << metrics.path() << "\n";

  std::mt19937_64 rng(cfg.train.seed);
  Batch batch{B, T, {}, {}}, eval_batch{B, T, {}, {}};
  std::vector<StepRecord> records;
  double elapsed_s = 0;
  for (int64_t step = 0; step < cfg.train.steps; step++) {
    const auto start = Clock::now();
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < cfg.train.grad_accum; micro++) {
      corpus.sample(batch, false, rng);
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
      rec.val_loss = evaluate(model, corpus, cfg, eval_batch);

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
