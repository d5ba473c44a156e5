#include "train/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <map>
#include <thread>
#include <set>
#include <utility>
#include <sstream>
#include <stdexcept>

namespace kiln {
namespace {

// The names a choice setting takes, each with its value.
template <class E>
struct Named {
  const char* name;
  E value;
};
constexpr Named<NonFinite> kNonFinite[] = {{"stop", NonFinite::stop}, {"skip", NonFinite::skip}};
constexpr Named<LrSchedule> kSchedules[] = {
    {"cosine", LrSchedule::cosine}, {"wsd", LrSchedule::wsd}, {"constant", LrSchedule::constant}};
constexpr Named<OnSaveError> kOnSaveErrors[] = {{"stop", OnSaveError::stop}, {"continue", OnSaveError::go_on}};
constexpr Named<Device> kDevices[] = {
    {"auto", Device::automatic}, {"cpu", Device::cpu}, {"cuda", Device::cuda}, {"emu", Device::emu}};

// Where each key's value came from: the file, unless an override set it.
class Origins {
 public:
  explicit Origins(std::string file) : file_(std::move(file)) {}
  void set(const std::string& key, const std::string& written) { by_key_[key] = written; }
  std::set<std::string> keys() const {
    std::set<std::string> out;
    for (const auto& [key, written] : by_key_) out.insert(key);
    return out;
  }
  std::string of(const std::string& key) const {
    const auto it = by_key_.find(key);
    return it == by_key_.end() ? file_ : "command line " + it->second;
  }

 private:
  std::string file_;
  std::map<std::string, std::string> by_key_;
};

// Reads typed values out of a TOML table, remembering which keys were used so that anything
// left over (a typo) can be reported.
class Reader {
 public:
  Reader(const toml::table& root, const Origins& origins) : root_(root), origins_(origins) {}

  template <class T>
  void get(const std::string& key, T& out) {
    const toml::node* node = root_.at_path(key).node();
    if (!node) return;
    used_.insert(key);
    if constexpr (std::is_same_v<T, std::string>) {
      if (auto v = node->value<std::string>()) return void(out = *v);
      fail(key, "a string");
    } else if constexpr (std::is_same_v<T, bool>) {
      if (auto v = node->value_exact<bool>()) return void(out = *v);
      fail(key, "true or false");
    } else if constexpr (std::is_same_v<T, double>) {
      if (auto v = node->value<double>()) return void(out = *v);  // integers convert too
      fail(key, "a number");
    } else {
      const std::optional<int64_t> integer = node->value<int64_t>();
      if (!node->is_integer() || !integer) fail(key, "an integer");
      const int64_t v = integer.value_or(0);
      if (!std::in_range<T>(v)) fail(key, "an integer in range");
      out = static_cast<T>(v);
    }
  }

  void reject_unknown() const {
    for (const auto& [section, node] : root_) {
      const toml::table* table = node.as_table();
      if (!table) {
        check(std::string(section.str()));
        continue;
      }
      for (const auto& [key, value] : *table) check(std::string(section.str()) + "." + std::string(key.str()));
    }
  }

 private:
  [[noreturn]] void fail(const std::string& key, const char* expected) const {
    throw std::runtime_error(origins_.of(key) + ": " + key + ": expected " + expected);
  }
  void check(const std::string& key) const {
    if (used_.count(key)) return;
    const std::string near = nearest_name(key, config_keys());
    throw std::runtime_error(origins_.of(key) + ": unknown key '" + key + "'" +
                             (near.empty() ? "" : " (did you mean " + near + "?)"));
  }
  const toml::table& root_;
  const Origins& origins_;
  std::set<std::string> used_;
};

std::string fmt_number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); j++) row[j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); j++) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// "a.b=value" -> root[a][b] = value parsed as TOML (or as a string when it is not valid TOML).
void apply_override(toml::table& root, const Override& o, Origins& origins) {
  const std::string& text = o.assignment;
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::runtime_error("override '" + text + "': expected --section.key=value");
  const std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  origins.set(key, o.written());
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed.insert_or_assign("v", value);
  }
  toml::table* table = &root;
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    const std::string part = key.substr(start, dot - start);
    if (!table->contains(part)) table->insert(part, toml::table{});
    table = (*table)[part].as_table();
    if (!table) throw std::runtime_error("override '" + text + "': '" + part + "' is not a section");
  }
  table->insert_or_assign(key.substr(start), *parsed.get("v"));
}

// "section.key = value" lines in the table's (sorted) order: what the ranks of a job compare.
std::string settings_text(const toml::table& root) {
  std::ostringstream out;
  for (const auto& [section, node] : root) {
    if (const toml::table* table = node.as_table()) {
      for (const auto& [key, value] : *table) {
        out << section.str() << "." << key.str() << " = ";
        value.visit([&](const auto& v) { out << v; });
        out << "\n";
      }
    } else {
      out << section.str() << " = ";
      node.visit([&](const auto& v) { out << v; });
      out << "\n";
    }
  }
  return out.str();
}

}  // namespace

int64_t parse_memory_size(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    return -1;
  }
  std::string unit = text.substr(used);
  for (char& c : unit) c = (char)std::toupper((unsigned char)c);
  static const std::map<std::string, double> units = {
      {"", 1},          {"B", 1},          {"K", 1 << 10},     {"KB", 1 << 10},    {"KIB", 1 << 10},
      {"M", 1 << 20},   {"MB", 1 << 20},   {"MIB", 1 << 20},   {"G", 1 << 30},     {"GB", 1 << 30},
      {"GIB", 1 << 30}, {"T", 1ull << 40}, {"TB", 1ull << 40}, {"TIB", 1ull << 40}};
  const auto it = units.find(unit);
  if (it == units.end() || !(value > 0)) return -1;
  return (int64_t)(value * it->second);
}

const char* device_name(Device d) {
  for (const Named<Device>& n : kDevices)
    if (n.value == d) return n.name;
  return "?";
}

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys = {"model.preset",
                                                "model.vocab_size",
                                                "model.max_seq_len",
                                                "model.n_layer",
                                                "model.n_head",
                                                "model.n_embd",
                                                "model.vocab_multiple",
                                                "data.path",
                                                "data.verify",
                                                "train.batch_size",
                                                "train.seq_len",
                                                "train.grad_accum",
                                                "train.steps",
                                                "train.seed",
                                                "train.log_every",
                                                "train.eval_every",
                                                "train.eval_batches",
                                                "train.eval_only",
                                                "train.peak_tflops",
                                                "train.recompute",
                                                "train.nonfinite",
                                                "train.sample_every",
                                                "train.sample_tokens",
                                                "train.sample_prompt",
                                                "optim.lr",
                                                "optim.min_lr_ratio",
                                                "optim.warmup_steps",
                                                "optim.schedule",
                                                "optim.decay_fraction",
                                                "optim.weight_decay",
                                                "optim.beta1",
                                                "optim.beta2",
                                                "optim.eps",
                                                "optim.grad_clip",
                                                "parallel.tp",
                                                "parallel.zero",
                                                "parallel.timeout_s",
                                                "parallel.bucket_mb",
                                                "parallel.rendezvous",
                                                "checkpoint.every",
                                                "checkpoint.keep",
                                                "checkpoint.async",
                                                "checkpoint.async_max_mb",
                                                "checkpoint.resume",
                                                "checkpoint.init_from",
                                                "checkpoint.on_error",
                                                "run.dir",
                                                "run.device",
                                                "run.threads",
                                                "run.deterministic",
                                                "run.dry_run",
                                                "run.force",
                                                "run.gpu",
                                                "run.gpu_memory"};
  return keys;
}

std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates) {
  auto last_part = [](const std::string& s) {
    const size_t cut = s.find_last_of(".-");
    return cut == std::string::npos ? s : s.substr(cut + 1);
  };
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 4) + 1;  // more edits than this: not a typo
  for (const std::string& c : candidates) {
    size_t d = edit_distance(word, c);
    // "steps" for "train.steps", "--steps" for "--max-steps": the same last word counts as near.
    if (d >= best_distance && last_part(word).size() >= 3 && last_part(word) == last_part(c)) d = 1;
    if (d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

// The settings read as text, converted and checked with the rest by check_settings.
struct SettingTexts {
  std::string recompute = "none";
  std::string nonfinite = "stop";
  std::string schedule = "cosine";
  std::string on_error = "stop";
  std::string device = "auto";
  std::string gpu_memory;
};

// Every key from `root` into `cfg`; the text of the settings that take names or sizes.
SettingTexts read_settings(const toml::table& root, const Origins& origins, TrainConfig& cfg) {
  Reader r(root, origins);
  SettingTexts text;
  r.get("model.preset", cfg.preset);
  cfg.model = GPTConfig::preset(cfg.preset);
  cfg.vocab_size_set = (bool)root.at_path("model.vocab_size");
  cfg.seq_len_set = (bool)root.at_path("train.seq_len");
  r.get("model.vocab_size", cfg.model.vocab_size);
  r.get("model.max_seq_len", cfg.model.max_seq_len);
  r.get("model.n_layer", cfg.model.n_layer);
  r.get("model.n_head", cfg.model.n_head);
  r.get("model.n_embd", cfg.model.n_embd);
  r.get("model.vocab_multiple", cfg.model.vocab_multiple);
  r.get("data.path", cfg.data.path);
  r.get("data.verify", cfg.data.verify);
  r.get("train.batch_size", cfg.train.batch_size);
  r.get("train.seq_len", cfg.train.seq_len);
  r.get("train.grad_accum", cfg.train.grad_accum);
  r.get("train.steps", cfg.train.steps);
  r.get("train.seed", cfg.train.seed);
  r.get("train.log_every", cfg.train.log_every);
  r.get("train.eval_every", cfg.train.eval_every);
  r.get("train.eval_batches", cfg.train.eval_batches);
  r.get("train.eval_only", cfg.train.eval_only);
  r.get("train.peak_tflops", cfg.train.peak_tflops);
  r.get("train.recompute", text.recompute);
  r.get("train.nonfinite", text.nonfinite);
  r.get("train.sample_every", cfg.train.sample_every);
  r.get("train.sample_tokens", cfg.train.sample_tokens);
  r.get("train.sample_prompt", cfg.train.sample_prompt);
  r.get("optim.lr", cfg.optim.lr);
  r.get("optim.min_lr_ratio", cfg.optim.min_lr_ratio);
  r.get("optim.warmup_steps", cfg.optim.warmup_steps);
  r.get("optim.schedule", text.schedule);
  r.get("optim.decay_fraction", cfg.optim.decay_fraction);
  r.get("optim.weight_decay", cfg.optim.weight_decay);
  r.get("optim.beta1", cfg.optim.beta1);
  r.get("optim.beta2", cfg.optim.beta2);
  r.get("optim.eps", cfg.optim.eps);
  r.get("optim.grad_clip", cfg.optim.grad_clip);
  r.get("parallel.tp", cfg.parallel.tp);
  r.get("parallel.zero", cfg.parallel.zero);
  r.get("parallel.timeout_s", cfg.parallel.timeout_s);
  r.get("parallel.bucket_mb", cfg.parallel.bucket_mb);
  r.get("parallel.rendezvous", cfg.parallel.rendezvous);
  r.get("checkpoint.every", cfg.checkpoint.every);
  r.get("checkpoint.keep", cfg.checkpoint.keep);
  r.get("checkpoint.async", cfg.checkpoint.async);
  r.get("checkpoint.async_max_mb", cfg.checkpoint.async_max_mb);
  r.get("checkpoint.resume", cfg.checkpoint.resume);
  r.get("checkpoint.init_from", cfg.checkpoint.init_from);
  r.get("checkpoint.on_error", text.on_error);
  r.get("run.dir", cfg.run_dir);
  r.get("run.device", text.device);
  r.get("run.threads", cfg.threads);
  r.get("run.deterministic", cfg.deterministic);
  r.get("run.dry_run", cfg.dry_run);
  r.get("run.force", cfg.force);
  r.get("run.gpu_memory", text.gpu_memory);
  r.get("run.gpu", cfg.gpu);
  r.reject_unknown();
  return text;
}

// Every value's range and every name's meaning, each refusal naming the key and where it came from.
void check_settings(TrainConfig& cfg, const SettingTexts& text, const Origins& origins) {
  auto bad = [&](const std::string& key, const std::string& why) {
    throw std::runtime_error(origins.of(key) + ": " + key + ": " + why);
  };
  // A number in [lo, hi] (or the open ends the flags say); NaN never is.
  auto in_range = [&](const std::string& key, double v, double lo, double hi, bool lo_open, bool hi_open,
                      const std::string& expected) {
    if (!(lo_open ? v > lo : v >= lo) || !(hi_open ? v < hi : v <= hi))
      bad(key, fmt_number(v) + ": expected " + expected);
  };
  // One of a setting's names, as its enum value ("'x': expected a, b or c" otherwise).
  auto choose = [&]<class E, size_t N>(const std::string& key, const std::string& name, const Named<E>(&choices)[N]) {
    std::string expected;
    for (size_t i = 0; i < N; i++) {
      if (name == choices[i].name) return choices[i].value;
      expected += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + choices[i].name;
    }
    bad(key, "'" + name + "': expected " + expected);
    return choices[0].value;  // not reached: bad() throws
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  try {
    cfg.model.validate();
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(cfg.source + ": " + e.what());
  }
  if (cfg.data.path.empty()) bad("data.path", "required (a dataset directory written by kiln prepare)");
  if (cfg.train.batch_size < 1) bad("train.batch_size", "expected >= 1");
  if (cfg.train.seq_len < 1 || cfg.train.seq_len > cfg.model.max_seq_len)
    bad("train.seq_len", "expected 1.." + std::to_string(cfg.model.max_seq_len) + " (model.max_seq_len)");
  if (cfg.train.grad_accum < 1) bad("train.grad_accum", "expected >= 1");
  if (cfg.train.steps < 1) bad("train.steps", "expected >= 1");
  if (cfg.train.log_every < 1) bad("train.log_every", "expected >= 1");
  if (cfg.train.eval_every < 0) bad("train.eval_every", "expected >= 0 (0 disables evaluation)");
  if (cfg.train.eval_batches < 0) bad("train.eval_batches", "expected >= 0 (0 = the whole validation split)");
  if (cfg.train.peak_tflops != 0)
    in_range("train.peak_tflops", cfg.train.peak_tflops, 0, kInf, true, true, "> 0 TFLOP/s, or 0 for the GPU's own");
  in_range("optim.lr", cfg.optim.lr, 0, kInf, true, true, "a finite number > 0");
  in_range("optim.min_lr_ratio", cfg.optim.min_lr_ratio, 0, 1, false, false, "0 <= ratio <= 1");
  if (cfg.optim.warmup_steps < 0) bad("optim.warmup_steps", "expected >= 0");
  in_range("optim.decay_fraction", cfg.optim.decay_fraction, 0, 1, false, false, "0 <= fraction <= 1");
  in_range("optim.weight_decay", cfg.optim.weight_decay, 0, kInf, false, true, "a finite number >= 0");
  in_range("optim.beta1", cfg.optim.beta1, 0, 1, false, true, "0 <= beta1 < 1");
  in_range("optim.beta2", cfg.optim.beta2, 0, 1, false, true, "0 <= beta2 < 1");
  in_range("optim.eps", cfg.optim.eps, 0, kInf, true, true, "a finite number > 0");
  in_range("optim.grad_clip", cfg.optim.grad_clip, 0, kInf, false, true, "a finite number >= 0 (0 disables clipping)");
  cfg.optim.schedule = choose("optim.schedule", text.schedule, kSchedules);
  if (cfg.parallel.tp < 1) bad("parallel.tp", "expected >= 1");
  if (cfg.parallel.zero != 0 && cfg.parallel.zero != 1) bad("parallel.zero", "expected 0 or 1 (ZeRO-1)");
  if (!(cfg.parallel.timeout_s > 0) || std::isinf(cfg.parallel.timeout_s))
    bad("parallel.timeout_s", "expected > 0 seconds");
  if (!(cfg.parallel.bucket_mb >= 0) || std::isinf(cfg.parallel.bucket_mb))
    bad("parallel.bucket_mb", "expected >= 0 (0: one all-reduce after the backward pass)");
  // More threads than a few per core only slows OpenMP down, and libgomp fails on huge counts.
  const int max_threads = 4 * (int)std::max(1u, std::thread::hardware_concurrency());
  if (cfg.threads < 0 || cfg.threads > max_threads)
    bad("run.threads",
        std::to_string(cfg.threads) + ": expected 0 (all cores) to " + std::to_string(max_threads) + " (4 per core)");
  cfg.device = choose("run.device", text.device, kDevices);
  try {
    cfg.train.recompute = parse_recompute(text.recompute);
  } catch (const std::invalid_argument& e) {
    bad("train.recompute", e.what());
  }
  if (cfg.checkpoint.every < 0) bad("checkpoint.every", "expected >= 0 (0: never)");
  if (cfg.checkpoint.keep < 0) bad("checkpoint.keep", "expected >= 0 (0: keep all)");
  if (cfg.checkpoint.async_max_mb < 0) bad("checkpoint.async_max_mb", "expected >= 0 (0: always save in place)");
  cfg.checkpoint.on_error = choose("checkpoint.on_error", text.on_error, kOnSaveErrors);
  if (!cfg.checkpoint.resume.empty() && !cfg.checkpoint.init_from.empty())
    bad("checkpoint.init_from",
        "cannot be combined with checkpoint.resume (resume continues a run, init_from starts one)");
  cfg.train.nonfinite = choose("train.nonfinite", text.nonfinite, kNonFinite);
  if (cfg.train.sample_every < 0) bad("train.sample_every", "expected >= 0 (0 disables sampling)");
  if (cfg.train.sample_tokens < 1) bad("train.sample_tokens", "expected >= 1");
  if (!text.gpu_memory.empty()) {
    cfg.gpu_memory_bytes = parse_memory_size(text.gpu_memory);
    if (cfg.gpu_memory_bytes <= 0)
      bad("run.gpu_memory", "'" + text.gpu_memory + "': expected a size such as 80GB or 512MiB");
  }
  if (!cfg.gpu.empty()) {  // a plan for another machine: its name alone does not say its memory
    if (!cfg.dry_run || cfg.device != Device::cuda)
      bad("run.gpu", "'" + cfg.gpu + "' is for planning: add --dry-run --device cuda");
    if (cfg.gpu_memory_bytes == 0) bad("run.gpu", "'" + cfg.gpu + "': give its memory too (--gpu-memory, e.g. 80GB)");
  }
}

TrainConfig load_train_config(const std::string& path, const std::vector<Override>& overrides) {
  toml::table root;
  if (!path.empty()) {
    try {
      root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      const auto& where = e.source().begin;
      throw std::runtime_error(path + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) + ": " +
                               std::string(e.description()));
    }
  }
  TrainConfig cfg;
  cfg.source = path.empty() ? "command line" : path;
  Origins origins(cfg.source);
  for (const Override& o : overrides) apply_override(root, o, origins);
  cfg.settings = settings_text(root);
  cfg.command_line_keys = origins.keys();
  const SettingTexts text = read_settings(root, origins, cfg);
  check_settings(cfg, text, origins);
  return cfg;
}

}  // namespace kiln
