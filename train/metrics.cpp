#include "train/metrics.h"

#include <fmt/format.h>

#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "train/durable_file.h"

namespace kiln {

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t last_kept_step) : path_(run_dir + "/metrics.jsonl") {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) throw std::runtime_error(run_dir + ": cannot create run directory (run.dir): " + ec.message());
  if (std::filesystem::exists(path_)) {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) throw std::runtime_error(path_ + ": cannot read");
    std::string kept, line;
    std::istringstream lines(text.str());
    for (int line_no = 1; std::getline(lines, line); line_no++) {
      // A run killed while writing its last row leaves that row unfinished (no newline): dropped.
      if (lines.eof()) break;
      const nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
      if (row.is_discarded() || !row.is_object() || !row.contains("step") || !row["step"].is_number_integer())
        throw std::runtime_error(
            fmt::format("{}:{}: not a metrics row (expected a JSON object with an integer "
                        "\"step\"); fix or remove the line to resume",
                        path_, line_no));
      if (row["step"].get<int64_t>() <= last_kept_step) kept += line + "\n";
    }
    // The history is replaced only by a complete copy: a failed write leaves the old file.
    if (kept != text.str()) write_atomically(path_, kept);
  }
  out_.open(path_, std::ios::app);
  if (!out_) throw std::runtime_error(path_ + ": cannot open for appending");
}

void MetricsWriter::write(const nlohmann::json& row) {
  out_ << row.dump() << '\n';
  out_.flush();  // a killed run keeps every finished step
  if (!out_) throw std::runtime_error(path_ + ": write failed (disk full?); the rows before it are kept");
}

}  // namespace kiln
