// The per-process runtime (internal): who polls the rings, how requests wait for their
// answers, the executor that runs incoming calls, and the store of values kept for others.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include "vscale/detail/core.hpp"
#include "vscale/detail/protocol.hpp"
#include "vscale/detail/transport.hpp"
#include "vscale/detail/waiting.hpp"

namespace vscale::detail {

// Weight a new handle carries; halved at each forwarding, refilled from the owner when it runs
// out. 2^20 keeps the owner's signed total far from overflow however often a handle is sent.
inline constexpr std::uint64_t kInitialWeight = std::uint64_t(1) << 20;

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
};

/// Work for the executor: an incoming call, or a local function.
struct Task {
  Inbound msg;
  std::function<void()> fn;
  std::uint32_t interrupts = 0;  // the process's interrupt count when the call arrived
};

class ClusterManager;  // master only (cluster_manager.hpp)

/// True on the executor threads: they run queued calls while they wait (so a call that waits
/// on a call back into its own process cannot deadlock).
extern thread_local bool tl_executor;
// The call this thread is running (for vscale::interrupt): whether there is one, the
// process's interrupt count when it started, and how many NoInterrupt scopes are open.
extern thread_local bool tl_in_call;
extern thread_local std::uint32_t tl_call_gen;
extern thread_local int tl_no_interrupt;
[[noreturn]] void throw_interrupted();

class Runtime {
 public:
  Runtime(int self, bool master);
  ~Runtime();

  static Runtime* current() noexcept { return current_.load(std::memory_order_acquire); }
  static Runtime& get(const char* what);

  /// Start polling and executing, with a TBB arena of `threads` threads for incoming calls.
  void start(int threads);
  void stop();
  int threads() const noexcept { return threads_; }
  /// The arena incoming calls run in (threads() slots).
  tbb::task_arena& arena() noexcept { return *arena_; }

  // --- identity and membership
  int self() const noexcept { return self_; }
  bool master() const noexcept { return master_; }
  bool alive(int id) const;
  std::vector<int> alive_ids() const;
  std::string dead_reason(int id) const;
  void check_dest(int id) const;  // throws ProcessExitedException

  // --- messages
  /// Send one message. A thread that may block waits for ring space; the poller never
  /// blocks (what does not fit waits in an overflow queue, sent in order later).
  void send(int dest, std::uint16_t kind, const void* a, std::size_t na, const void* b = nullptr,
            std::size_t nb = 0, bool may_block = true);
  /// Send one protocol message (protocol.hpp): its head, then `payload`.
  template <class Head>
  void send_msg(int dest, const Head& head, const void* payload = nullptr, std::size_t n = 0, bool may_block = true) {
    send(dest, Head::kind, &head, head_size<Head>(), payload, n, may_block);
  }
  std::shared_ptr<Request> new_request(int dest, std::uint64_t& id, std::function<void(Request&)> on_done = {});
  void drop_request(std::uint64_t id);
  /// Questions of this process to `id` still unanswered (remote calls and fetches waited on).
  std::size_t pending_requests_to(int id);
  void await_request(Request& r, bool interruptible = false);
  void reply_result(int dest, std::uint64_t req, bool ok, const void* data, std::size_t len, bool may_block);
  void reply_error(int dest, std::uint64_t req, const ErrorInfo& e, bool may_block);

  // --- waiting
  /// Wait until pred() holds. `interruptible`: give up with InterruptedException when the
  /// call this thread runs is interrupted (waits for a remote result only; never inside the
  /// runtime's own protocols).
  template <class Pred>
  void wait_until(Pred pred, bool interruptible = false);
  /// Whether the call this thread runs has been interrupted (false outside calls and inside
  /// NoInterrupt scopes).
  bool call_interrupted() const noexcept {
    return tl_in_call && tl_no_interrupt == 0 && seg_.slot(self_).interrupts.load(std::memory_order_acquire) != tl_call_gen;
  }
  bool poll_once();
  void notify_local();

  // --- executor
  void push_task(Task&& t);
  bool run_one_task();

  // --- reference store (values this process keeps for others)
  std::shared_ptr<FutureCore> store_new(const RefId& id, std::uint64_t weight);
  WireRef export_ref(const std::shared_ptr<FutureCore>& core);
  std::shared_ptr<FutureCore> import_ref(const WireRef& w);
  void release_weight(const RefId& id, std::uint64_t weight);
  std::uint64_t next_seq() { return seq_.fetch_add(1, std::memory_order_relaxed) + 1; }

  /// The job's spin budget (waiting.hpp).
  bool try_spin() noexcept { return waiting_.join_spinners(); }
  void leave_spin() noexcept { waiting_.leave_spinners(); }

  Stats stats() const;
  Segment& segment() noexcept { return seg_; }
  std::atomic<bool>& exit_requested() noexcept { return exit_requested_; }
  ClusterManager* manager = nullptr;  // master only: starts, watches and stops the workers
  int master_os_pid = 0;         // worker only
  std::atomic<int> any_cursor{0};

 private:
  friend class Session;
  friend struct PollingMark;
  void kick_self_if_pending();
  void dispatch(Inbound&& m);
  static void deliver(void* self, Inbound&& m);  // the transport's sink: dispatch
  void handle_membership();
  void handle_ref_query(Inbound& m);
  void run_task(Task& t);
  void progress_loop();
  void executor_loop(bool in_arena);

  static std::atomic<Runtime*> current_;
  int self_;
  bool master_;
  // Every process on this host is reached through the shared-memory transport (used as its
  // concrete type: no virtual call on the hot path).
  ShmTransport shm_;
  Segment& seg_ = shm_.segment();
  std::vector<std::uint8_t> known_dead_;  // guarded by poll_m_

  std::mutex poll_m_;
  std::vector<int> peers_;  // guarded by poll_m_
  std::uint32_t seen_epoch_ = ~0u;

  std::mutex req_m_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Request>> reqs_;
  std::atomic<std::uint64_t> next_req_{0};
  std::atomic<std::uint64_t> seq_{0};

  Waiting waiting_;  // spinning, dozing on the doorbell, waking (waiting.hpp)
  template <class Ready>
  void doze(Ready ready, std::uint32_t bits, long timeout_ns) {
    waiting_.doze(ready, [this] { return poll_once(); }, bits, timeout_ns);
  }

  std::mutex q_m_;
  std::deque<Task> q_;
  std::atomic<std::size_t> q_size_{0};

  mutable std::mutex store_m_;
  // Weight is signed: messages about a value can reach its owner before the call that makes
  // it (they travel on different rings), so an entry may start as a pending placeholder that
  // owes weight, and the kCallRef settles it.
  struct Entry {
    std::shared_ptr<FutureCore> core;
    std::int64_t weight = 0;
  };
  Entry& store_entry(const RefId& id);  // with store_m_ held: find, or create a placeholder
  void store_settle(std::unordered_map<RefId, Entry, RefIdHash>::iterator it, std::shared_ptr<FutureCore>& dropped);
  std::unordered_map<RefId, Entry, RefIdHash> store_;
  std::mutex reg_m_;
  std::unordered_map<RefId, std::weak_ptr<FutureCore>, RefIdHash> registry_;  // non-owned cores here

  // Executors. Up to threads_ "arena executors" run calls inside arena_ (-t T): the first
  // at start, another whenever a call is queued while all of them are busy, so that T calls
  // run at once and a tbb::parallel_for inside a call gets the arena's idle slots. Each
  // enters the arena per call (tbb::task_arena::execute, ~40 ns) and leaves it when idle:
  // an idle thread parked in a slot would keep TBB's workers out of it, and a call started
  // on another thread would then run on one thread (seen with -p 0 -t 2: one rep in ten at
  // half speed). For the same reason the arena reserves no slot for non-TBB threads.
  // Beyond those, one more executor whenever queued work has waited a few ms with every
  // executor busy (a call blocked in sleep or on a lock must not starve the call that would
  // unblock it; Julia's tasks give the same guarantee); these run outside the arena (it may
  // be full of blocked calls: that is why they were grown). Capped by VSCALE_MAX_EXECUTORS.
  void maybe_add_executor();
  // A call was queued: wake an idle executor unless one is spinning on the queue, and start
  // another arena executor if all are busy.
  void offer_to_executors();
  void maybe_grow_executors();
  void add_executor(bool in_arena);  // with exec_m_ held
  int threads_ = 1;
  std::unique_ptr<tbb::global_control> tbb_limit_;
  std::unique_ptr<tbb::task_arena> arena_;
  std::mutex exec_m_;
  std::atomic<int> nexec_{0};        // all executors
  std::atomic<int> arena_execs_{0};  // of which arena executors (<= threads_)
  std::atomic<int> busy_{0};
  std::atomic<int> exec_spinning_{0};  // idle executors spinning on the queue (no wake-up needed)
  std::atomic<std::int64_t> queued_since_{0};  // steady_clock ns when the queue became non-empty while all were busy
  int max_exec_ = 256;

  std::chrono::nanoseconds spin_us_;  // VSCALE_SPIN_US, read at construction
  std::atomic<bool> stopping_{false};
  std::atomic<bool> exit_requested_{false};
  std::thread progress_;
  std::vector<std::thread> executors_;
  std::atomic<std::int32_t> nprocs_{1};  // processes in the job (refreshed on membership change)

 public:
  friend struct FutureCore;
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

template <class Pred>
void Runtime::wait_until(Pred pred, bool interruptible) {
  if (pred()) return;
  for (bool spin = true; !pred();) {
    if (interruptible && call_interrupted()) throw_interrupted();
    // Queued calls run here with no awake mark held: a call that waits in turn and sleeps
    // must not leave this thread counted as polling, or senders would not wake it (nested
    // calls then cost a doze timeout per level).
    if (tl_executor && run_one_task()) {
      spin = true;
      continue;
    }
    // Spin first, within the job-wide budget: a waiter that sleeps costs a futex wake-up, and
    // on a VM an idle vCPU takes tens of microseconds to come back. The spinner yields often,
    // so with more processes than CPUs the workers it waits for still get the CPU.
    if (spin && try_spin()) {
      spin = false;
      {
        PollingMark polling(*this);
        const auto until = std::chrono::steady_clock::now() + waiting_.spin_time();
        unsigned n = 0;
        while (!pred()) {
          if (poll_once()) continue;
          if ((tl_executor && q_size_.load(std::memory_order_acquire) > 0) || (interruptible && call_interrupted())) {
            spin = true;  // handled above, then spin again
            break;
          }
          cpu_relax();
          if ((++n & 63) == 0) {
            if (std::chrono::steady_clock::now() > until) break;
            sched_yield();  // a thread woken on this CPU (the one we may be waiting for) runs now
          }
        }
      }
      leave_spin();
      continue;
    }
    doze([&] { return pred() || (tl_executor && q_size_.load() > 0) || (interruptible && call_interrupted()); },
         tl_executor ? kBellWait | kBellExec : kBellWait, 50'000'000L);
  }
}

}  // namespace vscale::detail
