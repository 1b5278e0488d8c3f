// interrupt: cancel the calls running on some workers, which stay usable (Julia's
// Distributed.interrupt, without its julia#58798 bug of leaving workers stuck).
//
// vscale::interrupt({3}) marks every call in flight on process 3 as interrupted. Its user
// code sees vscale::InterruptedException at its next cancellation point:
//   - vscale::check_interrupt(), which long loops should call now and then;
//   - a wait for a remote result: remotecall_fetch, Future::fetch / wait (the remote work
//     itself goes on; its result is dropped);
//   - a RemoteChannel operation blocked on a channel (on its owner, whichever process owns
//     it): the operation is abandoned without taking or putting anything (within 100 ms);
//   - WorkerPool::take waiting for a free worker (abandoned on the pool's owner, as above).
// The interrupted call then fails on its caller as a RemoteException whose type() is
// "vscale::InterruptedException". Calls that start after the interrupt run normally.
// Not cancellation points: plain sleeps, locks and I/O in user code.
#pragma once

#include <cstdint>
#include <vector>

#include "vscale/errors.hpp"

namespace vscale {

/// Interrupt every call in flight on each of `ids` (any process may call it; ids that have
/// exited throw ProcessExitedException). Returns at once.
/// Example: vscale::interrupt({2}); // the loop on worker 2 throws at its next check_interrupt()
void interrupt(const std::vector<int>& ids);
inline void interrupt(int id) { interrupt(std::vector<int>{id}); }

/// Throw InterruptedException if the call this code runs in has been interrupted.
void check_interrupt();
/// Whether the call this code runs in has been interrupted (false outside calls).
bool interrupted() noexcept;

namespace detail {
/// How many times process `id` has been interrupted (read from the control segment).
std::uint32_t interrupts_of(int id);
/// Inside it, waits for remote results are not cancellation points (channel operations wait
/// on the owner, which abandons them itself, so that no value is lost in flight).
struct NoInterrupt {
  NoInterrupt();
  ~NoInterrupt();
  NoInterrupt(const NoInterrupt&) = delete;
  NoInterrupt& operator=(const NoInterrupt&) = delete;
};
}  // namespace detail

}  // namespace vscale
