// Launcher argument checks, shared by the kernel files: host-side, run before a launch, each
// throwing std::invalid_argument("<launcher>: <what>"). One copy here instead of a near-identical
// set in every .cu file, so that the message format stays the same everywhere. Checks specific to
// one kernel (shapes, slices, vector-path alignment) stay in its file and are built on these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/device/cuda_lang.h"

namespace kiln::KILN_NS {

inline void require(bool ok, const char* launcher, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(launcher) + ": " + what);
}

// "<name> is null".
inline void require_pointer(const void* p, const char* launcher, const char* name) {
  require(p != nullptr, launcher, std::string(name) + " is null");
}

// "<name> must be <alignment>-byte aligned".
inline void require_aligned(const void* p, size_t alignment, const char* launcher, const char* name) {
  require(reinterpret_cast<uintptr_t>(p) % alignment == 0, launcher,
          std::string(name) + " must be " + std::to_string(alignment) + "-byte aligned");
}

// "<name> must be positive, got <value>".
inline void require_positive(int64_t value, const char* launcher, const char* name) {
  require(value > 0, launcher, std::string(name) + " must be positive, got " + std::to_string(value));
}

}  // namespace kiln::KILN_NS
