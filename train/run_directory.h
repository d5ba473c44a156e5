// The run directory's rules: one run at a time, and nothing in it silently overwritten.
//
// RunDirectoryLock holds RUN_DIR/lock with flock(2) for the process's life: the kernel releases it
// when the process ends, kill -9 included, so a crashed run never leaves a stale lock. A second
// run is refused with the holder's pid and host, read from the file.
//
// check_fresh_start() decides whether a run that resumes nothing may start in the directory:
// - step_* checkpoints without a `latest` naming one: refused, naming the newest sound checkpoint
//   to --resume from;
// - metrics of an earlier run with other settings (RUN_DIR/settings.toml records them): refused;
// - the same settings, no checkpoint: the same run starting over (a job killed before its first
//   save and started again), allowed;
// - --force (run.force) allows both refusals.
#pragma once

#include <string>

namespace kiln {

class RunDirectoryLock {
 public:
  // Creates run_dir if needed and takes the lock; throws naming the holder if another process has it.
  explicit RunDirectoryLock(const std::string& run_dir);
  ~RunDirectoryLock();
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// Removes step_*.tmp directories that a killed save left behind (call under the lock). Returns
// how many it removed.
int remove_stale_saves(const std::string& run_dir);

// Throws when a fresh start would overwrite an earlier run's checkpoints or metrics (see above).
void check_fresh_start(const std::string& run_dir, const std::string& settings, bool force);
// Writes RUN_DIR/settings.toml (atomically): the settings of the run now using the directory.
void record_settings(const std::string& run_dir, const std::string& settings);

// "key: old -> new" for every setting that differs between a checkpoint's settings and this
// run's, with what the change means for the data order and the schedule; "" when none differ.
// The run.* and checkpoint.* keys (where and how the run goes) are not compared.
std::string describe_changed_settings(const std::string& saved, const std::string& now);

}  // namespace kiln
