#include "train/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <boost/crc.hpp>
#include <chrono>
#include <stdexcept>

#include "train/tensorboard_event.pb.h"

namespace kiln {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view bytes) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(bytes.data(), bytes.size());
  return crc.checksum();
}

uint32_t masked_crc32c(std::string_view bytes) {
  const uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& run_dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  path_ = fmt::format("{}/events.out.tfevents.{}.{}.{}", run_dir, (int64_t)now_seconds(), host, ::getpid());
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw std::runtime_error(path_ + ": cannot create the TensorBoard event file");
  tensorboard::Event version;
  version.set_wall_time(now_seconds());
  version.set_file_version("brain.Event:2");
  write_record(version.SerializeAsString());
}

void TensorBoardWriter::write_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  tensorboard::Event event;
  event.set_wall_time(now_seconds());
  event.set_step(step);
  for (const auto& [tag, value] : scalars) {
    tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
    v->set_tag(tag);
    v->set_simple_value((float)value);
  }
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& event) {
  char header[8];
  const uint64_t length = event.size();
  for (int i = 0; i < 8; i++) header[i] = (char)(length >> (8 * i));  // little-endian
  auto put32 = [&](uint32_t v) {
    char bytes[4];
    for (int i = 0; i < 4; i++) bytes[i] = (char)(v >> (8 * i));
    out_.write(bytes, 4);
  };
  out_.write(header, 8);
  put32(masked_crc32c(std::string_view(header, 8)));
  out_.write(event.data(), (std::streamsize)event.size());
  put32(masked_crc32c(event));
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": write failed (disk full?)");
}

}  // namespace kiln
