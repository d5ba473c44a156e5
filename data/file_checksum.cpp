#include "data/file_checksum.h"

#include <fmt/format.h>

#include <fstream>
#include <stdexcept>
#include <vector>

#include "kernels/fnv1a.h"

namespace kiln {

std::string FileChecksum::hex() const { return fmt::format("{:016x}", fnv1a); }

FileChecksum file_checksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": missing or unreadable");
  std::vector<char> chunk(4 << 20);
  FileChecksum sum{0, kFnv1aStart};
  while (in.read(chunk.data(), (std::streamsize)chunk.size()) || in.gcount() > 0) {
    sum.fnv1a = kiln::fnv1a(chunk.data(), (size_t)in.gcount(), sum.fnv1a);
    sum.bytes += in.gcount();
  }
  if (in.bad()) throw std::runtime_error(path + ": read failed");
  return sum;
}

}  // namespace kiln
