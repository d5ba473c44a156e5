#include "model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace kiln {
namespace {

using nlohmann::json;
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// A header larger than this is not a weights file (GPT-2 1.5B's is about 40 KB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

int64_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float magnitude = (float)mantissa * 0x1p-24f;  // subnormal (or zero): exact in fp32
  return sign ? -magnitude : magnitude;
}

}  // namespace

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": missing or unreadable");
  const int64_t file_bytes = in.tellg();
  in.seekg(0);
  uint64_t header_bytes = 0;
  if (file_bytes < 8 || !in.read(reinterpret_cast<char*>(&header_bytes), 8))
    throw std::runtime_error(path + ": " + std::to_string(file_bytes) + " bytes, too short for a safetensors header");
  if (header_bytes > kMaxHeaderBytes || (int64_t)header_bytes > file_bytes - 8)
    throw std::runtime_error(path + ": header length " + std::to_string(header_bytes) + " does not fit the file's " +
                             std::to_string(file_bytes) + " bytes (not a safetensors file?)");
  std::string header(header_bytes, '\0');
  in.read(header.data(), (std::streamsize)header_bytes);
  SafetensorsFile file;
  file.path_ = path;
  json h;
  try {
    h = json::parse(header);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": header is not valid JSON: " + e.what());
  }
  if (!h.is_object()) throw std::runtime_error(path + ": header is not a JSON object");
  const int64_t data_bytes = file_bytes - 8 - (int64_t)header_bytes;
  for (const auto& [name, value] : h.items()) {
    if (name == "__metadata__") {
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) throw std::runtime_error(path + ": __metadata__." + key + " is not a string");
        file.metadata_[key] = text;
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    SafetensorsEntry e;
    try {
      e.dtype = value.at("dtype");
      e.shape = value.at("shape").get<std::vector<int64_t>>();
      const auto offsets = value.at("data_offsets").get<std::vector<int64_t>>();
      if (offsets.size() != 2)
        throw std::runtime_error("data_offsets has " + std::to_string(offsets.size()) + " values, expected 2");
      e.begin = offsets[0];
      e.end = offsets[1];
    } catch (const json::exception& ex) {
      throw std::runtime_error(where + ": " + ex.what());
    }
    const int64_t element = dtype_bytes(e.dtype);
    if (element == 0) throw std::runtime_error(where + ": unknown dtype '" + e.dtype + "'");
    int64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) throw std::runtime_error(where + ": negative dimension in its shape");
      numel *= d;
    }
    if (e.begin < 0 || e.end < e.begin || e.end > data_bytes)
      throw std::runtime_error(where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                               ") outside the data section's " + std::to_string(data_bytes) + " bytes (truncated?)");
    if (e.end - e.begin != numel * element)
      throw std::runtime_error(where + ": " + std::to_string(e.end - e.begin) + " bytes for a " + e.dtype +
                               " tensor of " + std::to_string(numel) + " elements");
    file.entries_[name] = std::move(e);
  }
  file.data_.resize(data_bytes);
  if (!in.read(file.data_.data(), data_bytes)) throw std::runtime_error(path + ": read failed");
  return file;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) throw std::runtime_error(path_ + ": no tensor '" + name + "'");
  return it->second;
}

std::vector<float> SafetensorsFile::floats(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const char* bytes = data_.data() + e.begin;
  const int64_t n = (e.end - e.begin) / dtype_bytes(e.dtype);
  std::vector<float> out(n);
  if (e.dtype == "F32") {
    std::memcpy(out.data(), bytes, n * sizeof(float));
  } else if (e.dtype == "BF16" || e.dtype == "F16") {
    for (int64_t i = 0; i < n; i++) {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      out[i] = e.dtype == "BF16" ? std::bit_cast<float>((uint32_t)h << 16) : half_to_float(h);
    }
  } else {
    throw std::runtime_error(path_ + ": tensor '" + name + "' is " + e.dtype + ", expected F32, F16 or BF16");
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsTensor*> sorted;
  sorted.reserve(tensors.size());
  for (const SafetensorsTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t offset = 0;
  for (const SafetensorsTensor* t : sorted) {
    int64_t numel = 1;
    for (int64_t d : t->shape) numel *= d;
    if (numel != (int64_t)t->values.size())
      throw std::invalid_argument("write_safetensors: tensor '" + t->name + "' has " +
                                  std::to_string(t->values.size()) + " values for its shape's " +
                                  std::to_string(numel));
    const int64_t bytes = numel * (int64_t)sizeof(float);
    header[t->name] = {{"dtype", "F32"}, {"shape", t->shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out.write(text.data(), (std::streamsize)text.size());
    for (const SafetensorsTensor* t : sorted)
      out.write(reinterpret_cast<const char*>(t->values.data()), (std::streamsize)(t->values.size() * sizeof(float)));
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp);
      throw std::runtime_error(tmp + ": write failed");
    }
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace kiln
