// One JSON object per line in RUN_DIR/metrics.jsonl. A run first drops the rows of steps after the
// one it starts from (its checkpoint's; all of them for a fresh start), so that no step shows
// twice, then appends.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace kiln {

class MetricsWriter {
 public:
  // Creates the directory (throws naming it); keeps only the rows with step <= last_kept_step.
  explicit MetricsWriter(const std::string& run_dir, int64_t last_kept_step = 0);
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace kiln
