// The executor (internal): the queue of work a process runs for others, the TBB arena it runs
// in, and the threads that take it. It runs Tasks and knows no message kinds: its host (the
// runtime) says how one runs, how an idle thread waits, and how one is woken.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include "vscale/detail/transport.hpp"

namespace vscale::detail {

/// Work for the executor: an incoming call (opaque here), or a local function.
struct Task {
  Inbound msg;
  std::function<void()> fn;
  std::uint32_t interrupts = 0;  // the process's interrupt count when the call arrived
  /// Release what a moved-from or finished Task may still hold (a move leaves it empty in
  /// practice: cheaper to check than to assign a fresh Task).
  void clear() noexcept {
    msg.release();
    fn = nullptr;
    if (msg.heap.capacity() != 0) std::vector<char>().swap(msg.heap);
  }
};

/// A FIFO of Tasks in one growing ring buffer (a deque of Tasks allocates a block every
/// couple of pushes: a Task holds a small message body inline).
class TaskQueue {
 public:
  bool empty() const noexcept { return n_ == 0; }
  void push_back(Task&& t) {
    if (n_ == buf_.size()) grow();
    buf_[(head_ + n_) & (buf_.size() - 1)] = std::move(t);
    ++n_;
  }
  /// Move the first task into `t`; the queue must not be empty.
  void pop_front(Task& t) {
    Task& slot = buf_[head_];
    t = std::move(slot);
    slot.clear();
    head_ = (head_ + 1) & (buf_.size() - 1);
    --n_;
  }
  /// Give a burst's memory back once it is over (called by an executor about to sleep: not
  /// whenever the queue runs empty, or a stream that empties it now and then would grow it
  /// again each time, moving every Task; callgrind: ~240 instructions a remote_do).
  void trim() {
    if (n_ == 0 && buf_.size() > kKeep) {
      std::vector<Task>().swap(buf_);
      head_ = 0;
    }
  }

 private:
  void grow() {
    std::vector<Task> next(buf_.empty() ? 64 : buf_.size() * 2);
    for (std::size_t i = 0; i < n_; ++i) next[i] = std::move(buf_[(head_ + i) & (buf_.size() - 1)]);
    buf_ = std::move(next);
    head_ = 0;
  }
  static constexpr std::size_t kKeep = 1024;  // slots kept when empty
  std::vector<Task> buf_;  // capacity a power of two
  std::size_t head_ = 0, n_ = 0;
};

/// What the executor needs from its process.
class ExecutorHost {
 public:
  /// Run one task; lets no exception out.
  virtual void run_task(Task& t) = 0;
  /// An idle executor waits here (spinning while it polls, or asleep) until work is queued
  /// or the executor stops; it may return early. True when it found a call that is the
  /// oldest work of all and hands it over in `t` to run at once, without the queue.
  virtual bool idle(bool in_arena, Task& t) = 0;
  /// Wake one idle executor (or a waiter that runs queued work).
  virtual void wake_executor() = 0;
  /// An executor thread leaves its loop (the executor stops): what it held across idle()
  /// calls, it gives back.
  virtual void serving_done() noexcept = 0;

 protected:
  ~ExecutorHost() = default;
};

/// True on the executor threads: they run queued work while they wait (so a call that waits
/// on a call back into its own process cannot deadlock).
extern thread_local bool tl_executor;

// Up to T "arena executors" run tasks inside the arena (-t T): the first at start, another
// whenever a task is queued while all of them are busy, so that T calls run at once and a
// tbb::parallel_for inside a call gets the arena's idle slots. Each enters the arena per task
// (tbb::task_arena::execute, ~40 ns) and leaves it when idle: an idle thread parked in a slot
// would keep TBB's workers out of it, and a call started on another thread would then run on
// one thread. For the same reason the arena reserves no slot for non-TBB threads. Beyond
// those, one more executor whenever no queued task has started for a few ms with every executor busy
// (a call blocked in sleep or on a lock must not starve the call that would unblock it, as
// Julia's tasks guarantee); these run outside the arena (it may be full of blocked calls:
// that is why they were grown). Capped by VSCALE_MAX_EXECUTORS.
class Executor {
 public:
  explicit Executor(ExecutorHost& host) : host_(host) {}
  /// Make the arena of `threads` slots and start the first executor.
  void start(int threads);
  /// Stop taking work; idle executors notice at their next wake-up (the host rings them).
  void request_stop() noexcept { stopping_.store(true); }
  /// Join the executors (except the calling thread, which is the one ending the process).
  void join();
  bool stopping() const noexcept { return stopping_.load(); }

  int threads() const noexcept { return threads_; }
  tbb::task_arena& arena() noexcept { return *arena_; }
  int executors() const noexcept { return nexec_.load(); }
  int arena_executors() const noexcept { return arena_execs_.load(); }

  /// Queue a task and see that some thread takes it.
  void push(Task&& t);
  /// Queue all of `ts` from index `from` at once (one lock and one wake-up); `ts` is emptied.
  void push_all(std::vector<Task>& ts, std::size_t from = 0);
  /// Free the queue's memory beyond its usual size if it is empty (an idle executor, before
  /// it sleeps).
  void trim() {
    std::lock_guard lk(q_m_);
    q_.trim();
  }
  /// Run one queued task on this thread; false when none was queued.
  bool run_one();
  bool queued() const noexcept { return q_size_.load(std::memory_order_acquire) > 0; }
  /// Work is queued and every executor is busy (the host then checks growth more often).
  bool starving() const noexcept { return queued() && busy_.load() >= nexec_.load(); }
  /// Start one more executor outside the arena if no queued task has started for a few ms
  /// while every executor is busy (called by one thread, the host's progress thread).
  void maybe_grow();

  /// Counts an idle executor as spinning on the queue while it lives: a push then needs no
  /// wake-up. It counts itself out before its last look at the queue.
  class Spinning {
   public:
    explicit Spinning(Executor& e) : e_(e) { e_.spinning_.fetch_add(1, std::memory_order_seq_cst); }
    ~Spinning() { e_.spinning_.fetch_sub(1, std::memory_order_seq_cst); }
    Spinning(const Spinning&) = delete;
    Spinning& operator=(const Spinning&) = delete;

   private:
    Executor& e_;
  };

 private:
  void offer();            // wake an idle executor unless one spins; add an arena executor if all are busy
  void maybe_add();        // another arena executor, when all are busy and work is queued
  void add(bool in_arena);  // with exec_m_ held
  void loop(bool in_arena);
  bool take(Task& t);  // the first queued task, if any
  void run(Task& t);  // with the accounting (started_, busy_) that growth relies on

  ExecutorHost& host_;
  std::mutex q_m_;
  TaskQueue q_;
  std::atomic<std::size_t> q_size_{0};

  int threads_ = 1;
  int max_exec_ = 256;
  std::unique_ptr<tbb::global_control> tbb_limit_;
  std::unique_ptr<tbb::task_arena> arena_;
  std::mutex exec_m_;
  std::vector<std::thread> threads_list_;
  std::atomic<int> nexec_{0};        // all executors
  std::atomic<int> arena_execs_{0};  // of which arena executors (<= threads_)
  std::atomic<int> busy_{0};
  std::atomic<int> spinning_{0};                // idle executors spinning on the queue
  std::atomic<std::int64_t> queued_since_{0};  // steady_clock ns since work waits with all busy
  std::atomic<std::uint64_t> started_{0};      // tasks taken so far
  std::uint64_t started_at_ = 0;               // started_ at queued_since_ (maybe_grow's own)
  std::atomic<bool> stopping_{false};
};

}  // namespace vscale::detail
