// One JSON object per line in RUN_DIR/metrics.jsonl. Appends, so earlier runs' rows are kept.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace kiln {

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& run_dir);  // creates the directory; throws naming it
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace kiln
