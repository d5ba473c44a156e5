// A typed view of backend memory (host for the CPU backend, device for CUDA), and the owning
// buffer behind it. Views carry no shape: the ops take their dimensions explicitly, as in llm.c.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace kiln {

enum class DType { f32, bf16, i32, u8 };  // u8: raw bytes (tables)

inline size_t dtype_size(DType d) { return d == DType::bf16 ? 2 : d == DType::u8 ? 1 : 4; }
inline const char* dtype_name(DType d) {
  return d == DType::f32 ? "f32" : d == DType::bf16 ? "bf16" : d == DType::i32 ? "i32" : "u8";
}

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  int64_t numel = 0;

  explicit operator bool() const { return data != nullptr; }
  Tensor slice(int64_t offset, int64_t count) const {
    if (offset < 0 || count < 0 || offset + count > numel) throw std::out_of_range("Tensor::slice out of range");
    return {static_cast<char*>(data) + offset * (int64_t)dtype_size(dtype), dtype, count};
  }
  template <class T>
  T* as(DType expected) const {
    if (data && dtype != expected)
      throw std::logic_error(std::string("tensor holds ") + dtype_name(dtype) + ", expected " + dtype_name(expected));
    return static_cast<T*>(data);
  }
  float* f32() const { return as<float>(DType::f32); }
  int32_t* i32() const { return as<int32_t>(DType::i32); }
};

// Throws unless a and b hold the same dtype and number of elements (a copy between them).
inline void require_same(const char* what, const Tensor& a, const Tensor& b) {
  if (a.dtype != b.dtype || a.numel != b.numel)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(b.numel) + " " + dtype_name(b.dtype) +
                                " values into " + std::to_string(a.numel) + " " + dtype_name(a.dtype));
}

// Owns backend memory; the deleter comes from the backend that allocated it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Tensor view, std::shared_ptr<void> memory) : view_(view), memory_(std::move(memory)) {}
  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }

 private:
  Tensor view_;
  std::shared_ptr<void> memory_;
};

}  // namespace kiln
