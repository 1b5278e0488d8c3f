// Barrier's non-template part: construction (on the master, or asked of it), the crossing,
// and the slow path (futex sleep, liveness checks, the broken state).
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <ctime>
#include <string>

#include "vscale/barrier.hpp"
#include "vscale/ext.hpp"

namespace vscale {

namespace {

// A waiter spins this long before it sleeps: long enough to cover the skew of processes that
// finish a balanced step at about the same time (a futex wake-up costs several microseconds
// and the sleeper's CPU may have gone idle), short enough not to burn a core while one
// participant is still far behind.
constexpr auto kSpin = std::chrono::microseconds(40);
// How often a sleeper looks whether every participant still runs.
constexpr long kSleepNs = 100'000'000L;

// The futex calls take a plain word; the state array's words are only ever accessed through
// std::atomic_ref, which for uint32_t is lock-free and has the word's own size and layout.
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free);

// Shared futexes (ext.hpp): the waiter and the waker are different processes, and the kernel
// keys a shared futex on the memfd page, not on the (per-process) address.
using ext::futex_wait;
void futex_wake_all(std::uint32_t* word) { ext::futex_wake(word, INT_MAX); }

std::string pid_list(const std::vector<int>& pids) {
  std::string s;
  for (int p : pids) s += (s.empty() ? "" : ", ") + std::to_string(p);
  return "{" + s + "}";
}

// The master makes the state array (SharedArrays are created there) for a worker's Barrier.
Barrier make_on_master(std::vector<int> pids) { return Barrier(pids); }

}  // namespace

Barrier::Barrier(const std::vector<int>& pids) {
  if (pids.empty()) throw UsageError("vscale: Barrier needs at least one process");
  for (std::size_t a = 0; a < pids.size(); ++a)
    for (std::size_t b = a + 1; b < pids.size(); ++b)
      if (pids[a] == pids[b])
        throw UsageError("vscale: Barrier" + pid_list(pids) + ": process " + std::to_string(pids[a]) +
                         " is listed twice (each participant waits once per phase)");
  for (int p : pids)
    if (!ext::alive(p))
      throw UsageError("vscale: Barrier" + pid_list(pids) + ": process " + std::to_string(p) + " " +
                       ext::dead_reason(p) + " (procs() = " + pid_list(procs()) + ")");
  if (!ext::is_master()) {
    *this = remotecall_fetch(1, &make_on_master, pids);
    return;
  }
  // Each participant maps (and pins) the state while the master's handle lives, so that
  // the first wait() in a call does not have to fetch the memfd.
  state_ = SharedArray<std::uint32_t, 1>(kWords, vscale::pids(pids));
}

std::string Barrier::describe() const { return "vscale::Barrier over processes " + pid_list(pids()); }

void Barrier::wait() const {
  if (!state_.valid()) throw UsageError("vscale: wait() on an empty Barrier (moved-from or default-constructed)");
  const int me = myid();
  bool member = false;
  for (int p : state_.pids()) member |= p == me;
  if (!member)
    throw UsageError("vscale: process " + std::to_string(me) + " called wait() on a " + describe() +
                     ", which it does not take part in");
  std::uint32_t* w = state_.data();
  std::atomic_ref<std::uint32_t> count(w[kCount]), generation(w[kGeneration]);
  if (const std::uint32_t dead = std::atomic_ref<std::uint32_t>(w[kBroken]).load(std::memory_order_relaxed))
    throw_broken(static_cast<int>(dead));
  // Read the generation before arriving: the phase cannot end without us, so this is the
  // generation of the phase we arrive in.
  const std::uint32_t g = generation.load(std::memory_order_acquire);
  // acq_rel: the last arriver acquires every earlier arrival (they form one release
  // sequence), and its generation bump then publishes all of them to the waiters.
  if (count.fetch_add(1, std::memory_order_acq_rel) + 1 == state_.pids().size()) {
    // Reset before the bump: a waiter's next arrival happens after it has seen the bump.
    count.store(0, std::memory_order_relaxed);
    // seq_cst store and load against the sleepers' seq_cst increment and re-check: either we
    // see a sleeper and wake it, or it sees the new generation and does not sleep.
    generation.store(g + 1, std::memory_order_seq_cst);
    if (std::atomic_ref<std::uint32_t>(w[kSleepers]).load(std::memory_order_seq_cst) != 0)
      futex_wake_all(&w[kGeneration]);
    return;
  }
  // A balanced crossing completes within a few hundred pauses: wait those out first, without
  // touching the job-wide spinner count (one more contended cache line per crossing).
  for (unsigned n = 0; n < 128; ++n) {
    if (generation.load(std::memory_order_acquire) != g) return;
    ext::cpu_relax();
  }
  // Spin on only within the job's spin budget (one spinner more than CPUs, shared with the
  // runtime's idle threads): where every CPU already has a spinner, spinning only delays the
  // participant we wait for.
  if (ext::SpinPlace place; place) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (unsigned n = 1;; ++n) {
      if (generation.load(std::memory_order_acquire) != g) return;
      ext::cpu_relax();
      if ((n & 63) == 0) {
        if (std::chrono::steady_clock::now() > until) break;
        // On a busy (or oversubscribed) host the participant we wait for may be runnable on
        // this very CPU.
        if ((n & 255) == 0) sched_yield();
      }
    }
  } else {
    sched_yield();
    if (generation.load(std::memory_order_acquire) != g) return;
  }
  wait_slow(g);
}

void Barrier::wait_slow(std::uint32_t g) const {
  std::uint32_t* w = state_.data();
  std::atomic_ref<std::uint32_t> generation(w[kGeneration]), sleepers(w[kSleepers]), broken(w[kBroken]);
  struct Sleeping {  // counted while we may be inside FUTEX_WAIT
    std::atomic_ref<std::uint32_t>& s;
    explicit Sleeping(std::atomic_ref<std::uint32_t>& c) : s(c) { s.fetch_add(1, std::memory_order_seq_cst); }
    ~Sleeping() { s.fetch_sub(1, std::memory_order_relaxed); }
  } sleeping(sleepers);
  while (generation.load(std::memory_order_seq_cst) == g) {
    if (const std::uint32_t dead = broken.load(std::memory_order_acquire)) throw_broken(static_cast<int>(dead));
    // Returns at once when the generation has moved already (EAGAIN), on a wake-up, on a
    // signal, or after the timeout; the loop re-checks in every case.
    if (futex_wait(&w[kGeneration], g, kSleepNs) == 0 || errno != ETIMEDOUT) continue;
    if (generation.load(std::memory_order_acquire) != g) break;
    const auto alive = procs();
    for (int p : state_.pids()) {
      bool found = false;
      for (int q : alive) found |= q == p;
      if (found) continue;
      // Mark the barrier broken (the first finder's pid stays) and wake every sleeper, so that
      // all participants fail now rather than each at its next timeout.
      std::uint32_t expected = 0;
      broken.compare_exchange_strong(expected, static_cast<std::uint32_t>(p), std::memory_order_acq_rel);
      futex_wake_all(&w[kGeneration]);
      throw_broken(p);
    }
  }
  std::atomic_thread_fence(std::memory_order_acquire);
}

void Barrier::throw_broken(int dead) const {
  std::string reason = "exited";
  try {
    reason = ext::dead_reason(dead);
  } catch (const Error&) {
    // no Session any more: keep the plain word
  }
  throw ProcessExitedException(dead, reason + "; the " + describe() + " can no longer complete (process " +
                                         std::to_string(dead) + " will never arrive; waited in process " +
                                         std::to_string(myid()) + ")");
}

}  // namespace vscale
