// The per-process runtime (internal): it dispatches what the transport delivers, keeps the
// questions this process waits on, and joins the executor (executor.hpp), the reference store
// (ref_store.hpp), waiting (waiting.hpp) and the transport (transport.hpp) into one process.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "vscale/detail/core.hpp"
#include "vscale/detail/executor.hpp"
#include "vscale/detail/protocol.hpp"
#include "vscale/detail/ref_store.hpp"
#include "vscale/detail/transport.hpp"
#include "vscale/detail/waiting.hpp"

namespace vscale::detail {

/// An outstanding question to another process (call_fetch, fetch, wait, isready, addref).
struct Request {
  std::atomic<int> done{0};
  int dest = 0;
  bool ok = false;
  Inbound reply;
  const char* payload = nullptr;  // within reply, after the result header
  std::size_t payload_len = 0;
  ErrorInfo error;
  /// Called (on the polling thread, must not block) once the answer or the failure is in.
  std::function<void(Request&)> on_done;
  // A question about a Future that several threads may wait on, each giving up at its own
  // deadline (Future::wait_for): under keep_m, how many wait now, and whether the answer is
  // in (set by on_done, before `done`). An answer that comes when nobody waits is moved out
  // of the sender's bulk area, which must not stay pinned until the next waiter takes it.
  std::mutex keep_m;
  int waiting = 0;
  bool answered = false;
  /// Settle with `e` and tell whoever waits (on the polling thread).
  void fail(ErrorInfo e);
};

/// The questions this process waits on, by request number. The usual few live in a small
/// direct-mapped array (request numbers grow by one, so the ones in flight at a time rarely
/// collide); the rest in a map. A synchronous call's Request is the caller's own (add_borrowed):
/// no allocation per call.
class RequestTable {
 public:
  std::shared_ptr<Request> add(int dest, std::uint64_t& id, std::function<void(Request&)> on_done = {});
  /// Register `r`, which the caller owns and keeps until the answer is in (`done`) or it
  /// withdraws the question (withdraw); the table holds it without owning it.
  void add_borrowed(Request& r, int dest, std::uint64_t& id);
  /// Take `id` out unanswered; false when an answer or a failure took it first.
  bool drop(std::uint64_t id);
  /// Take a borrowed `r` (number `id`) out before it goes: if the poller took it first, wait
  /// the moment until it has settled it (it sets `done` last).
  void withdraw(std::uint64_t id, Request& r);
  /// The question `id` answers, taken out of the table (null if abandoned).
  std::shared_ptr<Request> take(std::uint64_t id);
  std::size_t pending_to(int dest);
  /// Every question to one of `dead`, taken out of the table.
  std::vector<std::shared_ptr<Request>> take_to(const std::vector<int>& dead);

 private:
  void insert(std::uint64_t id, std::shared_ptr<Request> r);
  static constexpr std::size_t kDirect = 64;
  struct Slot {
    std::uint64_t id = 0;  // 0: empty (numbers start at 1)
    std::shared_ptr<Request> r;
  };
  std::mutex m_;
  Slot direct_[kDirect];
  std::unordered_map<std::uint64_t, std::shared_ptr<Request>> overflow_;
  std::atomic<std::uint64_t> next_{0};
};

class ClusterManager;  // master only (cluster_manager.hpp)

// The call this thread is running (for vscale::interrupt): whether there is one, the
// process's interrupt count when it started, and how many NoInterrupt scopes are open.
extern thread_local bool tl_in_call;
extern thread_local std::uint32_t tl_call_gen;
extern thread_local int tl_no_interrupt;
[[noreturn]] void throw_interrupted();

class Runtime final : private ExecutorHost {
 public:
  Runtime(int self, bool master);
  ~Runtime();
  static Runtime* current() noexcept { return current_.load(std::memory_order_acquire); }
  static Runtime& get(const char* what);  // throws UsageError without a Session

  /// Start polling and executing, with a TBB arena of `threads` threads for incoming calls.
  void start(int threads);
  void stop();
  int threads() const noexcept { return exec_.threads(); }
  Executor& executor() noexcept { return exec_; }
  RefStore& refs() noexcept { return refs_; }

  int self() const noexcept { return self_; }
  bool master() const noexcept { return master_; }
  bool alive(int id) const;
  std::vector<int> alive_ids() const;
  std::string dead_reason(int id) const;
  void check_dest(int id) const;  // throws ProcessExitedException

  /// Send one message. A thread that may block waits for ring space; the poller never
  /// blocks (what does not fit waits in an overflow queue, sent in order later).
  void send(int dest, std::uint16_t kind, const void* a, std::size_t na, const void* b = nullptr,
            std::size_t nb = 0, bool may_block = true);
  /// Send one protocol message (protocol.hpp): its head, then `payload`.
  template <class Head>
  void send_msg(int dest, const Head& head, const void* payload = nullptr, std::size_t n = 0, bool may_block = true);
  RequestTable& requests() noexcept { return reqs_; }
  void await_request(Request& r, bool interruptible = false);
  void reply_result(int dest, std::uint64_t req, bool ok, const void* data, std::size_t len, bool may_block);
  void reply_error(int dest, std::uint64_t req, const ErrorInfo& e, bool may_block);

  /// Wait until pred() holds. `interruptible`: give up with InterruptedException when the
  /// call this thread runs is interrupted (waits for a remote result only).
  template <class Pred>
  void wait_until(Pred pred, bool interruptible = false);
  /// Whether the call this thread runs has been interrupted (false outside calls and inside
  /// NoInterrupt scopes).
  bool call_interrupted() const noexcept;
  bool poll_once();
  /// One poll now, waiting for the poll lock if another thread holds it: every message that
  /// was in a ring here when this was called has been dispatched when it returns.
  void poll_now();
  /// `id` is dead and everything it wrote here before has been delivered.
  bool drained(int id) const noexcept {
    return seg_.valid_id(id) && drained_[id - 1].load(std::memory_order_acquire) != 0;
  }
  void notify_local() { waiting_.wake_waiters(); }  // an answer or a value arrived here
  /// The call this thread runs is about to block (a doze, a channel's or a barrier's wait):
  /// it stops counting as polling (run_task's busy mark), so that senders wake this process.
  void leave_busy() noexcept;
  bool try_spin() noexcept { return waiting_.join_spinners(); }  // the job's spin budget
  void leave_spin() noexcept { waiting_.leave_spinners(); }
  /// Spin while polling until pred() holds, for at most the spin time, within the job's spin
  /// budget (false at once without a place in it). Returns pred()'s last answer.
  template <class Pred>
  bool spin_polling(Pred pred);
  /// The spin itself, with a place in the budget held: poll until stop() or the spin time is
  /// up, yielding often. Returns stop()'s last answer.
  template <class Stop>
  bool spin_loop(Stop stop);

  Stats stats() const;
  Segment& segment() noexcept { return seg_; }
  std::atomic<bool>& exit_requested() noexcept { return exit_requested_; }
  ClusterManager* manager = nullptr;  // master only: starts, watches and stops the workers
  int master_os_pid = 0;              // worker only
  std::atomic<int> any_cursor{0};

 private:
  friend struct PollingMark;
  void run_task(Task& t) override;
  bool idle(bool in_arena, Task& t) override;
  void serving_done() noexcept override;
  void drop_kept_poll() noexcept;  // gives back what idle() kept for the call (see tl_kept_poll)
  void wake_executor() override { waiting_.wake(kBellExec, 1); }
  void kick_self_if_pending();
  bool enter_busy() noexcept;  // run_task's busy mark (see runtime.cpp); true if taken
  void end_busy() noexcept;
  void dispatch(Inbound&& m);
  static void deliver(void* self, Inbound&& m);  // the transport's sink: dispatch
  void handle_membership();
  void handle_ref_query(Inbound& m);
  bool poll_locked(std::size_t per_peer);  // poll_once's work, with poll_m_ held
  // The idle -t 1 executor's poll: the first call it finds goes to `*direct_` instead of the
  // queue when the queue is empty (it is then the oldest work; ~470 instructions of queueing
  // a round trip saved, callgrind). Guarded by poll_m_.
  Task* direct_ = nullptr;
  bool direct_taken_ = false;
  // What one poll takes from each ring: the rest waits there, not in the executor's queue (a
  // stream of remote_do filled the queue with a ring's worth, ~1,000 Tasks, and regrew it after
  // every burst: ~240 instructions a call, callgrind). Whoever polls comes back for the rest.
  static constexpr std::size_t kPollBatch = 256;
  void run_inline(Inbound& m);  // kCallInline: the call, here and now (on the polling thread)
  void ask_weight(const RefId& id, std::uint64_t weight);
  void progress_loop();
  template <class Ready>
  void doze(Ready ready, std::uint32_t bits, long timeout_ns);

  static std::atomic<Runtime*> current_;
  int self_;
  bool master_;
  // Every process on this host is reached through the shared-memory transport (used as its
  // concrete type: no virtual call on the hot path).
  ShmTransport shm_;
  Segment& seg_ = shm_.segment();
  std::mutex poll_m_;
  std::vector<std::uint8_t> known_dead_;  // guarded by poll_m_
  std::unique_ptr<std::atomic<std::uint8_t>[]> drained_;  // by id - 1: dead, and its ring read
  std::vector<int> peers_;                // guarded by poll_m_
  std::vector<Task> calls_;               // calls this poll found, guarded by poll_m_
  std::atomic<std::uint32_t> seen_epoch_{~0u};  // written under poll_m_
  // The rings from peers_, readable without poll_m_ (poll_once's first look): written by
  // handle_membership, entries only ever valid rings (the segment maps every pair's).
  std::unique_ptr<std::atomic<RingHeader*>[]> ring_view_;
  std::atomic<int> nring_view_{0};
  bool nothing_to_poll() const noexcept;
  // poll_once, handing the first call to `*t` if not null (direct_); `took` says it did.
  bool poll_handing(Task* t, bool& took);
  RequestTable reqs_;
  std::atomic<std::uint64_t> seq_{0};
  Waiting waiting_;  // spinning, dozing on the doorbell, waking (waiting.hpp)
  Executor exec_{*this};
  RefStore refs_;
  std::chrono::nanoseconds spin_us_;  // VSCALE_SPIN_US, read at construction
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exit_requested_{false};
  std::atomic<bool> progress_sleeps_long_{false};  // the progress thread is not ticking
  std::atomic<std::uint64_t> busy_taken_{0};       // busy marks taken so far (enter_busy)
  std::thread progress_;
  friend RefId new_ref_id();
};

/// Counts the calling thread as polling for this process while it lives, so that senders
/// need not wake anyone; the last one out makes sure nothing was left unpolled.
struct PollingMark {
  explicit PollingMark(Runtime& r) : rt(r) { rt.waiting_.mark_polling(); }
  ~PollingMark() {
    if (!rt.waiting_.unmark_polling()) rt.kick_self_if_pending();
  }
  Runtime& rt;
};

template <class Head>
void Runtime::send_msg(int dest, const Head& head, const void* payload, std::size_t n, bool may_block) {
  send(dest, Head::kind, &head, head_size<Head>(), payload, n, may_block);
}

inline bool Runtime::call_interrupted() const noexcept {
  return tl_in_call && tl_no_interrupt == 0 && seg_.slot(self_).interrupts.load(std::memory_order_acquire) != tl_call_gen;
}

template <class Ready>
void Runtime::doze(Ready ready, std::uint32_t bits, long timeout_ns) {
  // The last look is a poll like any other, under the polling mark: a sender that finds its
  // earlier messages unread does not wake us, so whoever drains must look again or, leaving,
  // have the progress thread look (PollingMark's end).
  leave_busy();
  waiting_.doze(ready, [this] {
    PollingMark polling(*this);
    return poll_once();
  }, bits, timeout_ns);
}

template <class Stop>
bool Runtime::spin_loop(Stop stop) {
  struct Leave {
    Runtime& rt;
    ~Leave() { rt.leave_spin(); }
  } leave{*this};  // (stop may throw)
  PollingMark polling(*this);
  SpinPace pace(waiting_.spin_time(), waiting_);
  bool got;
  while (!(got = stop())) {
    if (poll_once()) continue;
    if (!pace.turn()) break;
  }
  return got;
}

template <class Pred>
bool Runtime::spin_polling(Pred pred) {
  if (pred()) return true;
  if (!try_spin()) return false;
  return spin_loop(pred);
}

template <class Pred>
void Runtime::wait_until(Pred pred, bool interruptible) {
  if (pred()) return;
  for (bool spin = true; !pred();) {
    if (interruptible && call_interrupted()) throw_interrupted();
    // Queued calls run here with no awake mark held: a call that waits in turn and sleeps
    // must not leave this thread counted as polling, or senders would not wake it (nested
    // calls then cost a doze timeout per level).
    if (tl_executor && exec_.run_one()) {
      spin = true;
      continue;
    }
    // Spin first, within the job-wide budget: a waiter that sleeps costs a futex wake-up, and
    // on a VM an idle vCPU takes tens of microseconds to come back. The spinner yields often,
    // so with more processes than CPUs the workers it waits for still get the CPU.
    if (spin && try_spin()) {
      spin = false;
      spin_loop([&] {
        if (pred()) return true;
        if ((tl_executor && exec_.queued()) || (interruptible && call_interrupted())) {
          spin = true;  // handled above, then spin again
          return true;
        }
        return false;
      });
      continue;
    }
    doze([&] { return pred() || (tl_executor && exec_.queued()) || (interruptible && call_interrupted()); },
         tl_executor ? kBellWait | kBellExec : kBellWait, 50'000'000L);
  }
}

}  // namespace vscale::detail
