// RAII over the HDF5 C API, and typed reads and writes that name the file and dataset when they
// fail. File locking is off: kiln writes each file from one process, and some parallel file
// systems have no flock.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <span>
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
  hid_t release();  // gives up ownership: the caller closes

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// What a dataset stores: element class and size in bytes, and its dimensions.
struct DatasetInfo {
  bool is_integer = false, is_signed = false, is_float = false;
  size_t element_size = 0;
  std::vector<int64_t> shape;
  int64_t numel() const;
};

class File {
 public:
  static File open_read(const std::string& path);  // throws naming the path
  static File create(const std::string& path);     // truncates an existing file
  // Flushes and closes a file written to; throws naming it when HDF5 cannot (a full disk), so that
  // a file that is not whole on disk never passes for a written one. Destruction closes without
  // checking: for error paths.
  void close();
  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }
  bool has(const std::string& name) const;
  DatasetInfo info(const std::string& name) const;

  // Reads a whole dataset, converting to T; shape (if given) receives its dimensions.
  template <class T>
  std::vector<T> read(const std::string& name, std::vector<int64_t>* shape = nullptr) const;
  // Reads elements [offset, offset + out.size()) of a 1-D dataset, converting to T.
  template <class T>
  void read_range(const std::string& name, int64_t offset, std::span<T> out) const;
  // Scalar attribute of the object at `object` ("/" for the file).
  template <class T>
  T attribute(const std::string& object, const std::string& name) const;
  std::string string_attribute(const std::string& object, const std::string& name) const;

  // Writes a 1-D dataset stored as `stored` (an H5T_NATIVE_* or H5T_STD_* type), in chunks of
  // `chunk` elements (0: contiguous), gzip-compressed at `gzip_level` (0: none).
  template <class T>
  void write(const std::string& name, std::span<const T> data, hid_t stored, int64_t chunk = 0, int gzip_level = 0);
  template <class T>
  void set_attribute(const std::string& name, T value);  // on the root group
  void set_attribute(const std::string& name, const std::string& value);

 private:
  [[noreturn]] void fail(const std::string& what) const;
  std::string path_;
  Handle handle_;
};

}  // namespace kiln::h5
