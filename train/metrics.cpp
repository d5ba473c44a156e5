#include "train/metrics.h"

#include <filesystem>
#include <stdexcept>

namespace kiln {

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t last_kept_step) : path_(run_dir + "/metrics.jsonl") {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) throw std::runtime_error(run_dir + ": cannot create run directory (run.dir): " + ec.message());
  if (std::filesystem::exists(path_)) {
    std::ifstream in(path_);
    std::string kept, line;
    while (std::getline(in, line)) {
      const nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
      if (!row.is_discarded() && row.value("step", (int64_t)0) <= last_kept_step) kept += line + "\n";
    }
    const std::string tmp = path_ + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << kept;
    std::filesystem::rename(tmp, path_);
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw std::runtime_error(path_ + ": cannot open for appending");
}

void MetricsWriter::write(const nlohmann::json& row) {
  out_ << row.dump() << '\n';
  out_.flush();  // a killed run keeps every finished step
  if (!out_) throw std::runtime_error(path_ + ": write failed");
}

}  // namespace kiln
