// The safetensors format (Hugging Face's weights files), read and written here: an 8-byte
// little-endian header length N, N bytes of JSON naming every tensor's dtype, shape and
// [begin, end) byte range in the data that follows, then the raw little-endian tensor bytes.
// https://github.com/huggingface/safetensors#format
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace kiln {

struct SafetensorsEntry {
  std::string dtype;  // "F32", "F16", "BF16", ... as the file spells it
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // bytes, relative to the data section
};

// A whole file in memory (GPT-2 checkpoints are read once, whole).
class SafetensorsFile {
 public:
  // Throws std::runtime_error naming the file and the field on any malformed header: a length
  // past the file, invalid JSON, an unknown dtype, a byte range that does not match the shape or
  // leaves the data section.
  static SafetensorsFile read(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws naming the file and tensor
  // The tensor as fp32 (F32 exactly; F16 and BF16 widened, which is exact too).
  std::vector<float> floats(const std::string& name) const;

 private:
  std::string path_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<char> data_;
};

struct SafetensorsTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;  // written as F32
};

// Writes the tensors (data in name order, header padded with spaces to 8 bytes as the reference
// implementation does) to path.tmp, then renames it over path: a failed write leaves any earlier
// file intact.
void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln
