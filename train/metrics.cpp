#include "train/metrics.h"

#include <filesystem>
#include <stdexcept>

namespace kiln {

MetricsWriter::MetricsWriter(const std::string& run_dir) : path_(run_dir + "/metrics.jsonl") {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) throw std::runtime_error(run_dir + ": cannot create run directory (run.dir): " + ec.message());
  out_.open(path_, std::ios::app);
  if (!out_) throw std::runtime_error(path_ + ": cannot open for appending");
}

void MetricsWriter::write(const nlohmann::json& row) {
  out_ << row.dump() << '\n';
  out_.flush();  // a killed run keeps every finished step
  if (!out_) throw std::runtime_error(path_ + ": write failed");
}

}  // namespace kiln
