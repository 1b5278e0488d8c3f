// WorkerPool: a set of worker ids handed out one at a time (Julia's WorkerPool), the default
// pool of all workers, and remotecall / remotecall_fetch on "any free worker of this pool".
//
// A pool's state (members, free ids, a mutex and a condition variable) lives on the process
// that made it, in that process's registry of remote objects (see detail/remote_object.hpp), like
// a RemoteChannel's. A WorkerPool is a handle (the pool's RefId, which names its owner): copy it freely, pass it to remote
// calls as an argument or through vscale::closure (like every vscale handle it is not
// trivially copyable, so a shipped lambda cannot capture it), and every copy on every process
// names the same pool. On the owner the operations go straight to the state; elsewhere each is a
// remotecall_fetch to the owner (take() then waits there until a worker is put back).
//
// Lifetime: the state lives while a copy of the handle exists on the owner (copies held on
// other processes do not keep it alive); an operation after that throws vscale::Error naming
// the pool. default_worker_pool() lives as long as the session, and on a worker it is a handle
// on the master's default pool, as in Julia.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"
#include "vscale/future.hpp"
#include "vscale/detail/remote_object.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

namespace detail {

// The id of the master's default pool: creator 0 never exists, so no other object has it.
inline constexpr RefId kDefaultPoolId{1, 0, 1};

/// A pool's state on its owner: members, the free ones, and who took the others.
struct PoolState {
  std::mutex m;
  std::condition_variable cv;
  std::set<int> members;
  std::deque<int> free;
  std::map<int, int> taken;  // worker -> the process that took it

  /// Add `id`, free (a member already: nothing).
  void push(int id);
  /// Wait until a worker is free and hand it to `taker`, as Julia's take!.
  int take(int taker);
  /// A free worker for `taker`, or 0 when none is free now.
  int try_take(int taker);
  /// `id` comes back free (not a member any more: ignored).
  void put(int id);
  /// `id` leaves the pool, free or taken.
  void remove(int id);
  /// Members, free or taken.
  std::size_t length();
  /// Whether a worker is free now.
  bool isready();
  /// The members, ascending.
  std::vector<int> list();
  /// Make the members exactly `ids`.
  void sync(const std::vector<int>& ids);

 private:
  int hand_out(int taker);
  void reclaim();
};

inline void PoolState::push(int id) {
  {
    std::lock_guard lk(m);
    if (!members.insert(id).second) return;
    free.push_back(id);
  }
  cv.notify_one();
}

// The wait looks again every 100 ms: a process that dies holding workers gives them back, and
// a taken worker that dies leaves the pool (so a pool whose members are all gone says so
// instead of waiting forever). An interrupt of the taker (or of this call) abandons it, as a
// channel operation's wait.
inline int PoolState::take(int taker) {
  std::unique_lock lk(m);
  channel_wait(lk, cv, taker, [&] {
    reclaim();
    return !free.empty() || members.empty();
  }, "WorkerPool take");
  if (free.empty()) throw UsageError("vscale: take on an empty WorkerPool (it has no workers)");
  return hand_out(taker);
}

inline int PoolState::try_take(int taker) {
  std::lock_guard lk(m);
  reclaim();
  return free.empty() ? 0 : hand_out(taker);
}

inline void PoolState::put(int id) {
  {
    std::lock_guard lk(m);
    if (!members.count(id)) return;
    if (std::find(free.begin(), free.end(), id) != free.end())
      throw UsageError("vscale: WorkerPool::put(" + std::to_string(id) + "): that worker is not taken");
    taken.erase(id);
    free.push_back(id);
  }
  cv.notify_one();
}

inline void PoolState::remove(int id) {
  std::lock_guard lk(m);
  members.erase(id);
  taken.erase(id);
  free.erase(std::remove(free.begin(), free.end(), id), free.end());
  cv.notify_all();  // a waiter on a pool that became empty must see it
}

inline std::size_t PoolState::length() {
  std::lock_guard lk(m);
  reclaim();
  return members.size();
}

inline bool PoolState::isready() {
  std::lock_guard lk(m);
  reclaim();
  return !free.empty();
}

inline std::vector<int> PoolState::list() {
  std::lock_guard lk(m);
  reclaim();
  return {members.begin(), members.end()};
}

// Free ones stay free, new ones are free, missing ones go.
inline void PoolState::sync(const std::vector<int>& ids) {
  {
    std::lock_guard lk(m);
    // The default pool is synced with workers() on every look: the usual case changes nothing.
    if (std::is_sorted(ids.begin(), ids.end()) && std::equal(ids.begin(), ids.end(), members.begin(), members.end()))
      return;
    std::set<int> want(ids.begin(), ids.end());
    for (auto it = members.begin(); it != members.end();) {
      if (!want.count(*it)) {
        free.erase(std::remove(free.begin(), free.end(), *it), free.end());
        taken.erase(*it);
        it = members.erase(it);
      } else {
        ++it;
      }
    }
    for (int id : want)
      if (members.insert(id).second) free.push_back(id);
  }
  cv.notify_all();
}

// With m held, free not empty.
inline int PoolState::hand_out(int taker) {
  const int id = free.front();
  free.pop_front();
  taken[id] = taker;
  return id;
}

// With m held: processes that are gone leave the pool, free or taken, and the workers held
// by a process that is gone come back free (its put will never come).
inline void PoolState::reclaim() {
  if (free.empty() && taken.empty()) return;
  const auto live = procs();
  auto alive = [&](int p) { return std::binary_search(live.begin(), live.end(), p); };
  for (auto it = free.begin(); it != free.end();) {
    if (!alive(*it)) {
      members.erase(*it);
      it = free.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = taken.begin(); it != taken.end();) {
    if (!alive(it->first)) {
      members.erase(it->first);
      it = taken.erase(it);
    } else if (!alive(it->second)) {
      free.push_back(it->first);
      it = taken.erase(it);
    } else {
      ++it;
    }
  }
}

// The master's default pool, created on first use, members brought up to date with workers()
// ({1} when there are none) every time it is looked up.
inline std::shared_ptr<PoolState> master_default_pool() {
  static const std::shared_ptr<PoolState> p = [] {
    auto s = std::make_shared<PoolState>();
    register_remote_object<PoolState>(kDefaultPoolId, s);
    return s;
  }();
  p->sync(workers());
  return p;
}

inline std::string pool_name(const RefId& id) {
  if (id == kDefaultPoolId) return "the default WorkerPool (owned by process 1)";
  return "WorkerPool " + ref_id_name(id) + " (owned by process " + std::to_string(id.owner) + ")";
}

// The state of pool `id` on this process (its owner).
inline std::shared_ptr<PoolState> pool_state(const RefId& id) {
  if (id == kDefaultPoolId) return master_default_pool();
  auto s = find_remote_object<PoolState>(id);
  if (!s)
    throw Error("vscale: " + pool_name(id) +
                " no longer exists: every copy of its handle on its owner is gone; keep one there while it is used");
  return s;
}

// The operations as plain functions, so that they ship as code addresses.
inline int pool_take(RefId id, int taker) { return pool_state(id)->take(taker); }
inline int pool_try_take(RefId id, int taker) { return pool_state(id)->try_take(taker); }
inline void pool_put(RefId id, int w) { pool_state(id)->put(w); }
inline void pool_push(RefId id, int w) { pool_state(id)->push(w); }
inline void pool_remove(RefId id, int w) { pool_state(id)->remove(w); }
inline std::size_t pool_length(RefId id) { return pool_state(id)->length(); }
inline bool pool_isready(RefId id) { return pool_state(id)->isready(); }
inline std::vector<int> pool_list(RefId id) { return pool_state(id)->list(); }
inline void pool_sync(RefId id, std::vector<int> ids) { pool_state(id)->sync(ids); }

}  // namespace detail

/// A pool of process ids, usable from any process. take() hands out a free one (waiting until
/// one is put back), put() returns it. Ids of processes that have exited are dropped when
/// they come up.
/// Example: WorkerPool pool({2, 3}); int w = pool.take(); ... ; pool.put(w);
class WorkerPool {
 public:
  /// A new, empty pool owned by this process.
  WorkerPool() : WorkerPool(std::vector<int>{}) {}
  /// A new pool of `ids` (all free) owned by this process.
  explicit WorkerPool(const std::vector<int>& ids) : id_(detail::new_ref_id()) {
    auto s = std::make_shared<detail::PoolState>();
    for (int w : ids) s->push(w);
    detail::register_remote_object<detail::PoolState>(id_, s);
    keep_ = std::shared_ptr<void>(nullptr, [id = id_](void*) { detail::erase_remote_object(id); });
  }

  /// Add `id` to the pool, free (Julia's push!). Adding a member again does nothing.
  void push(int id) const { op(&detail::pool_push, id); }
  /// Take a free worker, waiting until one is put back. Throws UsageError when the pool has
  /// no members at all (it would wait forever). A worker taken by a process that then dies
  /// goes back to the pool; one that dies while taken leaves it.
  int take() const {
    if (owner() == myid()) return detail::pool_take(id_, myid());
    return detail::channel_remote(owner(), &detail::pool_take, id_, myid());  // the owner abandons it on interrupt
  }
  /// Take a free worker if one is free now.
  std::optional<int> try_take() const {
    const int w = op(&detail::pool_try_take, myid());
    return w ? std::optional<int>(w) : std::nullopt;
  }
  /// Give back a worker obtained from take(). An id that is no longer a member (removed
  /// meanwhile) is ignored.
  void put(int id) const { op(&detail::pool_put, id); }
  /// Remove `id` from the pool (free or taken).
  void remove(int id) const { op(&detail::pool_remove, id); }
  /// Number of workers in the pool, free or taken (Julia's length(pool)).
  std::size_t length() const { return op(&detail::pool_length); }
  /// True when take() would not wait.
  bool isready() const { return op(&detail::pool_isready); }
  /// The members, ascending.
  std::vector<int> workers() const { return op(&detail::pool_list); }
  /// Make the members exactly `ids` (free ones stay free, new ones are free, missing ones go).
  void sync(const std::vector<int>& ids) const { op(&detail::pool_sync, ids); }

  /// The process that holds the pool's state.
  int owner() const noexcept { return id_.owner; }
  /// "WorkerPool 1.4 (owned by process 1)".
  std::string name() const { return detail::pool_name(id_); }
  friend bool operator==(const WorkerPool& a, const WorkerPool& b) { return a.id_ == b.id_; }

  /// Ships the handle (its id, which names the owner), never the state. (A received handle starts as a new
  /// empty pool from the default constructor, dropped here: it holds no state.)
  template <class A>
  void save(A& a) const {
    a(cereal::binary_data(&id_, sizeof id_));
  }
  template <class A>
  void load(A& a) {
    keep_.reset();
    a(cereal::binary_data(&id_, sizeof id_));
  }

 private:
  friend WorkerPool& default_worker_pool();
  struct Remote {};
  WorkerPool(Remote, const detail::RefId& id) : id_(id) {}

  template <class R, class... P, class... A>
  R op(R (*fn)(detail::RefId, P...), A&&... a) const {
    if (owner() == myid()) return fn(id_, std::forward<A>(a)...);
    return remotecall_fetch(owner(), fn, id_, std::forward<A>(a)...);
  }

  detail::RefId id_;
  std::shared_ptr<void> keep_;  // on the owner: the last copy there frees the state
};

/// The pool of all current workers ({1} when there are none), as Julia's
/// default_worker_pool(). On the master its membership is brought up to date with workers()
/// on every use; on a worker it is a handle on the master's.
inline WorkerPool& default_worker_pool() {
  static WorkerPool pool(WorkerPool::Remote{}, detail::kDefaultPoolId);
  if (myid() == 1) detail::master_default_pool();
  return pool;
}

/// Run f(args...) on a free worker of `pool` and return its result; the worker is taken for
/// the duration of the call and put back afterwards (also when the call throws).
template <class F, class... Args>
auto remotecall_fetch(const WorkerPool& pool, F&& f, Args&&... args) {
  const int w = pool.take();
  struct Back {
    const WorkerPool& p;
    int w;
    ~Back() {
      try {
        p.put(w);
      } catch (...) {  // the pool's owner is gone: nothing to give back to
      }
    }
  } back{pool, w};
  return remotecall_fetch(w, std::forward<F>(f), std::forward<Args>(args)...);
}

/// Start f(args...) on a free worker of `pool` (waiting for one) and return its Future; the
/// worker goes back to the pool when the call has finished.
template <class F, class... Args>
auto remotecall(const WorkerPool& pool, F&& f, Args&&... args) {
  const int w = pool.take();
  try {
    auto fut = remotecall(w, std::forward<F>(f), std::forward<Args>(args)...);
    // A local task waits for the call and then puts the worker back (the executor adds a
    // thread when tasks block, so this does not hold up other calls).
    detail::submit_local([fut, w, p = pool] {
      try {
        fut.wait();
      } catch (...) {
      }
      try {
        p.put(w);
      } catch (...) {
      }
    });
    return fut;
  } catch (...) {
    pool.put(w);
    throw;
  }
}

}  // namespace vscale
