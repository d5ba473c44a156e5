// FNV-1a, 64-bit: the checksum kiln records for checkpoint files and manifests, token shards and
// tokenizer files, and the hash the job check compares across ranks. It catches damage (flipped
// bits, truncation), not tampering. One multiply per byte: about 0.7 GB/s on one core.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

inline constexpr uint64_t kFnv1aStart = 0xcbf29ce484222325ull;

// Continues `hash` over `bytes` bytes at `data`; pass the previous result to hash in pieces.
inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash = kFnv1aStart) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; i++) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

}  // namespace kiln
