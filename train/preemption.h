// Preemption: SIGUSR1 (Slurm's --signal=USR1@N warning), SIGTERM (mpirun's and Slurm's first
// word before SIGKILL, best effort) and a first SIGINT (Ctrl-C) ask the run to save and stop; a
// second SIGINT ends the process at once. The handler only sets a flag;
// the trainer polls it at the end of each step and the ranks agree on it (an all-reduce), since
// each rank may see the signal at a different step.
#pragma once

#include <csignal>

namespace kiln {

// Installs the handlers for its lifetime, restoring the previous ones afterwards.
class PreemptionSignals {
 public:
  PreemptionSignals();
  ~PreemptionSignals();
  PreemptionSignals(const PreemptionSignals&) = delete;
  PreemptionSignals& operator=(const PreemptionSignals&) = delete;
  // The signal received since construction (SIGUSR1, SIGTERM or SIGINT), or 0.
  int received() const;

 private:
  struct sigaction previous_usr1_ {
  }, previous_term_{}, previous_int_{};
};

}  // namespace kiln
