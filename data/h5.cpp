#include "data/h5.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace kiln::h5 {
namespace {

// Errors are reported by kiln's exceptions, so silence HDF5's own stack dump once per process.
void silence_hdf5_errors() {
  static const bool once = [] {
    // No library shutdown at exit: a file whose close failed (a full disk) stays registered, and
    // HDF5 1.10's atexit handler crashes closing it again. The process's end frees it anyway.
    H5dont_atexit();
    return H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0;
  }();
  (void)once;
}

template <class T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, float>)
    return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, uint8_t>)
    return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, uint16_t>)
    return H5T_NATIVE_UINT16;
  else if constexpr (std::is_same_v<T, int32_t>)
    return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, uint32_t>)
    return H5T_NATIVE_UINT32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return H5T_NATIVE_INT64;
  else
    static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}

Handle file_access_without_locking() {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_file_locking(fapl.get(), false, true);
  return fapl;
}

}  // namespace

Handle& Handle::operator=(Handle&& o) noexcept {
  std::swap(id_, o.id_);  // o now closes what this held
  std::swap(closer_, o.closer_);
  return *this;
}

Handle::~Handle() {
  if (id_ >= 0 && closer_) closer_(id_);
}

hid_t Handle::release() {
  const hid_t id = id_;
  id_ = H5I_INVALID_HID;
  return id;
}

void File::close() {
  if (H5Fclose(handle_.release()) < 0) fail("cannot flush and close (disk full?)");
}

int64_t DatasetInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void File::fail(const std::string& what) const { throw std::runtime_error(path_ + ": " + what); }

File File::open_read(const std::string& path) {
  silence_hdf5_errors();
  File f;
  f.path_ = path;
  const Handle fapl = file_access_without_locking();
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (id < 0) f.fail("cannot open as an HDF5 file (missing, unreadable, truncated or not HDF5)");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

File File::create(const std::string& path) {
  silence_hdf5_errors();
  File f;
  f.path_ = path;
  const Handle fapl = file_access_without_locking();
  const Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_obj_track_times(fcpl.get(), false);  // no timestamps: the same data gives the same bytes
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get());
  if (id < 0) f.fail("cannot create HDF5 file");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

bool File::has(const std::string& name) const { return H5Lexists(id(), name.c_str(), H5P_DEFAULT) > 0; }

DatasetInfo File::info(const std::string& name) const {
  if (!has(name)) fail("dataset '" + name + "' not found");
  const Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.get() < 0) fail("'" + name + "' is not a dataset");
  const Handle type(H5Dget_type(ds.get()), H5Tclose);
  const Handle space(H5Dget_space(ds.get()), H5Sclose);
  DatasetInfo out;
  const H5T_class_t cls = H5Tget_class(type.get());
  out.is_integer = cls == H5T_INTEGER;
  out.is_float = cls == H5T_FLOAT;
  out.is_signed = out.is_integer && H5Tget_sign(type.get()) == H5T_SGN_2;
  out.element_size = H5Tget_size(type.get());
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail("cannot read the shape of '" + name + "'");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  out.shape.assign(dims.begin(), dims.end());
  return out;
}

template <class T>
std::vector<T> File::read(const std::string& name, std::vector<int64_t>* shape) const {
  const DatasetInfo meta = info(name);
  if (shape) *shape = meta.shape;
  std::vector<T> out(meta.numel());
  const Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (H5Dread(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail("cannot read dataset '" + name + "' (corrupt or truncated file?)");
  return out;
}

template <class T>
void File::read_range(const std::string& name, int64_t offset, std::span<T> out) const {
  const Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.get() < 0) fail("dataset '" + name + "' not found");
  const Handle space(H5Dget_space(ds.get()), H5Sclose);
  hsize_t size = 0;
  if (H5Sget_simple_extent_ndims(space.get()) != 1 || H5Sget_simple_extent_dims(space.get(), &size, nullptr) < 0)
    fail("'" + name + "' is not 1-D");
  if (offset < 0 || offset + (int64_t)out.size() > (int64_t)size)
    fail("range [" + std::to_string(offset) + ", " + std::to_string(offset + out.size()) + ") of '" + name +
         "' is outside its " + std::to_string(size) + " elements");
  const hsize_t start = offset, count = out.size();
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  const Handle memory(H5Screate_simple(1, &count, nullptr), H5Sclose);
  if (H5Dread(ds.get(), native_type<T>(), memory.get(), space.get(), H5P_DEFAULT, out.data()) < 0)
    fail("cannot read '" + name + "' at " + std::to_string(offset) + " (corrupt or truncated file?)");
}

template <class T>
T File::attribute(const std::string& object, const std::string& name) const {
  if (H5Aexists_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT) <= 0)
    fail("attribute '" + name + "' not found");
  const Handle attr(H5Aopen_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  T value{};
  if (attr.get() < 0 || H5Aread(attr.get(), native_type<T>(), &value) < 0)
    fail("cannot read attribute '" + name + "' as a number");
  return value;
}

std::string File::string_attribute(const std::string& object, const std::string& name) const {
  if (H5Aexists_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT) <= 0)
    fail("attribute '" + name + "' not found");
  const Handle attr(H5Aopen_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    fail("attribute '" + name + "' is not a fixed-length string");
  std::string value(H5Tget_size(type.get()), '\0');
  if (H5Aread(attr.get(), type.get(), value.data()) < 0) fail("cannot read attribute '" + name + "'");
  value.resize(value.find('\0') == std::string::npos ? value.size() : value.find('\0'));
  return value;
}

template <class T>
void File::write(const std::string& name, std::span<const T> data, hid_t stored, int64_t chunk, int gzip_level) {
  const hsize_t size = data.size();
  const Handle space(H5Screate_simple(1, &size, nullptr), H5Sclose);
  const Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), false);
  if (chunk > 0 && size > 0) {
    const hsize_t chunk_size = std::min<hsize_t>(chunk, size);
    H5Pset_chunk(dcpl.get(), 1, &chunk_size);
    if (gzip_level > 0) H5Pset_deflate(dcpl.get(), gzip_level);
  }
  const Handle ds(H5Dcreate2(id(), name.c_str(), stored, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (ds.get() < 0) fail("cannot create dataset '" + name + "'");
  if (size > 0 && H5Dwrite(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) < 0)
    fail("cannot write dataset '" + name + "' (disk full?)");
}

template <class T>
void File::set_attribute(const std::string& name, T value) {
  const Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  const Handle attr(H5Acreate2(id(), name.c_str(), native_type<T>(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr.get() < 0 || H5Awrite(attr.get(), native_type<T>(), &value) < 0)
    fail("cannot write attribute '" + name + "'");
}

void File::set_attribute(const std::string& name, const std::string& value) {
  const Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  const Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  const Handle attr(H5Acreate2(id(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  if (attr.get() < 0 || H5Awrite(attr.get(), type.get(), padded.data()) < 0)
    fail("cannot write attribute '" + name + "'");
}

#define KILN_H5_READ(T)                                                                   \
  template std::vector<T> File::read<T>(const std::string&, std::vector<int64_t>*) const; \
  template void File::read_range<T>(const std::string&, int64_t, std::span<T>) const;     \
  template void File::write<T>(const std::string&, std::span<const T>, hid_t, int64_t, int);
KILN_H5_READ(float)
KILN_H5_READ(double)
KILN_H5_READ(uint8_t)
KILN_H5_READ(int32_t)
KILN_H5_READ(int64_t)
template double File::attribute<double>(const std::string&, const std::string&) const;
template int64_t File::attribute<int64_t>(const std::string&, const std::string&) const;
template void File::set_attribute<int64_t>(const std::string&, int64_t);

}  // namespace kiln::h5
