#include "train/preemption.h"

#include <pthread.h>
#include <unistd.h>

#include <stdexcept>

namespace kiln {
namespace {

// The one piece of process-wide state a signal handler can touch.
volatile std::sig_atomic_t received_signal = 0;

void on_signal(int signal) {
  // A second Ctrl-C means now: no save (130 is the shell's code for death by SIGINT).
  if (signal == SIGINT && received_signal == SIGINT) _exit(130);
  received_signal = signal;
}

}  // namespace

PreemptionSignals::PreemptionSignals() {
  received_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // system calls in flight (file writes, MPI) carry on
  if (sigaction(SIGUSR1, &action, &previous_usr1_) != 0 || sigaction(SIGTERM, &action, &previous_term_) != 0 ||
      sigaction(SIGINT, &action, &previous_int_) != 0)
    throw std::runtime_error("cannot install the SIGUSR1/SIGTERM/SIGINT handlers");
  // A launcher may start kiln with them blocked; one that arrived before this point is delivered now.
  sigset_t ours;
  sigemptyset(&ours);
  for (int signal : {SIGUSR1, SIGTERM, SIGINT}) sigaddset(&ours, signal);
  pthread_sigmask(SIG_UNBLOCK, &ours, nullptr);
}

PreemptionSignals::~PreemptionSignals() {
  sigaction(SIGUSR1, &previous_usr1_, nullptr);
  sigaction(SIGTERM, &previous_term_, nullptr);
  sigaction(SIGINT, &previous_int_, nullptr);
}

int PreemptionSignals::received() const { return received_signal; }

}  // namespace kiln
