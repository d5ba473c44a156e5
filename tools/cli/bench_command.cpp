// kiln bench data: tokenizer and loader throughput; kiln bench kernels: GPU kernel timings (real devices only).
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "kernels/bench/bench.h"
#include "kernels/cpu/blas.h"
#include "parallel/device_info.h"
#include "tools/cli/commands.h"

namespace kiln::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::string text, separator = "\n\n", tokenizer = "gpt2", tokenizer_dir, dataset, json;
  int batch = 8, seq_len = 1024, batches = 500;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// MB/s of text encoded with `threads` threads over the documents, from a cold word cache.
double tokenizer_mb_per_s(const BenchOptions& o, const std::vector<std::string>& docs, int64_t bytes, int threads) {
  const std::unique_ptr<Tokenizer> tok = make_tokenizer(o.tokenizer, o.tokenizer_dir);
  int64_t tokens = 0;
  const auto start = Clock::now();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16) reduction(+ : tokens)
  for (size_t i = 0; i < docs.size(); i++) tokens += (int64_t)tok->encode(docs[i]).size();
  const double s = seconds_since(start);
  fmt::print("tokenizer {}, {} thread(s): {:.1f} MB/s ({:.2f} M tokens/s, {} tokens)\n", o.tokenizer, threads,
             bytes / 1e6 / s, tokens / 1e6 / s, tokens);
  return bytes / 1e6 / s;
}

void bench_data(const BenchOptions& o) {
  nlohmann::json out;
  if (!o.text.empty()) {
    std::ifstream in(o.text, std::ios::binary);
    if (!in) throw std::runtime_error(o.text + ": cannot open (--text)");
    std::stringstream buf;
    buf << in.rdbuf();
    const std::string text = buf.str();
    std::vector<std::string> docs;
    for (size_t at = 0; at < text.size();) {
      const size_t end = std::min(text.find(o.separator, at), text.size());
      docs.push_back(text.substr(at, end - at));
      at = end + o.separator.size();
    }
    out["tokenizer"] = o.tokenizer;
    out["text_bytes"] = text.size();
    out["tokenizer_mb_per_s_1_thread"] = tokenizer_mb_per_s(o, docs, (int64_t)text.size(), 1);
    const int all = omp_get_max_threads();
    out["tokenizer_threads"] = all;
    out["tokenizer_mb_per_s_all_threads"] = tokenizer_mb_per_s(o, docs, (int64_t)text.size(), all);
  }
  if (!o.dataset.empty()) {
    const Dataset ds = Dataset::open(o.dataset);
    DataLoader loader(ds.train, {o.batch, o.seq_len, 1, 0, 1, true, 4});
    loader.next();  // start-up (opening, first prefetch) is not what is measured
    const auto start = Clock::now();
    int64_t tokens = 0;
    for (int i = 0; i < o.batches; i++) tokens += (int64_t)loader.next()->B * o.seq_len;
    const double s = seconds_since(start);
    fmt::print("loader {}: batch {}x{}, random order: {:.2f} M tokens/s ({:.3f} ms/batch)\n", o.dataset, o.batch,
               o.seq_len, tokens / 1e6 / s, s / o.batches * 1e3);
    out["loader_tokens_per_s"] = tokens / s;
    out["loader_batch"] = {o.batch, o.seq_len};
  }
  if (!o.json.empty()) std::ofstream(o.json) << out.dump(2) << '\n';
}

struct KernelsOptions {
  std::string device = "cuda", json;
  bool functional_check = false;
  KernelBenchOptions bench;
};

KernelBenchReport run_on_gpu([[maybe_unused]] const KernelBenchOptions& o) {
  const CudaInfo cuda = query_cuda();
#ifdef KILN_HAVE_CUDA
  if (!cuda.devices.empty()) return cuda::run_kernel_benchmarks(o);
#endif
  throw std::runtime_error("kiln bench kernels: " + cuda.status);
}

void print_kernel_report(const KernelBenchReport& r) {
  fmt::print("{}: copy bandwidth {:.1f} GB/s (device-to-device cudaMemcpyAsync, read + write)\n", r.device_name,
             r.copy_gb_per_s);
  fmt::print("{:<30} {:<5} {:>6} {:<42} {:>9} {:>8} {:>7} {:>8} {:>8}\n", "kernel", "model", "tokens", "shape", "ms",
             "GB/s", "% copy", "TFLOP/s", "vs plain");
  for (const KernelBenchRow& row : r.rows) {
    const bool gemm = row.flops > 0, has_plain = row.plain_tflops > 0;  // attention has no plain baseline
    fmt::print("{:<30} {:<5} {:>6} {:<42} {:>9.4f} {:>8.1f} {:>6.1f}% {:>8} {:>8}\n", row.kernel, row.model,
               row.tokens > 0 ? std::to_string(row.tokens) : "-", row.shape, row.median_ms, row.gb_per_s,
               100 * row.copy_fraction, gemm ? fmt::format("{:.1f}", row.tflops) : "-",
               has_plain ? fmt::format("{:.2f}x", row.tflops / row.plain_tflops) : "-");
  }
}

void write_kernel_report(const KernelBenchReport& r, const std::string& device, const std::string& path) {
  nlohmann::json rows = nlohmann::json::array();
  for (const KernelBenchRow& row : r.rows)
    rows.push_back({{"kernel", row.kernel},
                    {"model", row.model},
                    {"tokens", row.tokens},
                    {"shape", row.shape},
                    {"median_ms", row.median_ms},
                    {"bytes", row.bytes},
                    {"gb_per_s", row.gb_per_s},
                    {"copy_fraction", row.copy_fraction},
                    {"flops", row.flops},
                    {"tflops", row.tflops},
                    {"plain_tflops", row.plain_tflops}});
  const nlohmann::json out = {{"device", device}, {"copy_gb_per_s", r.copy_gb_per_s}, {"rows", rows}};
  std::ofstream file(path);
  if (!(file << out.dump(2) << '\n'))
    throw std::runtime_error("kiln bench kernels: cannot write " + path + " (--json)");
}

void bench_kernels(const KernelsOptions& o) {
  if (o.device == "emu") {
    if (!o.functional_check)
      throw std::runtime_error(
          "kiln bench kernels: refusing to time on the emulator: it models function, not time (--functional-check "
          "runs the benchmarks at tiny shapes, as a test of their code)");
    fmt::print(
        "emulator functional check at tiny shapes: the times below are the emulator's CPU times, NOT GPU "
        "figures\n");
    KernelBenchOptions tiny = o.bench;
    tiny.tiny = true;
    tiny.warmup = 1;
    tiny.reps = 2;
    const KernelBenchReport report = emu::run_kernel_benchmarks(tiny);
    print_kernel_report(report);
    if (!o.json.empty()) write_kernel_report(report, "emu (functional check, no GPU figures)", o.json);
    return;
  }
  if (o.device != "cuda")
    throw std::runtime_error("kiln bench kernels: --device '" + o.device +
                             "': expected cuda (or emu with --functional-check)");
  if (o.functional_check) throw std::runtime_error("kiln bench kernels: --functional-check is for --device emu only");
  const KernelBenchReport report = run_on_gpu(o.bench);
  print_kernel_report(report);
  if (!o.json.empty()) write_kernel_report(report, report.device_name, o.json);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* cmd =
      app.add_subcommand("bench", "Benchmarks: `kiln bench data` (tokenizer, loader), `kiln bench kernels` (GPU)");
  cmd->require_subcommand(1);
  CLI::App* data = cmd->add_subcommand("data", "Tokenizer MB/s (1 thread, all threads) and loader tokens/s");
  auto o = std::make_shared<BenchOptions>();
  data->add_option("--text", o->text, "Text file to tokenize (documents split at --separator)");
  data->add_option("--separator", o->separator, "Document separator in --text (default: an empty line)");
  data->add_option("--tokenizer", o->tokenizer, "bytes or gpt2")->capture_default_str();
  data->add_option("--tokenizer-dir", o->tokenizer_dir,
                   "gpt2: a directory with encoder.json and vocab.bpe; default: the vocabulary kiln ships");
  data->add_option("--dataset", o->dataset, "Prepared dataset to read batches from");
  data->add_option("--batch", o->batch, "Sequences per batch")->capture_default_str();
  data->add_option("--seq-len", o->seq_len, "Tokens per sequence")->capture_default_str();
  data->add_option("--batches", o->batches, "Batches timed")->capture_default_str();
  data->add_option("--json", o->json, "Write the figures to this JSON file");
  data->callback([o] { bench_data(*o); });

  CLI::App* blas = cmd->add_subcommand("blas", "sgemm GFLOP/s of the CPU backend's BLAS (the CPU MFU denominator)");
  auto blas_n = std::make_shared<int>(2048);
  auto blas_threads = std::make_shared<int>(0);
  blas->add_option("--size", *blas_n, "Square matrix size")->capture_default_str();
  blas->add_option("--threads", *blas_threads, "Threads (0: all cores)");
  blas->callback([blas_n, blas_threads] {
    if (*blas_threads > 0) omp_set_num_threads(*blas_threads);
    const int n = *blas_n;
    std::vector<float> a((size_t)n * n, 1.0f), b((size_t)n * n, 0.5f), c((size_t)n * n);
    cpu::sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
      const auto start = Clock::now();
      cpu::sgemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
      best = std::min(best, seconds_since(start));
    }
    fmt::print("{}, {} threads\nsgemm {}^3 best of 3, GFLOP/s: {:.1f}\n", cpu::blas_name(), omp_get_max_threads(), n,
               2.0 * n * n * n / best / 1e9);
  });

  CLI::App* kernels = cmd->add_subcommand("kernels", "Kernel microbenchmarks on a real GPU (docs/kernels.md)");
  auto k = std::make_shared<KernelsOptions>();
  kernels
      ->add_option("--device", k->device,
                   "cuda; emu only with --functional-check (the emulator models function, not time)")
      ->capture_default_str();
  kernels->add_option("--models", k->bench.models, "GPT-2 sizes, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  kernels->add_option("--tokens", k->bench.tokens, "B*T token counts, comma-separated (multiples of 1024)")
      ->delimiter(',')
      ->capture_default_str();
  kernels->add_option("--warmup", k->bench.warmup, "Untimed runs before timing")->capture_default_str();
  kernels->add_option("--reps", k->bench.reps, "Timed runs; the median is reported")->capture_default_str();
  kernels->add_option("--json", k->json, "Also write the figures to this JSON file");
  kernels->add_flag("--functional-check", k->functional_check,
                    "With --device emu: run the benchmarks at tiny shapes to test their code (no GPU figures)");
  kernels->callback([k] { bench_kernels(*k); });
}

}  // namespace kiln::cli
