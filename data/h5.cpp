#include "data/h5.h"

#include <stdexcept>
#include <type_traits>
#include <utility>

namespace kiln::h5 {
namespace {

// Errors are reported by kiln's exceptions, so silence HDF5's own stack dump once per process.
void silence_hdf5_errors() {
  static const bool once = [] { return H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0; }();
  (void)once;
}

template <class T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  else static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
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

File File::open_read(const std::string& path) {
  silence_hdf5_errors();
  File f;
  f.path_ = path;
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw std::runtime_error(path + ": cannot open as an HDF5 file (missing, unreadable or corrupt)");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

bool File::has(const std::string& name) const {
  return H5Lexists(id(), name.c_str(), H5P_DEFAULT) > 0;
}

template <class T>
std::vector<T> File::read(const std::string& name, std::vector<int64_t>* shape) const {
  if (!has(name)) throw std::runtime_error(path_ + ": dataset '" + name + "' not found");
  const Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.get() < 0) throw std::runtime_error(path_ + ": '" + name + "' is not a dataset");
  const Handle space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(rank > 0 ? rank : 0);
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  size_t count = 1;
  for (hsize_t d : dims) count *= d;
  if (shape) shape->assign(dims.begin(), dims.end());
  std::vector<T> out(count);
  if (H5Dread(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    throw std::runtime_error(path_ + ": cannot read dataset '" + name + "' as the requested type");
  return out;
}

template <class T>
T File::attribute(const std::string& object, const std::string& name) const {
  if (H5Aexists_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT) <= 0)
    throw std::runtime_error(path_ + ": attribute '" + name + "' of '" + object + "' not found");
  const Handle attr(H5Aopen_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  T value{};
  if (attr.get() < 0 || H5Aread(attr.get(), native_type<T>(), &value) < 0)
    throw std::runtime_error(path_ + ": cannot read attribute '" + name + "' of '" + object + "'");
  return value;
}

template std::vector<float> File::read<float>(const std::string&, std::vector<int64_t>*) const;
template std::vector<double> File::read<double>(const std::string&, std::vector<int64_t>*) const;
template std::vector<int32_t> File::read<int32_t>(const std::string&, std::vector<int64_t>*) const;
template std::vector<int64_t> File::read<int64_t>(const std::string&, std::vector<int64_t>*) const;
template double File::attribute<double>(const std::string&, const std::string&) const;
template int64_t File::attribute<int64_t>(const std::string&, const std::string&) const;

}  // namespace kiln::h5
