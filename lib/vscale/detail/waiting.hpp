// How the threads of one process wait, in one place: spin within the job's spin budget, then
// sleep on the process's doorbell until a sender rings it; how they are woken; and the
// polling mark that tells senders they need not ring. Internal.
//
// The doorbell is a shared futex in this process's slot of the control segment. Its sleepers
// say what they sleep for (bits): idle executors (kBellExec: a call to run), threads waiting
// for an answer (kBellWait), and the progress thread (kBellProgress), which a sender wakes
// only when there was no executor or waiter to wake (ring_doorbell, transport.hpp).
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>

#include "vscale/detail/transport.hpp"

namespace vscale::detail {

extern thread_local std::uint32_t tl_dozing;  // the bits this thread is counted as sleeping on

/// The pace of one spin: how long it may go on, and a sched_yield now and then so that a
/// thread runnable on this CPU (often the one we wait for) gets it. Paced by the clock, not
/// by turns: an empty poll takes no lock, so a turn is ~15 ns, and a yield every 64 turns (a
/// system call, ~0.5 us on a VM) took a third of the spin and hid what arrived meanwhile.
/// 2-core VM, bench_pmap pmap_batch1 (us a task), yield every 1 / 4 / 20 us: one worker
/// 0.93 / 0.66 / 0.68; two workers (3 processes on 2 CPUs) 1.3 / 1.9 / 2.8. So: often when
/// the job has more processes on this host than CPUs (Waiting::crowded), rarely otherwise.
class SpinPace {
 public:
  SpinPace(std::chrono::nanoseconds budget, const class Waiting& w);
  /// One turn; false when the budget is spent.
  bool turn() noexcept;

 private:
  std::chrono::nanoseconds yield_every() const noexcept;
  const class Waiting& w_;
  std::chrono::steady_clock::time_point until_, next_yield_;
  unsigned n_ = 0;
};

class Waiting {
 public:
  /// Ready for process `self` of segment `seg`, spinning `spin` before sleeping.
  void init(Segment& seg, int self, std::chrono::nanoseconds spin) {
    seg_ = &seg;
    self_ = self;
    spin_ = spin;
    // The spin budget is job-wide: every process uses the master's CPU count, also a worker
    // pinned to fewer CPUs.
    if (seg.header().job_cpus > 0) ncpu_ = static_cast<std::int32_t>(seg.header().job_cpus);
  }
  void set_cpus(std::int32_t n) noexcept { ncpu_ = n; }
  std::chrono::nanoseconds spin_time() const noexcept { return spin_; }

  /// Join the job's spinners if there is a CPU to spare; leave_spinners() when done. One
  /// spinner more than CPUs: in the usual master-and-P-workers-on-P-CPUs job the master waits
  /// while every worker computes, and a master that spins (yielding) picks up the last result
  /// at once instead of paying a futex wake-up per distributed_for step (2-core VM: per-step
  /// loop 1.9x -> 1.35x shared_chunks, bench_advection --n 400 --procs 2).
  bool join_spinners() noexcept {
    auto& n = seg_->header().spinners;
    if (n.fetch_add(1, std::memory_order_relaxed) < ncpu_ + 1) return true;
    n.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  void leave_spinners() noexcept { seg_->header().spinners.fetch_sub(1, std::memory_order_relaxed); }
  /// The job has more processes on this host than CPUs: the one a spinner waits for may well
  /// be runnable on the spinner's CPU. (Spinning threads are no measure: a master waiting on
  /// one worker already has three, its own, its idle executor's and the worker's.)
  bool crowded() const noexcept { return crowded_.load(std::memory_order_relaxed); }
  void set_processes(int n) noexcept { crowded_.store(n > ncpu_, std::memory_order_relaxed); }

  /// Sleep on the doorbell (as `bits`) until it rings or `timeout_ns` passes, unless `ready()`
  /// already holds or `look()` (a last poll of the inbox) finds something.
  template <class Ready, class Look>
  void doze(Ready ready, Look look, std::uint32_t bits, long timeout_ns) {
    auto& bell = seg_->slot(self_).doorbell;
    const std::uint32_t seq = bell.load(std::memory_order_seq_cst);
    if (bits & kBellExec) exec_sleepers_.fetch_add(1, std::memory_order_seq_cst);
    if (bits & kBellWait) wait_sleepers_.fetch_add(1, std::memory_order_seq_cst);
    auto& dozing = seg_->slot(self_).dozing;
    dozing.fetch_add(1, std::memory_order_seq_cst);
    // We are not polling: a sender rings the bell. Look once more before sleeping, so that
    // nothing that arrived before we counted ourselves is missed (tl_dozing: what we complete
    // in that look need not wake us).
    tl_dozing = bits;
    const bool go = !ready() && !look();
    tl_dozing = 0;
    if (go) futex_wait_bits(bell, seq, bits, timeout_ns);
    dozing.fetch_sub(1, std::memory_order_seq_cst);
    if (bits & kBellExec) exec_sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    if (bits & kBellWait) wait_sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }

  /// Wake up to `count` threads of this process dozing for `bits` (kBellExec or kBellWait).
  void wake(std::uint32_t bits, int count) {
    auto& sleepers = bits == kBellExec ? exec_sleepers_ : wait_sleepers_;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // A thread counted as a sleeper that is still looking (doze's last check) needs no wake-up.
    if (sleepers.load(std::memory_order_seq_cst) > ((tl_dozing & bits) ? 1 : 0)) {
      auto& bell = seg_->slot(self_).doorbell;
      bell.fetch_add(1, std::memory_order_seq_cst);
      futex_wake_bits(bell, count, bits);
    }
  }
  /// An answer or a value arrived here: wake every thread waiting for one (they re-check).
  void wake_waiters() { wake(kBellWait, INT_MAX); }

  /// Count the calling thread as polling for this process (senders need not ring); false
  /// from unmark when it was the last one (then make sure nothing was left unpolled).
  void mark_polling() noexcept { seg_->slot(self_).awake.fetch_add(1, std::memory_order_seq_cst); }
  bool unmark_polling() noexcept { return seg_->slot(self_).awake.fetch_sub(1, std::memory_order_seq_cst) != 1; }
  /// The same for a busy mark (ProcSlot::busy): counted as busy before it counts as awake,
  /// and after it no longer does, so that a sender never takes it for a thread that polls.
  void mark_busy() noexcept {
    seg_->slot(self_).busy.fetch_add(1, std::memory_order_seq_cst);
    mark_polling();
  }
  bool unmark_busy() noexcept {
    const bool others = unmark_polling();
    seg_->slot(self_).busy.fetch_sub(1, std::memory_order_seq_cst);
    return others;
  }
  /// A thread already counted as polling becomes busy, and back (Runtime::tl_kept_poll).
  void add_busy() noexcept { seg_->slot(self_).busy.fetch_add(1, std::memory_order_seq_cst); }
  void drop_busy() noexcept { seg_->slot(self_).busy.fetch_sub(1, std::memory_order_seq_cst); }
  /// Busy marks held in this process now.
  std::uint32_t busy() const noexcept { return seg_->slot(self_).busy.load(std::memory_order_seq_cst); }

 private:
  Segment* seg_ = nullptr;
  int self_ = 0;
  std::chrono::nanoseconds spin_{0};
  std::int32_t ncpu_ = 1;
  std::atomic<int> exec_sleepers_{0}, wait_sleepers_{0};
  std::atomic<bool> crowded_{false};
};

inline std::chrono::nanoseconds SpinPace::yield_every() const noexcept {
  using namespace std::chrono_literals;
  return w_.crowded() ? 1us : 4us;
}

inline SpinPace::SpinPace(std::chrono::nanoseconds budget, const Waiting& w) : w_(w) {
  const auto now = std::chrono::steady_clock::now();
  until_ = now + budget;
  next_yield_ = now + yield_every();
}

inline bool SpinPace::turn() noexcept {
  cpu_relax();
  if ((++n_ & 63) != 0) return true;
  const auto now = std::chrono::steady_clock::now();
  if (now > until_) return false;
  if (now >= next_yield_) {
    sched_yield();
    next_yield_ = now + yield_every();
  }
  return true;
}

}  // namespace vscale::detail
