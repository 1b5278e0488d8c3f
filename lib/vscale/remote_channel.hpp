// RemoteChannel<T> (Julia's RemoteChannel) and RemoteValue<S>, a handle on any object that
// lives on one process (the way to build channels over a user type, like the manual's
// DictChannel).
//
// A channel's state (a bounded FIFO queue, a mutex, condition variables, an open flag) lives
// on its owner process, in that process's registry of remote objects, under a 64-bit id
// (creator id << 40 | sequence number). A handle is only {owner, id, capacity}: it is
// trivially copyable, so it can be passed to remote calls, returned from them and captured by
// value in shipped lambdas, and every copy, on every process, names the same channel. Every
// operation is a remotecall_fetch to the owner that waits there on the channel's condition
// variable (the owner adds executor threads when calls queue behind blocked ones, see
// remotecall.hpp); on the owner itself it goes straight to the state. All operations may be
// used from any process and any thread.
//
//     vscale::RemoteChannel<int> jobs(32);          // owned by this process
//     vscale::RemoteChannel<int> other(8, 2);       // owned by worker 2
//     vscale::remote_do(2, [jobs] { for (int j : jobs) work(j); });
//     jobs.put(1); jobs.put(2); jobs.close();
//
// Lifetime: the owner frees a channel's state once it is closed and drained (closed with no
// value left in it). A channel that is never closed lives until its owner ends. Operations on a
// freed channel behave as on a closed, empty one (put and take throw ChannelClosedError,
// isready() and is_open() are false). RemoteValue objects live until free() (or until their
// owner ends).
//
// Failures: take/fetch/wait on a closed, empty channel and put on a closed one (also a put or
// take blocked when close() is called) throw ChannelClosedError, whose message names the
// channel and its owner. If the owner process dies or is removed, every operation on its
// channels (those already blocked included) throws ProcessExitedException with the owner's id
// and the reason. A blocked operation whose caller process dies is abandoned by the owner
// (checked every 100 ms), so a value is not taken on behalf of a process that is gone.
// Capacity 0 makes an unbuffered channel, as Julia's Channel(0): a put returns once a take
// has its value (isready() and size() count the puts waiting), and fetch is refused.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"
#include "vscale/interrupt.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

/// A channel operation that needs an open channel (put), or a value from a closed, empty one
/// (take, fetch, wait). Julia's InvalidStateException.
class ChannelClosedError : public Error {
 public:
  using Error::Error;
};

namespace detail {

// ---- the per-process registry of remote objects ----------------------------------------

struct RemoteObjectRegistry {
  struct Entry {
    std::shared_ptr<void> obj;
    const std::type_info* type;
  };
  std::mutex m;
  std::unordered_map<std::uint64_t, Entry> objects;
  std::uint64_t next_seq = 1;
};

// Never destroyed: executor threads may still use it while the process ends.
inline RemoteObjectRegistry& remote_registry() {
  static auto* r = new RemoteObjectRegistry;
  return *r;
}

/// A new id, unique across processes: creator id << 40 | sequence number.
inline std::uint64_t new_remote_object_id() {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  return (std::uint64_t(std::uint32_t(self_id())) << 40) | (r.next_seq++ & ((std::uint64_t(1) << 40) - 1));
}

/// "3.17": the id as creator.sequence, for messages.
inline std::string remote_object_name(std::uint64_t id) {
  return std::to_string(id >> 40) + "." + std::to_string(id & ((std::uint64_t(1) << 40) - 1));
}

/// Number of remote objects (channels included) that live on this process now.
inline std::size_t live_remote_objects() {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  return r.objects.size();
}

template <class S>
void register_remote_object(std::uint64_t id, std::shared_ptr<S> obj) {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  if (!r.objects.emplace(id, RemoteObjectRegistry::Entry{std::move(obj), &typeid(S)}).second)
    throw Error("vscale: remote object " + remote_object_name(id) + " already exists on process " +
                std::to_string(self_id()) + " (internal error)");
}

/// The object, or null when it does not exist (any more) on this process.
template <class S>
std::shared_ptr<S> find_remote_object(std::uint64_t id) {
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  auto it = r.objects.find(id);
  if (it == r.objects.end()) return nullptr;
  if (*it->second.type != typeid(S))
    throw Error("vscale: remote object " + remote_object_name(id) + " on process " + std::to_string(self_id()) +
                " has another type than the handle used on it (internal error)");
  return std::static_pointer_cast<S>(it->second.obj);
}

inline bool erase_remote_object(std::uint64_t id) {
  std::shared_ptr<void> doomed;  // destroyed outside the lock
  auto& r = remote_registry();
  std::lock_guard lk(r.m);
  auto it = r.objects.find(id);
  if (it == r.objects.end()) return false;
  doomed = std::move(it->second.obj);
  r.objects.erase(it);
  return true;
}

template <class S, class... A>
void remote_object_create(std::uint64_t id, A... a) {
  register_remote_object<S>(id, std::make_shared<S>(std::move(a)...));
}

template <class S>
std::shared_ptr<S> get_remote_object(std::uint64_t id) {
  auto p = find_remote_object<S>(id);
  if (!p)
    throw Error("vscale: remote object " + remote_object_name(id) + " does not exist on process " +
                std::to_string(self_id()) + " (it was freed)");
  return p;
}

template <class S, class F, class... A>
auto remote_object_call(std::uint64_t id, F f, A... a) -> std::decay_t<std::invoke_result_t<F&, S&, A&...>> {
  auto obj = get_remote_object<S>(id);
  return std::invoke(f, *obj, a...);
}

template <class S>
bool remote_object_free(std::uint64_t id) {
  (void)find_remote_object<S>(id);  // type check
  return erase_remote_object(id);
}

inline bool process_alive(int pid) {
  for (int p : procs())
    if (p == pid) return true;
  return false;
}

// Wait on `cv` until `pred` holds; give up (throw) if the calling process `caller` is gone
// or was interrupted since the operation began (vscale::interrupt), or if the call running
// this wait here was: nothing has been taken or put yet, so nothing is lost.
// (`what` names the operation in those errors.)
template <class Pred>
void channel_wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, int caller, Pred pred,
                  const char* what = "channel operation") {
  const bool remote = caller != self_id();
  const std::uint32_t caller_gen = remote ? interrupts_of(caller) : 0;
  while (!pred()) {
    if (remote && !process_alive(caller))
      throw Error(std::string("vscale: ") + what + " abandoned: the calling process " + std::to_string(caller) +
                  " is gone");
    if (remote && interrupts_of(caller) != caller_gen)
      throw InterruptedException(std::string("vscale: ") + what + " abandoned: the calling process " +
                                 std::to_string(caller) + " was interrupted (vscale::interrupt)");
    check_interrupt();
    cv.wait_for(lk, std::chrono::milliseconds(100));
  }
}

// A channel operation on its owner, from another process. The wait here is no cancellation
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

// ---- channel state and the operations that run on the owner ---------------------------

template <class T>
struct ChannelState {
  explicit ChannelState(std::uint64_t cap) : capacity(cap) {}
  std::mutex m;
  std::condition_variable not_empty;  // a value arrived, or closed
  std::condition_variable not_full;   // a value left, or closed
  std::deque<T> q;
  std::uint64_t capacity;
  bool open = true;
  // Unbuffered (capacity 0) only: each value in q is a put still waiting for its taker, and
  // qid[k] names the put of q[k].
  std::deque<std::uint64_t> qid;
  std::uint64_t next_put = 0;

  void pop_front() {
    q.pop_front();
    if (capacity == 0) qid.pop_front();
  }
};

// An unbuffered put (Julia's Channel(0)): the value waits in the queue until a take gets it,
// and put returns only then. If the put is abandoned first (channel closed, caller
// interrupted or gone), its value leaves the queue again: it was delivered or it was not,
// never both, never lost. A closed channel is freed by the last put to leave it.
template <class T>
bool ch_put_unbuffered(std::uint64_t id, ChannelState<T>& s, int caller, T v) {
  std::unique_lock lk(s.m);
  if (!s.open) return false;
  const std::uint64_t my = ++s.next_put;
  s.q.push_back(std::move(v));
  s.qid.push_back(my);
  s.not_empty.notify_all();
  auto withdraw = [&] {  // true: it was still there (not delivered)
    auto it = std::find(s.qid.begin(), s.qid.end(), my);
    if (it == s.qid.end()) return false;
    s.q.erase(s.q.begin() + (it - s.qid.begin()));
    s.qid.erase(it);
    return true;
  };
  auto free_if_drained = [&] {
    const bool drained = !s.open && s.q.empty();
    lk.unlock();
    if (drained) erase_remote_object(id);
  };
  try {
    channel_wait(lk, s.not_full, caller,
                 [&] { return !s.open || std::find(s.qid.begin(), s.qid.end(), my) == s.qid.end(); });
  } catch (...) {
    withdraw();
    free_if_drained();
    throw;
  }
  const bool delivered = !withdraw();
  free_if_drained();
  return delivered;
}

template <class T>
bool ch_put(std::uint64_t id, int caller, T v) {  // false: closed
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return false;
  if (s->capacity == 0) return ch_put_unbuffered(id, *s, caller, std::move(v));
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_full, caller, [&] { return !s->open || s->q.size() < s->capacity; });
  if (!s->open) return false;
  s->q.push_back(std::move(v));
  lk.unlock();
  s->not_empty.notify_all();  // takers and fetchers/waiters
  return true;
}

template <class T>
std::optional<T> ch_take(std::uint64_t id, int caller) {  // nullopt: closed and empty
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return std::nullopt;
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_empty, caller, [&] { return !s->open || !s->q.empty(); });
  if (s->q.empty()) return std::nullopt;
  std::optional<T> v(std::move(s->q.front()));
  s->pop_front();
  const bool drained = !s->open && s->q.empty();
  const bool unbuffered = s->capacity == 0;
  lk.unlock();
  if (unbuffered) s->not_full.notify_all();  // the put whose value this was returns
  else s->not_full.notify_one();
  if (drained) erase_remote_object(id);
  return v;
}

template <class T>
std::optional<T> ch_fetch(std::uint64_t id, int caller) {  // nullopt: closed and empty
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return std::nullopt;
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_empty, caller, [&] { return !s->open || !s->q.empty(); });
  if (s->q.empty()) return std::nullopt;
  return std::optional<T>(s->q.front());
}

template <class T>
bool ch_wait(std::uint64_t id, int caller) {  // false: closed and empty
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return false;
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_empty, caller, [&] { return !s->open || !s->q.empty(); });
  return !s->q.empty();
}

template <class T>
bool ch_isready(std::uint64_t id) {
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return !s->q.empty();
}

template <class T>
bool ch_is_open(std::uint64_t id) {
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return s->open;
}

template <class T>
std::uint64_t ch_length(std::uint64_t id) {
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return 0;
  std::lock_guard lk(s->m);
  return s->q.size();
}

template <class T>
void ch_close(std::uint64_t id) {
  auto s = find_remote_object<ChannelState<T>>(id);
  if (!s) return;
  bool drained;
  {
    std::lock_guard lk(s->m);
    s->open = false;
    drained = s->q.empty();
  }
  s->not_empty.notify_all();
  s->not_full.notify_all();
  if (drained) erase_remote_object(id);
}

}  // namespace detail

/// Julia's RemoteChannel: a bounded FIFO channel owned by one process and usable from every
/// process and thread. See the top of this file for lifetime and failures.
template <class T>
class RemoteChannel {
  static_assert(detail::shippable_v<T>,
                "vscale: the values of a RemoteChannel must be shippable: trivially copyable, or with a cereal "
                "`serialize` member (std strings, containers and tuples work as they are)");

 public:
  using value_type = T;

  /// An empty handle that names no channel (assign one to it).
  RemoteChannel() = default;

  /// A new channel holding at most `capacity` values, owned by process `owner`. Capacity 0
  /// makes an unbuffered channel (Julia's Channel(0)): put blocks until a take gets its value.
  explicit RemoteChannel(std::size_t capacity, int owner = myid()) : owner_(owner), capacity_(capacity) {
    id_ = detail::new_remote_object_id();
    const std::uint64_t cap = capacity;
    if (owner == myid()) {
      detail::remote_object_create<detail::ChannelState<T>>(id_, cap);
    } else {
      remotecall_fetch(owner, &detail::remote_object_create<detail::ChannelState<T>, std::uint64_t>, id_, cap);
    }
  }

  /// Append `v`; blocks while the channel is full (unbuffered: until a take gets it). Throws
  /// ChannelClosedError when it is closed (unbuffered: also when closed before a take came).
  void put(T v) const {
    check("put");
    const bool ok = local() ? detail::ch_put<T>(id_, myid(), std::move(v))
                            : detail::channel_remote(owner_, &detail::ch_put<T>, id_, myid(), std::move(v));
    if (!ok) closed_error("put", "the channel is closed");
  }

  /// Remove and return the oldest value; blocks while the channel is empty and open. Throws
  /// ChannelClosedError when it is closed and empty.
  T take() const {
    auto v = try_take();
    if (!v) closed_error("take", "the channel is closed and empty");
    return std::move(*v);
  }

  /// Like take(), but an empty optional instead of an exception when closed and empty.
  std::optional<T> try_take() const {
    check("take");
    return local() ? detail::ch_take<T>(id_, myid()) : detail::channel_remote(owner_, &detail::ch_take<T>, id_, myid());
  }

  /// The oldest value, left in the channel; blocks like take(). Not on an unbuffered channel
  /// (as in Julia: a value there belongs to the put waiting for its taker).
  T fetch() const {
    check("fetch");
    if (capacity_ == 0)
      throw UsageError("vscale: fetch on " + name() + ", an unbuffered channel (capacity 0): use take");
    auto v = local() ? detail::ch_fetch<T>(id_, myid()) : detail::channel_remote(owner_, &detail::ch_fetch<T>, id_, myid());
    if (!v) closed_error("fetch", "the channel is closed and empty");
    return std::move(*v);
  }

  /// Whether a value is there now (take() would not block).
  bool isready() const {
    check("isready");
    return local() ? detail::ch_isready<T>(id_) : detail::channel_remote(owner_, &detail::ch_isready<T>, id_);
  }

  /// Block until a value is there. Throws ChannelClosedError when closed and empty.
  void wait() const {
    check("wait");
    const bool ok = local() ? detail::ch_wait<T>(id_, myid()) : detail::channel_remote(owner_, &detail::ch_wait<T>, id_, myid());
    if (!ok) closed_error("wait", "the channel is closed and empty");
  }

  /// Close the channel: no more puts; values already in it can still be taken; every blocked
  /// put, and every take/fetch/wait that finds it empty, wakes with ChannelClosedError.
  void close() const {
    check("close");
    if (local()) detail::ch_close<T>(id_);
    else detail::channel_remote(owner_, &detail::ch_close<T>, id_);
  }

  bool is_open() const {
    check("is_open");
    return local() ? detail::ch_is_open<T>(id_) : detail::channel_remote(owner_, &detail::ch_is_open<T>, id_);
  }

  /// Number of values in the channel now (unbuffered: puts waiting for a take).
  std::size_t size() const {
    check("size");
    return local() ? detail::ch_length<T>(id_) : detail::channel_remote(owner_, &detail::ch_length<T>, id_);
  }

  int owner() const noexcept { return owner_; }
  std::size_t capacity() const noexcept { return capacity_; }
  std::uint64_t id() const noexcept { return id_; }
  bool valid() const noexcept { return id_ != 0; }
  /// "RemoteChannel 1.3 (owned by process 2)".
  std::string name() const {
    return "RemoteChannel " + detail::remote_object_name(id_) + " (owned by process " + std::to_string(owner_) + ")";
  }
  friend bool operator==(const RemoteChannel&, const RemoteChannel&) = default;

  /// `for (T v : ch)`: takes values until the channel is closed and drained.
  struct sentinel {};
  class iterator {
   public:
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    T& operator*() { return *cur_; }
    iterator& operator++() {
      cur_ = ch_->try_take();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, sentinel) { return !it.cur_.has_value(); }

   private:
    friend class RemoteChannel;
    explicit iterator(const RemoteChannel* ch) : ch_(ch), cur_(ch->try_take()) {}
    const RemoteChannel* ch_ = nullptr;
    std::optional<T> cur_;
  };
  iterator begin() const { return iterator(this); }
  sentinel end() const { return {}; }

 private:
  bool local() const { return owner_ == myid(); }
  void check(const char* op) const {
    if (id_ == 0)
      throw UsageError(std::string("vscale: ") + op + " on an empty RemoteChannel handle (default-constructed)");
  }
  [[noreturn]] void closed_error(const char* op, const char* why) const {
    throw ChannelClosedError(std::string("vscale: ") + op + " on " + name() + " from process " +
                             std::to_string(myid()) + ": " + why);
  }

  std::int32_t owner_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t id_ = 0;
};

static_assert(std::is_trivially_copyable_v<RemoteChannel<int>>);

/// A handle on an object of type S that lives on process `owner()` (made by remote_object).
/// Trivially copyable like RemoteChannel: pass it to remote calls or capture it by value.
/// `call(f, args...)` runs `f(S&, args...)` on the owner and returns its result; `f` may block
/// there (on S's own condition variables, say), as channel operations do. Concurrent calls
/// run concurrently: S does its own locking. The object lives until free().
template <class S>
class RemoteValue {
 public:
  RemoteValue() = default;
  RemoteValue(int owner, std::uint64_t id) : owner_(owner), id_(id) {}

  template <class F, class... A>
  auto call(F&& f, A&&... args) const -> std::decay_t<std::invoke_result_t<std::decay_t<F>&, S&, std::decay_t<A>&...>> {
    using Fd = std::decay_t<F>;
    if (id_ == 0) throw UsageError("vscale: call on an empty RemoteValue handle (default-constructed)");
    if (owner_ == myid())
      return detail::remote_object_call<S, Fd, std::decay_t<A>...>(id_, Fd(std::forward<F>(f)), std::forward<A>(args)...);
    return remotecall_fetch(owner_, &detail::remote_object_call<S, Fd, std::decay_t<A>...>, id_, std::forward<F>(f),
                            std::forward<A>(args)...);
  }

  /// Destroy the object on its owner; later calls throw. Returns false if it was already gone.
  bool free() const {
    if (id_ == 0) return false;
    if (owner_ == myid()) return detail::remote_object_free<S>(id_);
    return remotecall_fetch(owner_, &detail::remote_object_free<S>, id_);
  }

  int owner() const noexcept { return owner_; }
  std::uint64_t id() const noexcept { return id_; }
  friend bool operator==(const RemoteValue&, const RemoteValue&) = default;

 private:
  std::int32_t owner_ = 0;
  std::uint64_t id_ = 0;
};

/// Construct an S from `args` on process `owner` (the arguments are shipped there; S itself
/// need not be shippable) and return a handle on it.
/// Example: auto d = vscale::remote_object<DictChannel>(1); d.call([](DictChannel& c, int k) { ... }, 3);
template <class S, class... A>
RemoteValue<S> remote_object(int owner, A&&... args) {
  const std::uint64_t id = detail::new_remote_object_id();
  if (owner == myid()) {
    detail::remote_object_create<S, std::decay_t<A>...>(id, std::forward<A>(args)...);
  } else {
    remotecall_fetch(owner, &detail::remote_object_create<S, std::decay_t<A>...>, id, std::forward<A>(args)...);
  }
  return RemoteValue<S>(owner, id);
}

}  // namespace vscale
