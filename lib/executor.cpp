// The executor: queue, arena, and the threads that grow up to -t T and past it (executor.hpp).
#include "vscale/detail/executor.hpp"

#include <algorithm>
#include <chrono>

#include "vscale/detail/env.hpp"

namespace vscale::detail {

thread_local bool tl_executor = false;

namespace {
// An arena executor's thread, and whether it is inside the arena now (a call it runs waits
// and runs another queued call: that one is already inside).
thread_local bool tl_arena_executor = false;
thread_local bool tl_in_arena = false;
}  // namespace

void Executor::start(int threads) {
  max_exec_ = static_cast<int>(env_long("VSCALE_MAX_EXECUTORS", 256, 1, 65536));
  threads_ = std::max(1, threads);
  // TBB sizes its worker pool from the affinity mask and ignores cgroup quotas (Debian's
  // 2021.8): set the limit ourselves, high enough for an arena of threads_. An arena with no
  // reserved slot asks for as many workers as it has slots (threads_), so the limit (workers
  // plus one) is threads_ + 1, or TBB warns and ignores the request.
  const int tbb_default = tbb::this_task_arena::max_concurrency();
  tbb_limit_ = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                     static_cast<std::size_t>(std::max(threads_ + 1, tbb_default)));
  arena_ = std::make_unique<tbb::task_arena>(threads_, 0);  // no reserved slot: see executor.hpp
  arena_->initialize();
  // The first executor before the host's progress thread runs: a task queued at once must
  // find it counted, or maybe_add would start one more than -t.
  std::lock_guard lk(exec_m_);
  add(true);
}

void Executor::add(bool in_arena) {
  nexec_.fetch_add(1);
  if (in_arena) arena_execs_.fetch_add(1);
  threads_list_.emplace_back([this, in_arena] { loop(in_arena); });
}

void Executor::join() {
  const auto me = std::this_thread::get_id();
  std::lock_guard lk(exec_m_);
  for (auto& t : threads_list_) {
    if (!t.joinable()) continue;
    if (t.get_id() == me)
      t.detach();
    else
      t.join();
  }
  threads_list_.clear();
}

void Executor::push(Task&& t) {
  {
    std::lock_guard lk(q_m_);
    q_.push_back(std::move(t));
    q_size_.fetch_add(1, std::memory_order_seq_cst);
  }
  // An idle executor spinning on the queue takes it; otherwise wake one that sleeps (or a
  // thread waiting inside a call: it runs it there).
  offer();
}

void Executor::push_all(std::vector<Task>& ts, std::size_t from) {
  if (from >= ts.size()) {
    ts.clear();
    return;
  }
  {
    std::lock_guard lk(q_m_);
    for (std::size_t i = from; i < ts.size(); ++i) q_.push_back(std::move(ts[i]));
    q_size_.fetch_add(ts.size() - from, std::memory_order_seq_cst);
  }
  ts.clear();
  offer();  // a woken executor that finds more queued offers again (run_one)
}

void Executor::offer() {
  if (spinning_.load(std::memory_order_seq_cst) == 0) host_.wake_executor();
  maybe_add();
}

void Executor::maybe_add() {
  if (arena_execs_.load() >= threads_ || q_size_.load() == 0 || busy_.load() < arena_execs_.load() ||
      stopping_.load())
    return;
  std::lock_guard lk(exec_m_);
  if (arena_execs_.load() >= threads_ || stopping_.load()) return;
  add(true);
}

void Executor::maybe_grow() {
  using namespace std::chrono;
  const std::int64_t now = duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
  if (q_size_.load() == 0 || busy_.load() < nexec_.load() || arena_execs_.load() < threads_) {
    queued_since_.store(0);
    return;
  }
  // Starving means no queued task has started for a while: a stream of short calls keeps
  // the queue non-empty and every executor busy, yet it moves, and more threads would only
  // contend for the queue.
  const std::uint64_t started = started_.load(std::memory_order_relaxed);
  std::int64_t since = queued_since_.load();
  if (since == 0 || started != started_at_) {
    queued_since_.store(now);
    started_at_ = started;
    return;
  }
  if (now - since < 5'000'000 || nexec_.load() >= max_exec_ || stopping_.load()) return;
  std::lock_guard lk(exec_m_);
  if (stopping_.load()) return;
  add(false);
  queued_since_.store(0);
}

bool Executor::take(Task& t) {
  if (q_size_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard lk(q_m_);
  if (q_.empty()) return false;
  q_.pop_front(t);
  q_size_.fetch_sub(1, std::memory_order_release);
  return true;
}

void Executor::run(Task& t) {
  started_.fetch_add(1, std::memory_order_relaxed);
  busy_.fetch_add(1);
  if (q_size_.load(std::memory_order_seq_cst) > 0) offer();  // more queued than we take
  host_.run_task(t);  // lets no exception out
  busy_.fetch_sub(1);
}

bool Executor::run_one() {
  Task t;
  if (!take(t)) return false;
  if (tl_arena_executor && !tl_in_arena) {
    // Inside the arena, take what else is queued before leaving it: entering costs more than
    // a short call.
    tl_in_arena = true;
    arena_->execute([&] {
      run(t);
      for (int more = 0; more < 256 && !stopping_.load(std::memory_order_relaxed) && take(t); ++more) run(t);
    });
    tl_in_arena = false;
  } else {
    run(t);
  }
  return true;
}

void Executor::loop(bool in_arena) {
  tl_executor = true;
  tl_arena_executor = in_arena;
  auto serve = [&] {
    Task direct;  // a call the idle host handed over (only ever with one arena slot)
    while (!stopping_.load()) {
      if (run_one()) continue;
      if (host_.idle(in_arena, direct)) {
        run(direct);
        direct.clear();
      }
    }
  };
  if (in_arena && threads_ == 1) {
    // An arena of one slot has room for this thread only (it is the one arena executor, and
    // nothing else enters the arena): idle, it keeps no TBB worker out, so it stays inside
    // instead of entering per call (task_arena::execute: ~500 instructions a call, callgrind).
    tl_in_arena = true;
    arena_->execute(serve);
    tl_in_arena = false;
  } else {
    serve();
  }
  host_.serving_done();
}

}  // namespace vscale::detail
