// Barrier: a reusable barrier across processes (and Julia's missing piece for persistent
// SharedArray kernels: one long call per process, a barrier between time steps, instead of
// one round of remote calls per step).
//
//   vscale::Barrier bar(vscale::procs(a));        // on the master, over the array's processes
//   for (int p : vscale::procs(a))
//     calls.push_back(vscale::remotecall(p, [](const Array& a, const vscale::Barrier& bar) {
//       for (int step = 0; step < 100; ++step) { update_my_part(a, step); bar.wait(); }
//     }, a, bar));
//
// The state (an arrival count and a generation number, on separate cache lines) lives in a
// SharedArray that every participant maps, so a Barrier handle travels to workers like a
// SharedArray does. wait() counts itself in; the last arriver of a phase resets the count and
// bumps the generation, and the others, having read the generation before arriving, leave as
// soon as it changes: a crossing costs a few cache-line transfers when everyone spins. A
// waiter spins for a few tens of microseconds, then sleeps on the generation word with a
// shared futex (FUTEX_WAIT on MAP_SHARED memory works across processes; std::atomic::wait
// would not). Sleepers wake every 100 ms to check that all participants still run: when one
// has died (or was removed), wait() throws ProcessExitedException naming it, and the barrier
// is marked broken so that every other participant's wait() throws too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vscale/errors.hpp"
#include "vscale/shared_array.hpp"

namespace vscale {

/// A barrier for a fixed set of processes, reusable for any number of phases. Exactly one
/// thread per participating process calls wait() per phase. Copies are handles to the same
/// barrier; handles can be passed to remote calls. Example: Barrier b({2, 3}); ... b.wait();
class Barrier {
 public:
  /// An unusable handle (what a handle is before it is received).
  Barrier() = default;
  /// A barrier for the processes `pids` (distinct, running). Can be made on any process: a
  /// worker asks the master to make it.
  explicit Barrier(const std::vector<int>& pids);
  /// A barrier for procs(S), the processes that share S.
  template <class T, std::size_t N>
  explicit Barrier(const SharedArray<T, N>& s) : Barrier(procs(s)) {}

  /// Block until every participant has called wait() in this phase. Throws UsageError on a
  /// process that does not take part, ProcessExitedException when a participant is gone.
  void wait() const;
  /// The same as wait() (std::barrier's name).
  void arrive_and_wait() const { wait(); }

  /// Number of participating processes.
  std::size_t size() const noexcept { return state_.pids().size(); }
  /// The participating processes.
  const std::vector<int>& pids() const noexcept { return state_.pids(); }
  /// False for a default-constructed or moved-from handle.
  bool valid() const noexcept { return state_.valid(); }

  template <class A>
  void save(A& ar) const {
    if (!state_.valid()) throw UsageError("vscale: cannot send an empty Barrier (moved-from or default-constructed)");
    ar(state_);
  }
  template <class A>
  void load(A& ar) {
    ar(state_);
  }

  // Word positions in the state array: one cache line (16 words) apart, so arrivals
  // (count) do not disturb the spinners (generation), and the rarely written words stay
  // out of both.
  static constexpr std::size_t kCount = 0, kGeneration = 16, kSleepers = 32, kBroken = 33, kWords = 48;

 private:
  void wait_slow(std::uint32_t generation) const;
  [[noreturn]] void throw_broken(int dead) const;
  std::string describe() const;

  SharedArray<std::uint32_t, 1> state_;
};

}  // namespace vscale
