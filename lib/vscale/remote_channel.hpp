// RemoteChannel<T>: Julia's RemoteChannel. (RemoteValue<S>, a handle on an object of any type
// kept the same way: remote_value.hpp.)
//
// A channel's state (a bounded FIFO queue, a mutex, condition variables, an open flag) lives
// on its owner process, in that process's registry of remote objects, under its RefId
// (detail/core.hpp: owner, creator, sequence number). A handle names it and carries a weight, exactly as a
// Future does (detail/core.hpp): copies in one process share one reference, a handle sent to
// another process takes half of the sender's weight with it, and the owner keeps the state
// while any weight is out there or any handle of its own exists. Handles travel as arguments
// and results of remote calls (or inside vscale::closure); like every vscale handle they are
// not trivially copyable, so a shipped lambda cannot capture one. Every operation is a
// remotecall_fetch to the owner that waits there on the channel's condition variable (the
// owner adds executor threads when calls queue behind blocked ones, see remotecall.hpp); on
// the owner itself it goes straight to the state. The exception is put on a buffered channel
// from another process: while the owner has reserved room for this process (credits, granted
// with a put that went as a round trip), a put is one message and returns at once, so items
// stream (detail/channel_credits.hpp). Order per producer and "nothing lost, nothing twice"
// hold as for round trips: an operation from here after a put sees it in the channel, and
// close() returns once every put on credit is in. All operations may be used from any process
// and any thread. Takes are not prefetched: a value moved to a consumer before its take asks
// would belong to no one there (another consumer would get a later value first, and a consumer
// that dies or stops would keep values nobody can take); to stream the other way, put batches
// (a std::vector per item) or use pmap.
//
//     vscale::RemoteChannel<int> jobs(32);          // owned by this process
//     vscale::RemoteChannel<int> other(8, 2);       // owned by worker 2
//     vscale::remote_do(2, [](vscale::RemoteChannel<int> j) { for (int v : j) work(v); }, jobs);
//     jobs.put(1); jobs.put(2); jobs.close();
//
// Lifetime: the owner frees a channel's state when the last handle on any process is gone,
// closed or not (values still in it are dropped, as in Julia). A process that dies holding a
// handle never returns its weight: that channel then lives until its owner ends (as a Future's
// value does).
//
// Failures: take/fetch/wait on a closed, empty channel and put on a closed one (also a put or
// take blocked when close() is called) throw ChannelClosedError, whose message names the
// channel and its owner. If the owner process dies or is removed, every operation on its
// channels (those already blocked included) throws ProcessExitedException with the owner's id
// and the reason. A blocked operation whose caller process dies is abandoned by the owner
// (checked every 100 ms), so a value is not taken on behalf of a process that is gone.
// Capacity 0 makes an unbuffered channel, as Julia's Channel(0): a put returns once a take
// has its value (isready() and size() count the puts waiting), and fetch is refused.
//
// Timed operations (take_for, put_for, wait_for) give up after a duration, also when the
// owner does not answer at all (stopped, hung). Nothing is lost and nothing happens twice: the
// owner stops waiting at the deadline itself, and when a take_for or put_for from another
// process is served, the owner holds the value aside and the caller decides: it accepts if the
// answer came in time, or declines, and then the value goes back where it was (a take's value
// to the front of the channel; a put's value is not put). A value held that way counts
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "vscale/cluster.hpp"
#include "vscale/detail/channel_state.hpp"
#include "vscale/detail/remote_object.hpp"
#include "vscale/detail/timed_call.hpp"
#include "vscale/errors.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

/// A channel operation that needs an open channel (put), or a value from a closed, empty one
/// (take, fetch, wait). Julia's InvalidStateException.
class ChannelClosedError : public Error {
 public:
  using Error::Error;
};

template <class T>
class RemoteChannel;

namespace detail {
template <class T>
RemoteChannel<T> channel_make(std::uint64_t capacity);
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
  /// A new channel holding at most `capacity` values (0: unbuffered), owned by process `owner`.
  explicit RemoteChannel(std::size_t capacity, int owner = myid());

  /// Append `v`; blocks while the channel is full (unbuffered: until a take gets it).
  void put(T v) const;
  /// Like put(), but gives up after `d` (also when the owner does not answer): false then.
  template <class Rep, class Period>
  bool put_for(T v, std::chrono::duration<Rep, Period> d) const;
  /// Remove and return the oldest value; blocks while the channel is empty and open.
  T take() const;
  /// Like take(), but an empty optional instead of an exception when closed and empty.
  std::optional<T> try_take() const;
  /// Like take(), but gives up after `d` (also when the owner does not answer): nullopt then.
  template <class Rep, class Period>
  std::optional<T> take_for(std::chrono::duration<Rep, Period> d) const;
  /// The oldest value, left in the channel; blocks like take(). Not on an unbuffered channel.
  T fetch() const;
  /// Whether a value is there now (take() would not block).
  bool isready() const;
  /// Block until a value is there. Throws ChannelClosedError when closed and empty.
  void wait() const;
  /// Like wait(), but gives up after `d` (also when the owner does not answer): true when a
  /// value is there.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const;
  /// Close the channel: no more puts; values already in it can still be taken.
  void close() const;
  /// Whether the channel is still open (Julia's isopen).
  bool isopen() const;
  /// Number of values in the channel now (unbuffered: puts waiting for a take).
  std::size_t length() const;

  /// The process that holds the channel's state.
  int owner() const noexcept { return ref_.owner(); }
  std::size_t capacity() const noexcept { return capacity_; }
  detail::RefId id() const noexcept { return ref_.id(); }
  /// False for an empty handle (default-constructed).
  bool valid() const noexcept { return ref_.valid(); }
  /// "RemoteChannel 1.3 (owned by process 2)".
  std::string name() const;
  friend bool operator==(const RemoteChannel& a, const RemoteChannel& b) noexcept { return a.ref_ == b.ref_; }

  /// Ships the handle (a reference with weight, never the values).
  template <class A>
  void save(A& ar) const { ar(ref_, capacity_); }
  template <class A>
  void load(A& ar) {
    ar(ref_, capacity_);
    book_.reset();
    // A buffered channel owned elsewhere: puts from here go on credit when they can.
    if (ref_.valid() && capacity_ > 0 && !local()) book_ = detail::credit_book(id(), &detail::give_back_credits<T>);
  }

  /// `for (T v : ch)`: takes values until the channel is closed and drained.
  struct sentinel {};
  class iterator;
  iterator begin() const { return iterator(this); }
  sentinel end() const { return {}; }

 private:
  friend RemoteChannel detail::channel_make<T>(std::uint64_t);
  RemoteChannel(detail::RemoteRef ref, std::uint64_t capacity) : ref_(std::move(ref)), capacity_(capacity) {}
  bool local() const { return owner() == myid(); }
  /// fn(id(), a...) on the owner: straight to the state there, else a call that waits there.
  template <class R, class... P, class... A>
  R on_owner(R (*fn)(detail::RefId, P...), A&&... a) const;
  void check(const char* op) const;
  [[noreturn]] void closed_error(const char* op, const char* why) const;

  detail::RemoteRef ref_;
  std::uint64_t capacity_ = 0;
  std::shared_ptr<detail::CreditBook> book_;  // this process's credits on it (channel_credits.hpp)
};

/// RemoteChannel's input iterator: each step is a try_take().
template <class T>
class RemoteChannel<T>::iterator {
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

// Capacity 0 makes an unbuffered channel (Julia's Channel(0)): put blocks until a take gets
// its value.
template <class T>
RemoteChannel<T>::RemoteChannel(std::size_t capacity, int owner) {
  const std::uint64_t cap = capacity;
  if (owner == myid()) *this = detail::channel_make<T>(cap);
  else *this = remotecall_fetch(owner, &detail::channel_make<T>, cap);
}

// Throws ChannelClosedError when it is closed (unbuffered: also when closed before a take came).
// From another process than the owner, a put on credit is one message and no wait
// (channel_credits.hpp); without credit it is a round trip that brings credits back.
template <class T>
void RemoteChannel<T>::put(T v) const {
  check("put");
  if (book_) {
    if (book_->take_one()) {
      try {
        detail::inline_call(owner(), true, &detail::ch_put_credited<T>, id(), myid(), std::move(v));
      } catch (...) {  // not sent (the value would not serialize, say): the credit is still ours
        book_->add(1);
        throw;
      }
      return;
    }
    const std::int64_t g = detail::channel_remote(owner(), &detail::ch_put_granting<T>, id(), myid(), std::move(v));
    if (g < 0) closed_error("put", "the channel is closed");
    book_->add(static_cast<std::uint64_t>(g));
    return;
  }
  if (!on_owner(&detail::ch_put<T>, myid(), std::move(v))) closed_error("put", "the channel is closed");
}

// When it gives up, `v` is not in the channel. Throws ChannelClosedError when it is closed.
// Unbuffered: true once a take has the value (from another process than the owner: once a
// take was waiting for it; should that take give up meanwhile, the value waits for the next one).
template <class T>
template <class Rep, class Period>
bool RemoteChannel<T>::put_for(T v, std::chrono::duration<Rep, Period> d) const {
  check("put_for");
  const auto lim = detail::timed_limits(d);
  std::uint8_t outcome;
  if (local()) {
    outcome = detail::ch_put_timed<T>(id(), myid(), detail::RefId{}, std::move(v), lim.until, detail::kNoDeadlineNs);
  } else {
    const int own = owner();
    const detail::RefId oid = id(), ticket = detail::new_ref_id();
    auto got = detail::timed_call<std::uint8_t, detail::RefId, int, detail::RefId, T, std::int64_t, std::int64_t>(
        own, lim.give_up,
        [own, oid, ticket](const std::uint8_t& late) {
          if (late == detail::kChDone) detail::post_verdict<T>(own, oid, ticket, false, false);
        },
        &detail::ch_put_timed<T>, oid, myid(), ticket, std::move(v), lim.until, lim.serve);
    if (!got) return false;
    outcome = *got;
    if (outcome == detail::kChDone) {
      // Accepted: wait until the value is in the channel, so that this process's next put
      // comes after it (FIFO per producer). Only an owner that stops right now makes this
      // wait long; after a second the put is known to be in, and its place follows.
      try {
        (void)detail::timed_call<std::uint8_t, detail::RefId, detail::RefId, bool>(
            own, std::max(lim.give_up, detail::ch_now_ns() + 1'000'000'000), {}, &detail::ch_verdict<T>, oid, ticket,
            true);
      } catch (const ProcessExitedException&) {  // the value went with its owner, as any put's
      }
    }
  }
  if (outcome == detail::kChClosed) closed_error("put_for", "the channel is closed");
  return outcome == detail::kChDone;
}

// Throws ChannelClosedError when it is closed and empty.
template <class T>
T RemoteChannel<T>::take() const {
  auto v = try_take();
  if (!v) closed_error("take", "the channel is closed and empty");
  return std::move(*v);
}

template <class T>
std::optional<T> RemoteChannel<T>::try_take() const {
  check("take");
  return on_owner(&detail::ch_take<T>, myid());
}

// When it gives up, nothing was taken. Throws ChannelClosedError when closed and empty.
template <class T>
template <class Rep, class Period>
std::optional<T> RemoteChannel<T>::take_for(std::chrono::duration<Rep, Period> d) const {
  check("take_for");
  const auto lim = detail::timed_limits(d);
  detail::ChReply<T> r;
  if (local()) {
    r = detail::ch_take_timed<T>(id(), myid(), detail::RefId{}, lim.until, detail::kNoDeadlineNs);
  } else {
    const int own = owner();
    const detail::RefId oid = id(), ticket = detail::new_ref_id();
    auto got = detail::timed_call<detail::ChReply<T>, detail::RefId, int, detail::RefId, std::int64_t, std::int64_t>(
        own, lim.give_up,
        [own, oid, ticket](const detail::ChReply<T>& late) {
          if (late.outcome == detail::kChDone) detail::post_verdict<T>(own, oid, ticket, false, false);
        },
        &detail::ch_take_timed<T>, oid, myid(), ticket, lim.until, lim.serve);
    if (!got) return std::nullopt;
    r = std::move(*got);
    if (r.outcome == detail::kChDone) detail::post_verdict<T>(own, oid, ticket, true, true);
  }
  if (r.outcome == detail::kChClosed) closed_error("take_for", "the channel is closed and empty");
  return std::move(r.v);
}

// Not on an unbuffered channel, as in Julia: a value there belongs to the put waiting for its taker.
template <class T>
T RemoteChannel<T>::fetch() const {
  check("fetch");
  if (capacity_ == 0)
    throw UsageError("vscale: fetch on " + name() + ", an unbuffered channel (capacity 0): use take");
  auto v = on_owner(&detail::ch_fetch<T>, myid());
  if (!v) closed_error("fetch", "the channel is closed and empty");
  return std::move(*v);
}

template <class T>
bool RemoteChannel<T>::isready() const {
  check("isready");
  return on_owner(&detail::ch_isready<T>);
}

template <class T>
void RemoteChannel<T>::wait() const {
  check("wait");
  if (!on_owner(&detail::ch_wait<T>, myid())) closed_error("wait", "the channel is closed and empty");
}

// Throws ChannelClosedError when closed and empty.
template <class T>
template <class Rep, class Period>
bool RemoteChannel<T>::wait_for(std::chrono::duration<Rep, Period> d) const {
  check("wait_for");
  const auto lim = detail::timed_limits(d);
  std::uint8_t outcome;
  if (local()) {
    outcome = detail::ch_wait_timed<T>(id(), myid(), lim.until, detail::kNoDeadlineNs);
  } else {
    auto got = detail::timed_call<std::uint8_t, detail::RefId, int, std::int64_t, std::int64_t>(
        owner(), lim.give_up, {}, &detail::ch_wait_timed<T>, id(), myid(), lim.until, lim.serve);
    if (!got) return false;
    outcome = *got;
  }
  if (outcome == detail::kChClosed) closed_error("wait_for", "the channel is closed and empty");
  return outcome == detail::kChDone;
}

// Every blocked put, and every take/fetch/wait that finds it empty, wakes with ChannelClosedError.
template <class T>
void RemoteChannel<T>::close() const {
  check("close");
  on_owner(&detail::ch_close<T>);
}

template <class T>
bool RemoteChannel<T>::isopen() const {
  check("isopen");
  return on_owner(&detail::ch_isopen<T>);
}

template <class T>
std::size_t RemoteChannel<T>::length() const {
  check("length");
  return on_owner(&detail::ch_length<T>);
}

template <class T>
std::string RemoteChannel<T>::name() const {
  return "RemoteChannel " + detail::ref_id_name(id()) + " (owned by process " + std::to_string(owner()) + ")";
}

template <class T>
template <class R, class... P, class... A>
R RemoteChannel<T>::on_owner(R (*fn)(detail::RefId, P...), A&&... a) const {
  if (local()) return fn(id(), std::forward<A>(a)...);
  return detail::channel_remote(owner(), fn, id(), std::forward<A>(a)...);
}

template <class T>
void RemoteChannel<T>::check(const char* op) const {
  if (!ref_.valid())
    throw UsageError(std::string("vscale: ") + op + " on an empty RemoteChannel handle (default-constructed)");
}

template <class T>
void RemoteChannel<T>::closed_error(const char* op, const char* why) const {
  throw ChannelClosedError(std::string("vscale: ") + op + " on " + name() + " from process " + std::to_string(myid()) +
                           ": " + why);
}

namespace detail {
/// On the process that will own it: a new channel and the first handle on it.
template <class T>
RemoteChannel<T> channel_make(std::uint64_t capacity) {
  auto state = std::make_shared<ChannelState<T>>(capacity);
  auto core = new_remote_object(state);
  state->id = core->id;  // (before any handle exists: nobody else can reach the state yet)
  return RemoteChannel<T>(RemoteRef(std::move(core)), capacity);
}
}  // namespace detail

}  // namespace vscale
