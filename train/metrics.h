// One JSON object per line in RUN_DIR/metrics.jsonl. Appends, so earlier runs' rows are kept; a
// resumed run first drops the rows of steps after its checkpoint, so that no step shows twice.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace kiln {

class MetricsWriter {
 public:
  // Creates the directory (throws naming it); keeps only rows with step <= last_kept_step when > 0.
  explicit MetricsWriter(const std::string& run_dir, int64_t last_kept_step = 0);
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace kiln
