// The extension tier: what code built on the runtime (SharedArray, Barrier, kernels, your own
// cross-process structures) needs from it, without the runtime's internals. Public but
// advanced: most programs never include it. Nothing outside lib/ includes detail/runtime.hpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "vscale/remotecall.hpp"

namespace vscale::ext {

/// Whether a Session runs in this process now (never throws: for destructors).
bool session_running() noexcept;
/// Whether this process is the master (process 1). Throws UsageError without a Session.
bool is_master();
/// Whether process `id` is a live member of the session now.
bool alive(int id);
/// Why `id` is not alive ("killed by SIGKILL", "does not exist (no such process id)", ...).
std::string dead_reason(int id);
/// Questions of this process to `id` still unanswered (remote calls and fetches waited on):
/// what fails with ProcessExitedException if `id` dies now.
std::size_t pending_requests_to(int id);

/// The job-wide spin budget: one spinner more than the job's CPUs, shared by every waiting
/// thread of every process. Spin only while you hold a place: a spinner on a full machine
/// only delays the thread it waits for. Example:
///     if (vscale::ext::SpinPlace place; place) { /* spin a while */ } else { /* sleep */ }
class SpinPlace {
 public:
  SpinPlace();
  ~SpinPlace();
  SpinPlace(const SpinPlace&) = delete;
  SpinPlace& operator=(const SpinPlace&) = delete;
  explicit operator bool() const noexcept { return held_; }

 private:
  bool held_;
};

/// Sleep while `word` (in memory shared between processes) still holds `expected`, at most
/// `timeout_ns` (< 0: no limit). A shared futex (no FUTEX_PRIVATE_FLAG): the waker may be
/// another process. Returns 0 when woken, -1 with errno (EAGAIN, ETIMEDOUT, EINTR) otherwise.
int futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, long timeout_ns);
/// Wake up to `count` threads sleeping on `word`, in any process. Returns how many woke.
int futex_wake(std::atomic<std::uint32_t>& word, int count);
/// The same on a plain word that is only ever accessed through std::atomic_ref (a word of a
/// SharedArray, say).
int futex_wait(std::uint32_t* word, std::uint32_t expected, long timeout_ns);
int futex_wake(std::uint32_t* word, int count);

/// A pause for spin loops (PAUSE on x86, YIELD on Arm).
using detail::cpu_relax;

/// remote_do that never waits for ring space (a full ring queues it, sent in order) and
/// never throws (a message to a process that is gone is dropped): for code that runs where
/// blocking could deadlock or throwing is not allowed (destructors, the polling thread).
template <class F, class... A>
void post(int pid, F&& f, A&&... args) noexcept {
  try {
    detail::do_call(pid, false, std::forward<F>(f), std::forward<A>(args)...);
  } catch (...) {
  }
}

}  // namespace vscale::ext
