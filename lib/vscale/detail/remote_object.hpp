// Remote objects: the per-process registry of objects kept for other processes (the state of
// RemoteChannels, RemoteValues and WorkerPools), the reference with weight that a handle on
// one holds (the credit scheme of Futures, detail/core.hpp), and how an operation waits on
// the owner for its object (channel_wait: deadlines, a caller that dies or is interrupted).
// Used by remote_channel.hpp, remote_value.hpp and worker_pool.hpp.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"
#include "vscale/interrupt.hpp"
#include "vscale/remotecall.hpp"

namespace vscale::detail {

// ---- the per-process registry of remote objects ----------------------------------------

struct RemoteObjectRegistry {
  struct Entry {
    std::shared_ptr<void> obj;
    const std::type_info* type;
  };
  std::mutex m;
  std::unordered_map<RefId, Entry, RefIdHash> objects;
};

// Never destroyed: executor threads may still use it while the process ends.
inline RemoteObjectRegistry& remote_registry() {
  static auto* r = new RemoteObjectRegistry;
  return *r;
}

/// "3.17": a reference id as creator.sequence, for messages.
inline std::string ref_id_name(const RefId& r) { return std::to_string(r.creator) + "." + std::to_string(r.seq); }

/// Number of remote objects (channels and worker pools included) that live on this process now.
inline std::size_t live_remote_objects() {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  return r.objects.size();
}

template <class S>
void register_remote_object(const RefId& id, std::shared_ptr<S> obj) {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  if (!r.objects.emplace(id, RemoteObjectRegistry::Entry{std::move(obj), &typeid(S)}).second)
    throw Error("vscale: remote object " + ref_id_name(id) + " already exists on process " +
                std::to_string(self_id()) + " (internal error)");
}

/// The object, or null when it does not exist (any more) on this process.
template <class S>
std::shared_ptr<S> find_remote_object(const RefId& id) {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  auto it = r.objects.find(id);
  if (it == r.objects.end()) return nullptr;
  if (*it->second.type != typeid(S))
    throw Error("vscale: remote object " + ref_id_name(id) + " on process " + std::to_string(self_id()) +
                " has another type than the handle used on it (internal error)");
  return std::static_pointer_cast<S>(it->second.obj);
}

inline bool erase_remote_object(const RefId& id) {
  std::shared_ptr<void> doomed;  // destroyed outside the lock
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  auto it = r.objects.find(id);
  if (it == r.objects.end()) return false;
  doomed = std::move(it->second.obj);
  r.objects.erase(it);
  return true;
}

// Kept by the owner's reference (the FutureCore of a channel or remote object, as its `typed`
// value): when the owner's last handle is gone and all weight sent out has come back, the
// runtime drops that reference, and this frees the object.
struct RemoteAnchor {
  explicit RemoteAnchor(const RefId& i) : id(i) {}
  RemoteAnchor(const RemoteAnchor&) = delete;
  RemoteAnchor& operator=(const RemoteAnchor&) = delete;
  ~RemoteAnchor() { erase_remote_object(id); }
  RefId id;
};

/// What a channel or RemoteValue handle holds: a reference with weight, as a Future's
/// (detail/core.hpp, runtime.cpp export_ref/import_ref/kDelRef), shared by the copies in one
/// process. Shipping it hands half of this process's weight to the copy that leaves.
class RemoteRef {
 public:
  RemoteRef() = default;
  explicit RemoteRef(std::shared_ptr<FutureCore> c) : core_(std::move(c)) {}
  int owner() const noexcept { return core_ ? core_->id.owner : 0; }
  /// The object's id (its reference's, owner included); RefId{} for an empty handle.
  RefId id() const noexcept { return core_ ? core_->id : RefId{}; }
  bool valid() const noexcept { return core_ != nullptr; }
  friend bool operator==(const RemoteRef& a, const RemoteRef& b) noexcept { return a.id() == b.id(); }

  template <class A>
  void save(A& ar) const {
    std::uint8_t has = core_ != nullptr;
    ar(has);
    if (!has) return;  // an empty handle travels as one (its use there is the error)
    WireRef w = export_ref(core_);
    ar(cereal::binary_data(&w, sizeof w));
  }
  template <class A>
  void load(A& ar) {
    std::uint8_t has = 0;
    ar(has);
    if (!has) {
      core_.reset();
      return;
    }
    WireRef w{};
    ar(cereal::binary_data(&w, sizeof w));
    core_ = import_ref(w);
  }

 private:
  std::shared_ptr<FutureCore> core_;
};

/// Owner side: register `obj` under a new id and return the reference whose end frees it.
template <class S>
std::shared_ptr<FutureCore> new_remote_object(std::shared_ptr<S> obj) {
  auto core = new_local_core();
  register_remote_object<S>(core->id, std::move(obj));
  core->typed = std::make_shared<RemoteAnchor>(core->id);  // set before the core is shared
  return core;
}

template <class S>
std::shared_ptr<S> get_remote_object(const RefId& id) {
  auto p = find_remote_object<S>(id);
  if (!p)
    throw Error("vscale: remote object " + ref_id_name(id) + " does not exist on process " +
                std::to_string(self_id()) + " (it was freed)");
  return p;
}

inline bool process_alive(int pid) {
  for (int p : procs())
    if (p == pid) return true;
  return false;
}

// ---- waiting on the owner ----------------------------------------------------------------

/// steady_clock (CLOCK_MONOTONIC: one clock for every process of the host) in nanoseconds.
inline std::int64_t ch_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
// Channel deadlines travel as steady_clock nanoseconds (core.hpp's kNoDeadline is a time_point).
inline constexpr std::int64_t kNoDeadlineNs = std::numeric_limits<std::int64_t>::max();

// Wait on `cv` until `pred` holds (true), or until `until_ns` has passed (false). Give up
// (throw) if the calling process `caller` is gone or was interrupted since the operation
// began (vscale::interrupt), or if the call running this wait here was: nothing has been taken
// or put yet, so nothing is lost. After `serve_ns`, pred is not even looked at: the caller of
// a timed operation has given up by then, so it must not be served (`what` names the
// operation in the errors).
template <class Pred>
bool channel_wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, int caller, Pred pred,
                  const char* what = "channel operation", std::int64_t until_ns = kNoDeadlineNs,
                  std::int64_t serve_ns = kNoDeadlineNs) {
  const bool remote = caller != self_id();
  const std::uint32_t caller_gen = remote ? interrupts_of(caller) : 0;
  const bool timed = until_ns != kNoDeadlineNs || serve_ns != kNoDeadlineNs;
  bool spun = false;
  for (;;) {
    const std::int64_t now = timed ? ch_now_ns() : 0;
    if (now < serve_ns && pred()) return true;
    if (now >= until_ns) return false;
    if (remote && !process_alive(caller))
      throw Error(std::string("vscale: ") + what + " abandoned: the calling process " + std::to_string(caller) +
                  " is gone");
    if (remote && interrupts_of(caller) != caller_gen)
      throw InterruptedException(std::string("vscale: ") + what + " abandoned: the calling process " +
                                 std::to_string(caller) + " was interrupted (vscale::interrupt)");
    check_interrupt();
    if (!remote && !timed && !spun) {
      // This process's own thread: what it waits for may come as a message (a put on credit,
      // channel_credits.hpp), so spin a while polling first, as a wait for a result does: a
      // stream of puts then costs no wake-up per item. (Not for a timed wait: the spin would
      // not stop at its deadline.)
      spun = true;
      struct Ctx {
        std::unique_lock<std::mutex>* lk;
        Pred* pred;
      } ctx{&lk, &pred};
      struct Relock {  // locked again however the spin ends (pred may throw)
        std::unique_lock<std::mutex>& l;
        ~Relock() { l.lock(); }
      };
      lk.unlock();
      {
        Relock relock{lk};
        spin_poll([](void* c) {
          auto& x = *static_cast<Ctx*>(c);
          std::lock_guard g(*x.lk->mutex());
          return (*x.pred)();
        }, &ctx);
      }
      continue;
    }
    std::chrono::nanoseconds step = std::chrono::milliseconds(100);
    if (until_ns != kNoDeadlineNs) step = std::min(step, std::chrono::nanoseconds(until_ns - now));
    leave_busy();
    cv.wait_for(lk, step);
  }
}

// An operation that waits on its owner for a remote object (a channel's take, a pool's take),
// from another process. The wait here is no cancellation
// point (the owner abandons the operation itself, see channel_wait); an abandonment comes back
// as InterruptedException.
template <class... A>
auto channel_remote(int owner, A&&... a) {
  NoInterrupt no_interrupt;
  try {
    return remotecall_fetch(owner, std::forward<A>(a)...);
  } catch (const RemoteException& e) {
    if (e.type() == "vscale::InterruptedException") throw InterruptedException(e.message());
    throw;
  }
}

}  // namespace vscale::detail
