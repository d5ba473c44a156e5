#include "train/run_directory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "train/durable_file.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The step_XXXXXXXX directories holding a manifest, newest first.
std::vector<std::string> saved_checkpoints(const std::string& run_dir) {
  std::vector<std::string> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("step_") && !name.ends_with(".tmp") && fs::exists(entry.path() / "manifest.json"))
      steps.push_back(name);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

// "section.key = value" lines -> key -> value.
std::map<std::string, std::string> settings_map(const std::string& settings) {
  std::map<std::string, std::string> out;
  std::istringstream lines(settings);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find(" = ");
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return out;
}

}  // namespace

RunDirectoryLock::RunDirectoryLock(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw std::runtime_error(run_dir + ": cannot create run directory (run.dir): " + ec.message());
  const std::string path = run_dir + "/lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    std::string holder = read_text(path);
    while (!holder.empty() && holder.back() == '\n') holder.pop_back();
    if (err != EWOULDBLOCK) throw std::runtime_error(path + ": cannot lock: " + std::strerror(err));
    throw std::runtime_error(run_dir + ": in use by another kiln run (" + (holder.empty() ? "holder unknown" : holder) +
                             ", holding " + path + "); wait for it to finish, or choose another --run-dir");
  }
  char host[256] = "unknown";
  ::gethostname(host, sizeof host - 1);
  const std::string who = fmt::format("pid {} on host {}\n", ::getpid(), host);
  // Best effort: the lock itself is the flock, the text only names the holder in messages.
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, who.data(), who.size(), 0) == (ssize_t)who.size()) ::fsync(fd_);
}

RunDirectoryLock::~RunDirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

int remove_stale_saves(const std::string& run_dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("step_") && name.ends_with(".tmp") && entry.is_directory()) {
      fs::remove_all(entry.path());
      removed++;
    }
  }
  return removed;
}

void check_fresh_start(const std::string& run_dir, const std::string& settings, bool force) {
  if (force) return;
  const std::vector<std::string> checkpoints = saved_checkpoints(run_dir);
  if (!checkpoints.empty())
    throw std::runtime_error(fmt::format(
        "{}: holds {} checkpoint(s) but no latest file naming one; resume from the newest with --resume {}/{}, "
        "or pass --force to start over (its checkpoints and metrics are then replaced)",
        run_dir, checkpoints.size(), run_dir, checkpoints.front()));
  const std::string metrics = run_dir + "/metrics.jsonl";
  std::error_code ec;
  if (!fs::exists(metrics) || fs::file_size(metrics, ec) == 0) return;
  const std::string recorded = run_dir + "/settings.toml";
  if (fs::exists(recorded) && read_text(recorded) == settings) return;  // the same run, started again
  throw std::runtime_error(
      fmt::format("{}: holds the metrics of an earlier run {}and no checkpoint; pass --force to start over in it (its "
                  "metrics.jsonl is then replaced), or choose another --run-dir",
                  run_dir, fs::exists(recorded) ? "with other settings (" + recorded + ") " : ""));
}

void record_settings(const std::string& run_dir, const std::string& settings) {
  write_atomically(run_dir + "/settings.toml", settings);
}

std::string describe_changed_settings(const std::string& saved, const std::string& now) {
  const std::map<std::string, std::string> before = settings_map(saved), after = settings_map(now);
  static const std::map<std::string, std::string> meaning = {
      {"train.steps", "the learning-rate schedule follows the new length from here"},
      {"optim.warmup_steps", "the learning-rate schedule changes from here"},
      {"optim.schedule", "the learning-rate schedule changes from here"},
      {"train.batch_size", "the data continues from its saved position, cut into batches of the new size"},
      {"train.seq_len", "the data continues from its saved position, cut into sequences of the new length"},
      {"train.grad_accum", "each step now sees a different number of tokens"},
      {"data.path", "the saved data position belongs to another dataset"},
      {"train.seed", "the data order was drawn with the saved seed and continues with it"}};
  std::string out;
  std::vector<std::string> keys;
  keys.reserve(before.size() + after.size());
  for (const auto& [key, value] : before) keys.push_back(key);
  for (const auto& [key, value] : after)
    if (!before.count(key)) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  for (const std::string& key : keys) {
    // run.* and checkpoint.* say where and how a run goes, not what it trains.
    if (key.starts_with("run.") || key.starts_with("checkpoint.")) continue;
    const auto b = before.find(key), a = after.find(key);
    const std::string was = b == before.end() ? "(default)" : b->second,
                      is = a == after.end() ? "(default)" : a->second;
    if (was == is) continue;
    out += fmt::format("  {}: {} -> {}", key, was, is);
    if (const auto m = meaning.find(key); m != meaning.end()) out += " (" + m->second + ")";
    out += "\n";
  }
  return out;
}

}  // namespace kiln
