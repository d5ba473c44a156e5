// A file's size and FNV-1a checksum (kernels/fnv1a.h), as checkpoint manifests and dataset.json
// record them.
#pragma once

#include <cstdint>
#include <string>

namespace kiln {

struct FileChecksum {
  int64_t bytes = 0;
  uint64_t fnv1a = 0;
  std::string hex() const;  // the 16 hex digits recorded in JSON
};

// Reads the whole file in 4 MiB pieces. Throws naming the file when it cannot be read.
FileChecksum file_checksum(const std::string& path);

}  // namespace kiln
