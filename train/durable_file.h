// Writes that survive a crash and never leave a shorter file in place of a longer one: what the
// run directory's small files (latest, manifests, metrics, settings) are written with.
#pragma once

#include <string>

namespace kiln {

// open + fsync + close: the file's (or directory's) contents are on disk when this returns.
void fsync_path(const std::string& path, bool directory);

// Writes `text` to path through path.tmp, checked, fsynced and renamed: readers see the old file or
// the new one. On any failure (a full disk) path is untouched, path.tmp removed, and the error
// names the file.
void write_atomically(const std::string& path, const std::string& text);

}  // namespace kiln
