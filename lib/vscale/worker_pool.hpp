// WorkerPool: a set of worker ids handed out one at a time (Julia's WorkerPool), the default
// pool of all workers, and remotecall / remotecall_fetch on "any free worker of this pool".
//
// A pool is an object of the process that made it: take/put are thread-safe within that
// process (a mutex and a condition variable), and any process (master or worker) may build
// pools of its own, but a pool is not shared between processes: a copy shipped elsewhere
// would be a separate pool. (Julia's WorkerPool can be used remotely through its channel;
// here, make the calls from the process that owns the pool.)
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"
#include "vscale/future.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

/// A pool of process ids. take() hands out a free one (waiting until one is put back),
/// put() returns it. Ids of processes that have exited are dropped when they come up.
/// Example: WorkerPool pool({2, 3}); int w = pool.take(); ... ; pool.put(w);
class WorkerPool {
 public:
  WorkerPool() = default;
  explicit WorkerPool(const std::vector<int>& ids) {
    for (int id : ids) push(id);
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Add `id` to the pool, free (Julia's push!). Adding a member again does nothing.
  void push(int id) {
    {
      std::lock_guard lk(m_);
      if (!members_.insert(id).second) return;
      free_.push_back(id);
    }
    cv_.notify_one();
  }

  /// Take a free worker, waiting until one is put back. Throws UsageError when the pool has
  /// no members at all (it would wait forever).
  int take() {
    std::unique_lock lk(m_);
    for (;;) {
      drop_dead_free();
      if (!free_.empty()) {
        int id = free_.front();
        free_.pop_front();
        return id;
      }
      if (members_.empty()) throw UsageError("vscale: take on an empty WorkerPool (it has no workers)");
      cv_.wait(lk);
    }
  }

  /// Take a free worker if one is free now.
  std::optional<int> try_take() {
    std::lock_guard lk(m_);
    drop_dead_free();
    if (free_.empty()) return std::nullopt;
    int id = free_.front();
    free_.pop_front();
    return id;
  }

  /// Give back a worker obtained from take(). An id that is no longer a member (removed
  /// meanwhile) is ignored.
  void put(int id) {
    {
      std::lock_guard lk(m_);
      if (!members_.count(id)) return;
      if (std::find(free_.begin(), free_.end(), id) != free_.end())
        throw UsageError("vscale: WorkerPool::put(" + std::to_string(id) + "): that worker is not taken");
      free_.push_back(id);
    }
    cv_.notify_one();
  }

  /// Remove `id` from the pool (free or taken).
  void remove(int id) {
    std::lock_guard lk(m_);
    members_.erase(id);
    free_.erase(std::remove(free_.begin(), free_.end(), id), free_.end());
    cv_.notify_all();  // a waiter on a pool that became empty must see it
  }

  /// Number of workers in the pool, free or taken (Julia's length(pool)).
  std::size_t length() const {
    std::lock_guard lk(m_);
    return members_.size();
  }
  /// True when take() would not wait.
  bool isready() const {
    std::lock_guard lk(m_);
    return !free_.empty();
  }
  /// The members, ascending.
  std::vector<int> workers() const {
    std::lock_guard lk(m_);
    return {members_.begin(), members_.end()};
  }

  /// Make the members exactly `ids` (free ones stay free, new ones are free, missing ones go).
  void sync(const std::vector<int>& ids) {
    {
      std::lock_guard lk(m_);
      std::set<int> want(ids.begin(), ids.end());
      for (auto it = members_.begin(); it != members_.end();) {
        if (!want.count(*it)) {
          free_.erase(std::remove(free_.begin(), free_.end(), *it), free_.end());
          it = members_.erase(it);
        } else {
          ++it;
        }
      }
      for (int id : want)
        if (members_.insert(id).second) free_.push_back(id);
    }
    cv_.notify_all();
  }

 private:
  // Free ids of processes that are gone leave the pool (called with m_ held).
  void drop_dead_free() {
    if (free_.empty()) return;
    const auto live = procs();
    for (auto it = free_.begin(); it != free_.end();) {
      if (!std::binary_search(live.begin(), live.end(), *it)) {
        members_.erase(*it);
        it = free_.erase(it);
      } else {
        ++it;
      }
    }
  }

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::set<int> members_;
  std::deque<int> free_;
};

/// The pool of all current workers ({1} when there are none), as Julia's
/// default_worker_pool(). Each call brings its membership up to date with workers(), so
/// workers added or removed since are taken into account.
inline WorkerPool& default_worker_pool() {
  static WorkerPool pool;
  pool.sync(workers());
  return pool;
}

/// Run f(args...) on a free worker of `pool` and return its result; the worker is taken for
/// the duration of the call and put back afterwards (also when the call throws).
template <class F, class... Args>
auto remotecall_fetch(WorkerPool& pool, F&& f, Args&&... args) {
  const int w = pool.take();
  struct Back {
    WorkerPool& p;
    int w;
    ~Back() { p.put(w); }
  } back{pool, w};
  return remotecall_fetch(w, std::forward<F>(f), std::forward<Args>(args)...);
}

/// Start f(args...) on a free worker of `pool` (waiting for one) and return its Future; the
/// worker goes back to the pool when the call has finished. `pool` must outlive the call.
template <class F, class... Args>
auto remotecall(WorkerPool& pool, F&& f, Args&&... args) {
  const int w = pool.take();
  try {
    auto fut = remotecall(w, std::forward<F>(f), std::forward<Args>(args)...);
    // A local task waits for the call and then puts the worker back (the executor adds a
    // thread when tasks block, so this does not hold up other calls).
    detail::submit_local([fut, w, p = &pool] {
      try {
        fut.wait();
      } catch (...) {
      }
      p->put(w);
    });
    return fut;
  } catch (...) {
    pool.put(w);
    throw;
  }
}

}  // namespace vscale
