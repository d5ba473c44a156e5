// A quick end-to-end check of a backend's device: a kernel with shared memory, a barrier and warp
// shuffles, run and compared on the host. `kiln info` runs it on the emulator (and on a GPU).
#pragma once

#include <string>

namespace kiln::emu {
std::string device_self_check();  // "ok", or what went wrong
}
namespace kiln::cuda {
std::string device_self_check();
}
