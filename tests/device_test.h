// Shared by the GoogleTest files of GPU code: on the GPU build, every test skips when the machine
// has no CUDA device (CTest shows them as Skipped, not Passed); the emulator always has its device.
#pragma once

#include <gtest/gtest.h>

#include "kernels/device/cuda_lang.h"

namespace kiln::KILN_NS {

class DeviceEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
#ifndef KILN_EMU
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
#endif
  }
};

inline ::testing::Environment* const kDeviceEnvironment = ::testing::AddGlobalTestEnvironment(new DeviceEnvironment);

}  // namespace kiln::KILN_NS
