// bf16 <-> fp32 on the host, for collectives that sum bf16 data in fp32.
#pragma once

#include <bit>
#include <cstdint>

namespace kiln {

inline float bf16_to_float(uint16_t bits) { return std::bit_cast<float>((uint32_t)bits << 16); }

// Rounded to nearest even; a NaN stays a NaN.
inline uint16_t float_to_bf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace kiln
