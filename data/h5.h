// RAII over the HDF5 C API, and typed reads that name the file and dataset when they fail.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::h5 {

// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t get() const { return id_; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

class File {
 public:
  static File open_read(const std::string& path);  // throws naming the path
  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }
  bool has(const std::string& name) const;

  // Reads a whole dataset, converting to T; shape (if given) receives its dimensions.
  template <class T>
  std::vector<T> read(const std::string& name, std::vector<int64_t>* shape = nullptr) const;
  // Reads a scalar attribute of the object at `object` ("/" for the file).
  template <class T>
  T attribute(const std::string& object, const std::string& name) const;

 private:
  std::string path_;
  Handle handle_;
};

}  // namespace kiln::h5
