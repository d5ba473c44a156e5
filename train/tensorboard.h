// TensorBoard scalars, written live: RUN_DIR/events.out.tfevents.<seconds>.<host>.<pid>, one per
// process start, beside metrics.jsonl (which stays the record kiln itself reads).
//
// The file is TensorBoard's record format: each record is its length (uint64, little-endian), the
// masked CRC-32C of those 8 bytes, the bytes of one Event message (train/tensorboard_event.proto),
// and their masked CRC-32C; the mask is ((crc >> 15) | (crc << 17)) + 0xa282ead8.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

// CRC-32C (Castagnoli) of `bytes`, and TensorBoard's mask of a CRC.
uint32_t crc32c(std::string_view bytes);
uint32_t masked_crc32c(std::string_view bytes);

class TensorBoardWriter {
 public:
  // Creates the event file (throws naming it) and writes its version record.
  explicit TensorBoardWriter(const std::string& run_dir);
  // One event holding every (tag, value) of a step; flushed, so a killed run keeps what it logged.
  void write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  std::ofstream out_;
};

}  // namespace kiln
