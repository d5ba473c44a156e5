// Shared by the GoogleTest files of GPU code: the fixture every test there uses, which skips the
// test on the GPU build when the machine has no CUDA device (CTest shows it as Skipped, not
// Passed). Also the helpers those files had each written for themselves.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/device/cuda_lang.h"
#include "kernels/device/runtime.h"

namespace kiln::KILN_NS {

using bf16 = __nv_bfloat16;

// Base fixture. On the GPU build: skips each test without a device, in SetUp, where GoogleTest
// reports it as skipped (a skip in a global Environment is reported as passed). On the emulator:
// its settings are global, so a test that changes them (order, seed) must not leak them into the
// next test.
class DeviceTest : public ::testing::Test {
 protected:
#ifdef KILN_EMU
  void SetUp() override { saved_ = ::kiln::emu::settings(); }
  void TearDown() override { ::kiln::emu::settings() = saved_; }

 private:
  ::kiln::emu::Settings saved_;
#else
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) GTEST_SKIP() << "no CUDA device";
  }
#endif
};

template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// Catches races: on the emulator, `run` (returning a std::vector) must give the same bytes under
// the forward, reverse and random (seed 1) orders. The GPU has no such control, so the best it
// offers is a repeat; `repeat_on_gpu` is false where the GPU may legitimately vary run to run.
template <class F>
void expect_same_under_orders(F run, bool repeat_on_gpu = true) {
#ifdef KILN_EMU
  (void)repeat_on_gpu;
  using ::kiln::emu::Order;
  ::kiln::emu::Settings& s = ::kiln::emu::settings();
  const ::kiln::emu::Settings saved = s;
  s.order = Order::forward;
  const auto reference = bytes_of(run());
  const struct {
    Order order;
    const char* name;
  } others[] = {{Order::reverse, "reverse"}, {Order::random, "random (seed 1)"}};
  for (const auto& o : others) {
    s.order = o.order;
    s.seed = 1;
    const auto got = bytes_of(run());
    ASSERT_EQ(got.size(), reference.size()) << o.name;
    const auto diff = std::mismatch(got.begin(), got.end(), reference.begin());
    EXPECT_TRUE(diff.first == got.end()) << "order " << o.name << " differs from forward at byte "
                                         << (diff.first - got.begin());
  }
  s = saved;
#else
  if (!repeat_on_gpu) {
    run();
    return;
  }
  const auto first = bytes_of(run());
  EXPECT_TRUE(bytes_of(run()) == first) << "a repeated run differs";
#endif
}

// A stricter variant for the elementwise kernels: the first run uses whatever order is set, then
// forward again and a second random seed as well.
template <class F>
void expect_same_under_all_orders(F run) {
  const auto reference = bytes_of(run());
#ifdef KILN_EMU
  using ::kiln::emu::Order;
  ::kiln::emu::Settings& s = ::kiln::emu::settings();
  const ::kiln::emu::Settings saved = s;
  const struct {
    Order order;
    uint64_t seed;
    const char* name;
  } others[] = {{Order::forward, 0, "forward (again)"},
                {Order::reverse, 0, "reverse"},
                {Order::random, 1, "random (seed 1)"},
                {Order::random, 7, "random (seed 7)"}};
  for (const auto& o : others) {
    s.order = o.order;
    s.seed = o.seed;
    const auto got = bytes_of(run());
    ASSERT_EQ(got.size(), reference.size()) << o.name;
    EXPECT_TRUE(got == reference) << "order " << o.name << " differs from the first run";
  }
  s = saved;
#else
  EXPECT_TRUE(bytes_of(run()) == reference) << "a repeated run differs";
#endif
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host, const Stream& s) {
  DeviceBuffer<T> d(host.size());
  d.upload(host, s);
  return d;
}

// An output buffer filled with 0xff bytes (NaN as bf16 and as float), so a value the kernel never
// writes fails the comparison instead of passing by luck.
template <class T>
DeviceBuffer<T> poisoned(size_t n, const Stream& s) {
  DeviceBuffer<T> d(n);
  d.fill_bytes(0xff, s);
  return d;
}

inline float to_float(bf16 v) { return __bfloat162float(v); }
inline float to_float(float v) { return v; }
inline double as_double(bf16 v) { return (double)__bfloat162float(v); }
inline double as_double(float v) { return (double)v; }

inline std::vector<float> to_floats(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = __bfloat162float(v[i]);
  return out;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = as_double(v[i]);
  return out;
}

// Against a double reference: max|got - want| / max|want| over the indices where `use(i)`;
// infinity if a got value is NaN or inf, so that a blown-up kernel never passes.
inline double rel_error(
    const std::vector<float>& got, const std::vector<double>& want,
    const std::function<bool(size_t)>& use = [](size_t) { return true; }) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < got.size(); i++) {
    if (!use(i)) continue;
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs((double)got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// Against a float reference: max |got - want| / max |want|; infinite if any value is NaN (so NaN
// never passes, though an infinity matching an infinity does).
template <class G>
double relative_error(const std::vector<G>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); i++) {
    const double g = to_float(got[i]);
    if (std::isnan(g) || std::isnan(want[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(g - (double)want[i]));
    scale = std::max(scale, std::abs((double)want[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// The launchers report bad arguments as std::invalid_argument; `message` must be part of it.
template <class F>
void expect_invalid(F call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << "got: " << e.what();
  }
}

}  // namespace kiln::KILN_NS
