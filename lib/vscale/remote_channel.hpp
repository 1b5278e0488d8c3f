// RemoteChannel<T> (Julia's RemoteChannel) and RemoteValue<S>, a handle on any object that
// lives on one process (the way to build channels over a user type, like the manual's
// DictChannel).
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
// the owner itself it goes straight to the state. All operations may be used from any process
// and any thread.
//
//     vscale::RemoteChannel<int> jobs(32);          // owned by this process
//     vscale::RemoteChannel<int> other(8, 2);       // owned by worker 2
//     vscale::remote_do(2, [](vscale::RemoteChannel<int> j) { for (int v : j) work(v); }, jobs);
//     jobs.put(1); jobs.put(2); jobs.close();
//
// Lifetime: the owner frees a channel's state when the last handle on any process is gone,
// closed or not (values still in it are dropped, as in Julia). A process that dies holding a
// handle never returns its weight: that channel then lives until its owner ends (as a Future's
// value does). RemoteValue objects are freed the same way, or earlier by free().
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
// towards the capacity, a closed channel is not "closed and empty" while one is out, and the
// values held for a process that dies go back.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
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
#include "vscale/detail/remote_object.hpp"
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
template <class S>
class RemoteValue;

namespace detail {

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

/// What a timed operation came to.
enum ChOutcome : std::uint8_t { kChDone = 0, kChClosed = 1, kChTimedOut = 2 };

/// The answer of a timed take: the outcome, and the value when kChDone.
template <class T>
struct ChReply {
  std::uint8_t outcome = kChTimedOut;
  std::optional<T> v;
  template <class A>
  void serialize(A& a) {  // (trivially copyable T: sent as bytes, this is not used)
    a(outcome, v);
  }
};

template <class T>
struct ChannelState {
  explicit ChannelState(std::uint64_t cap) : capacity(cap) {}
  std::mutex m;
  std::condition_variable not_empty;  // a value arrived, or closed
  std::condition_variable not_full;   // a value left, a taker came, or closed
  std::deque<T> q;
  std::uint64_t capacity;
  bool open = true;
  // Unbuffered (capacity 0) only: each value in q is a put still waiting for its taker, and
  // qid[k] names the put of q[k].
  std::deque<std::uint64_t> qid;
  std::uint64_t next_put = 0;
  // Values held aside for a timed take or put of another process until it decides (by its
  // ticket); see the top of this file.
  struct Held {
    int caller;
    bool take;          // a take's value (else a put's, not in the channel yet)
    T v;
    std::uint64_t qid;  // unbuffered take: the put the value came from
  };
  std::unordered_map<RefId, Held, RefIdHash> held;  // by ticket
  std::size_t held_takes = 0, held_puts = 0;
  std::size_t takers = 0;  // takes waiting now (an unbuffered put_for is served only when one waits)

  void pop_front() {
    q.pop_front();
    if (capacity == 0) qid.pop_front();
  }
  bool room() const { return q.size() + held_takes + held_puts < capacity; }
  bool closed_and_empty() const { return !open && q.empty() && held_takes == 0; }
  bool in_queue(std::uint64_t put) const { return std::find(qid.begin(), qid.end(), put) != qid.end(); }
  bool on_offer(std::uint64_t put) const {
    if (held_takes == 0) return false;
    for (const auto& [t, h] : held)
      if (h.take && h.qid == put) return true;
    return false;
  }
  // With m held: the caller of held value `it` accepted it (it is theirs) or declined it (it
  // goes back). The caller notifies both condition variables afterwards.
  void settle(typename std::unordered_map<RefId, Held, RefIdHash>::iterator it, bool accept) {
    Held h = std::move(it->second);
    held.erase(it);
    if (h.take) {
      --held_takes;
      if (!accept) {
        q.push_front(std::move(h.v));
        if (capacity == 0) qid.push_front(h.qid);
      }
    } else {
      --held_puts;
      if (accept) {
        q.push_back(std::move(h.v));
        if (capacity == 0) qid.push_back(++next_put);  // nobody waits on it: the put returned
      }
    }
  }
  // With m held: values held for processes that are gone go back (their verdict never comes).
  void sweep() {
    if (held.empty()) return;
    const auto live = procs();
    bool any = false;
    for (auto it = held.begin(); it != held.end();) {
      auto cur = it++;
      if (!std::binary_search(live.begin(), live.end(), cur->second.caller)) {
        settle(cur, false);
        any = true;
      }
    }
    if (any) {
      not_empty.notify_all();
      not_full.notify_all();
    }
  }
};

// Counts a take as waiting while it lives (with the state's mutex held at both ends).
struct TakerMark {
  explicit TakerMark(std::size_t& n) : n_(n) { ++n_; }
  ~TakerMark() { --n_; }
  TakerMark(const TakerMark&) = delete;
  TakerMark& operator=(const TakerMark&) = delete;
  std::size_t& n_;
};

template <class T>
std::shared_ptr<ChannelState<T>> ch_state(const RefId& id) {
  return find_remote_object<ChannelState<T>>(id);
}

// An unbuffered put (Julia's Channel(0)) on the owner's process: the value waits in the queue
// until a take gets it, and put returns only then. If the put is abandoned first (channel
// closed, caller interrupted or gone, deadline), its value leaves the queue again: it was
// delivered or it was not, never both, never lost. A value out on offer to a timed take of
// another process is neither: the put waits for that take's verdict.
template <class T>
ChOutcome ch_put_unbuffered(ChannelState<T>& s, int caller, T v, std::int64_t until_ns) {
  std::unique_lock lk(s.m);
  if (!s.open) return kChClosed;
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
  auto await_verdict = [&] {
    while (s.on_offer(my)) {
      s.sweep();
      if (s.on_offer(my)) s.not_full.wait_for(lk, std::chrono::milliseconds(100));
    }
  };
  bool ok;
  try {
    ok = channel_wait(lk, s.not_full, caller, [&] {
      s.sweep();
      return !s.open || (!s.in_queue(my) && !s.on_offer(my));
    }, "put", until_ns);
  } catch (...) {
    await_verdict();
    if (withdraw()) throw;
    return kChDone;  // delivered meanwhile: the put happened
  }
  await_verdict();
  if (withdraw()) return ok ? kChClosed : kChTimedOut;
  return kChDone;
}

template <class T>
bool ch_put(RefId id, int caller, T v) {  // false: closed
  auto s = ch_state<T>(id);
  if (!s) return false;
  if (s->capacity == 0) return ch_put_unbuffered(*s, caller, std::move(v), kNoDeadlineNs) == kChDone;
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_full, caller, [&] {
    s->sweep();
    return !s->open || s->room();
  }, "put");
  if (!s->open) return false;
  s->q.push_back(std::move(v));
  lk.unlock();
  s->not_empty.notify_all();  // takers and fetchers/waiters
  return true;
}

/// A timed put: `ticket` RefId{} from the owner's own process (done at once), else the value is held
/// for the caller's verdict (ch_verdict). Returns a ChOutcome.
template <class T>
std::uint8_t ch_put_timed(RefId id, int caller, RefId ticket, T v, std::int64_t until_ns,
                          std::int64_t serve_ns) {
  auto s = ch_state<T>(id);
  if (!s) return kChClosed;
  if (s->capacity == 0 && ticket == RefId{}) return ch_put_unbuffered(*s, caller, std::move(v), until_ns);
  std::unique_lock lk(s->m);
  const bool ok = channel_wait(lk, s->not_full, caller, [&] {
    s->sweep();
    if (!s->open) return true;
    // Unbuffered: served once a take waits for a value that no other put has promised.
    return s->capacity ? s->room() : s->takers > s->q.size() + s->held_puts;
  }, "put_for", until_ns, serve_ns);
  if (!ok) return kChTimedOut;
  if (!s->open) return kChClosed;
  if (ticket == RefId{}) {
    s->q.push_back(std::move(v));
    lk.unlock();
    s->not_empty.notify_all();
    return kChDone;
  }
  s->held.emplace(ticket, typename ChannelState<T>::Held{caller, false, std::move(v), 0});
  ++s->held_puts;
  return kChDone;
}

template <class T>
std::optional<T> ch_take(RefId id, int caller) {  // nullopt: closed and empty
  auto s = ch_state<T>(id);
  if (!s) return std::nullopt;
  std::unique_lock lk(s->m);
  {
    TakerMark mark(s->takers);
    if (s->capacity == 0) s->not_full.notify_all();  // a put_for may wait for a taker
    channel_wait(lk, s->not_empty, caller, [&] {
      s->sweep();
      return !s->q.empty() || s->closed_and_empty();
    }, "take");
  }
  if (s->q.empty()) return std::nullopt;
  std::optional<T> v(std::move(s->q.front()));
  s->pop_front();
  const bool unbuffered = s->capacity == 0;
  lk.unlock();
  if (unbuffered) s->not_full.notify_all();  // the put whose value this was returns
  else s->not_full.notify_one();
  return v;
}

/// A timed take: `ticket` RefId{} from the owner's own process (taken at once), else the value is
/// held for the caller's verdict (ch_verdict).
template <class T>
ChReply<T> ch_take_timed(RefId id, int caller, RefId ticket, std::int64_t until_ns,
                         std::int64_t serve_ns) {
  ChReply<T> r;
  auto s = ch_state<T>(id);
  if (!s) {
    r.outcome = kChClosed;
    return r;
  }
  std::unique_lock lk(s->m);
  bool ok;
  {
    TakerMark mark(s->takers);
    if (s->capacity == 0) s->not_full.notify_all();
    ok = channel_wait(lk, s->not_empty, caller, [&] {
      s->sweep();
      return !s->q.empty() || s->closed_and_empty();
    }, "take_for", until_ns, serve_ns);
  }
  if (!ok) return r;  // timed out
  if (s->q.empty()) {
    r.outcome = kChClosed;
    return r;
  }
  r.outcome = kChDone;
  if (ticket == RefId{}) {
    r.v.emplace(std::move(s->q.front()));
    s->pop_front();
    const bool unbuffered = s->capacity == 0;
    lk.unlock();
    if (unbuffered) s->not_full.notify_all();
    else s->not_full.notify_one();
    return r;
  }
  const std::uint64_t from = s->capacity == 0 ? s->qid.front() : 0;
  r.v.emplace(s->q.front());  // a copy travels; the value itself is held until the verdict
  s->held.emplace(ticket, typename ChannelState<T>::Held{caller, true, std::move(s->q.front()), from});
  ++s->held_takes;
  s->pop_front();
  return r;
}

/// The caller of timed operation `ticket` accepts (the value is its own, or its put is in the
/// channel) or declines (the value goes back, or is not put). 1 when the ticket was held.
template <class T>
std::uint8_t ch_verdict(RefId id, RefId ticket, bool accept) {
  auto s = ch_state<T>(id);
  if (!s) return 0;  // freed: no handle is left anywhere, nobody can see the value
  {
    std::lock_guard lk(s->m);
    auto it = s->held.find(ticket);
    if (it == s->held.end()) return 0;
    s->settle(it, accept);
  }
  s->not_empty.notify_all();
  s->not_full.notify_all();
  return 1;
}

template <class T>
std::optional<T> ch_fetch(RefId id, int caller) {  // nullopt: closed and empty
  auto s = ch_state<T>(id);
  if (!s) return std::nullopt;
  std::unique_lock lk(s->m);
  channel_wait(lk, s->not_empty, caller, [&] {
    s->sweep();
    return !s->q.empty() || s->closed_and_empty();
  }, "fetch");
  if (s->q.empty()) return std::nullopt;
  return std::optional<T>(s->q.front());
}

template <class T>
std::uint8_t ch_wait_timed(RefId id, int caller, std::int64_t until_ns, std::int64_t serve_ns) {
  auto s = ch_state<T>(id);
  if (!s) return kChClosed;
  std::unique_lock lk(s->m);
  const bool ok = channel_wait(lk, s->not_empty, caller, [&] {
    s->sweep();
    return !s->q.empty() || s->closed_and_empty();
  }, "wait", until_ns, serve_ns);
  if (!ok) return kChTimedOut;
  return s->q.empty() ? kChClosed : kChDone;
}

template <class T>
bool ch_wait(RefId id, int caller) {  // false: closed and empty
  return ch_wait_timed<T>(id, caller, kNoDeadlineNs, kNoDeadlineNs) == kChDone;
}

template <class T>
bool ch_isready(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return !s->q.empty();
}

template <class T>
bool ch_is_open(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return s->open;
}

template <class T>
std::uint64_t ch_length(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return 0;
  std::lock_guard lk(s->m);
  return s->q.size();
}

template <class T>
void ch_close(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return;
  {
    std::lock_guard lk(s->m);
    s->open = false;
  }
  s->not_empty.notify_all();
  s->not_full.notify_all();
}

template <class T>
RemoteChannel<T> channel_make(std::uint64_t capacity);

// ---- the caller's side of timed operations ----------------------------------------------

// The owner hands nothing out later than this after the deadline, and the caller waits this
// long for an answer: a value served just before the deadline still reaches it in time.
inline constexpr std::int64_t kServeSlackNs = 25'000'000;
inline constexpr std::int64_t kAnswerSlackNs = 50'000'000;

struct TimedLimits {
  std::int64_t until, serve, give_up;
};
template <class Rep, class Period>
TimedLimits timed_limits(std::chrono::duration<Rep, Period> d) {
  using namespace std::chrono;
  constexpr std::int64_t kMax = std::int64_t(100) * 365 * 24 * 3600 * 1'000'000'000;  // a century
  std::int64_t ns = 0;
  if (d > duration<Rep, Period>::zero())  // (compared as doubles: no overflow for any Rep)
    ns = duration<double, std::nano>(d).count() >= double(kMax) ? kMax : duration_cast<nanoseconds>(d).count();
  const std::int64_t until = ch_now_ns() + ns;
  return {until, until + kServeSlackNs, until + kAnswerSlackNs};
}

/// Tell the owner the verdict on `ticket`. `may_block` false: from the polling thread (never
/// waits for ring space). A gone owner needs no verdict.
template <class T>
void post_verdict(int owner, RefId id, RefId ticket, bool accept, bool may_block) noexcept {
  using Fn = std::uint8_t (*)(RefId, RefId, bool);
  try {
    Writer w;
    pack_call<Fn, RefId, RefId, bool>(w, &ch_verdict<T>, id, ticket, accept);
    call_do(owner, code_of<&invoke_call<Fn, RefId, RefId, bool>>(), w, may_block);
  } catch (...) {
  }
}

/// Run `fn(args...)` on `owner` and wait for its answer until `give_up_ns`; nullopt when none
/// came by then. An answer that comes later goes to `late` (on the polling thread: it must not
/// block). Throws what the call threw (InterruptedException for an abandoned operation).
template <class R, class... P>
std::optional<R> timed_call(int owner, std::int64_t give_up_ns, std::function<void(const R&)> late, R (*fn)(P...),
                            P... args) {
  using Fn = R (*)(P...);
  Writer w;
  pack_call<Fn, P...>(w, fn, args...);
  auto core = call_push(owner, code_of<&invoke_call<Fn, P...>>(), w);
  struct Wait {
    std::mutex m;
    std::condition_variable cv;
    bool done = false, gave_up = false;
  };
  auto st = std::make_shared<Wait>();
  FutureCore* c = core.get();  // alive while its continuations run
  bool pending;
  {
    std::lock_guard lk(c->m);
    pending = c->state.load() == FutureCore::Pending;
    if (pending)
      c->on_done.push_back([st, c, late = std::move(late)] {
        {
          std::lock_guard l(st->m);
          if (!st->gave_up) {
            st->done = true;
            st->cv.notify_all();
            return;
          }
        }
        if (!late || c->state.load() != FutureCore::Ready) return;
        try {
          std::lock_guard l(c->m);
          Reader r(c->bytes.data(), c->bytes.size());
          late(read<R>(r));
        } catch (...) {
        }
      });
  }
  if (pending) {
    std::unique_lock l(st->m);
    const std::chrono::steady_clock::time_point until(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(give_up_ns)));
    st->cv.wait_until(l, until, [&] { return st->done; });
    if (!st->done) {
      st->gave_up = true;  // from now on the answer goes to `late`
      return std::nullopt;
    }
  }
  if (c->state.load() == FutureCore::Failed) {
    try {
      c->error.raise();
    } catch (const RemoteException& e) {
      if (e.type() == "vscale::InterruptedException") throw InterruptedException(e.message());
      throw;
    }
  }
  std::lock_guard lk(c->m);
  Reader r(c->bytes.data(), c->bytes.size());
  return read<R>(r);
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
  explicit RemoteChannel(std::size_t capacity, int owner = myid()) {
    const std::uint64_t cap = capacity;
    if (owner == myid()) *this = detail::channel_make<T>(cap);
    else *this = remotecall_fetch(owner, &detail::channel_make<T>, cap);
  }

  /// Append `v`; blocks while the channel is full (unbuffered: until a take gets it). Throws
  /// ChannelClosedError when it is closed (unbuffered: also when closed before a take came).
  void put(T v) const {
    check("put");
    const bool ok = local() ? detail::ch_put<T>(id(), myid(), std::move(v))
                            : detail::channel_remote(owner(), &detail::ch_put<T>, id(), myid(), std::move(v));
    if (!ok) closed_error("put", "the channel is closed");
  }

  /// Like put(), but gives up after `d` (also when the owner does not answer): false then, and
  /// `v` is not in the channel. Throws ChannelClosedError when it is closed. Unbuffered: true
  /// once a take has the value (from another process than the owner: once a take was waiting
  /// for it; should that take give up meanwhile, the value waits for the next one).
  template <class Rep, class Period>
  bool put_for(T v, std::chrono::duration<Rep, Period> d) const {
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
    return local() ? detail::ch_take<T>(id(), myid())
                   : detail::channel_remote(owner(), &detail::ch_take<T>, id(), myid());
  }

  /// Like take(), but gives up after `d` (also when the owner does not answer): an empty
  /// optional then, and nothing was taken. Throws ChannelClosedError when closed and empty.
  template <class Rep, class Period>
  std::optional<T> take_for(std::chrono::duration<Rep, Period> d) const {
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

  /// The oldest value, left in the channel; blocks like take(). Not on an unbuffered channel
  /// (as in Julia: a value there belongs to the put waiting for its taker).
  T fetch() const {
    check("fetch");
    if (capacity_ == 0)
      throw UsageError("vscale: fetch on " + name() + ", an unbuffered channel (capacity 0): use take");
    auto v = local() ? detail::ch_fetch<T>(id(), myid())
                     : detail::channel_remote(owner(), &detail::ch_fetch<T>, id(), myid());
    if (!v) closed_error("fetch", "the channel is closed and empty");
    return std::move(*v);
  }

  /// Whether a value is there now (take() would not block).
  bool isready() const {
    check("isready");
    return local() ? detail::ch_isready<T>(id()) : detail::channel_remote(owner(), &detail::ch_isready<T>, id());
  }

  /// Block until a value is there. Throws ChannelClosedError when closed and empty.
  void wait() const {
    check("wait");
    const bool ok = local() ? detail::ch_wait<T>(id(), myid())
                            : detail::channel_remote(owner(), &detail::ch_wait<T>, id(), myid());
    if (!ok) closed_error("wait", "the channel is closed and empty");
  }

  /// Like wait(), but gives up after `d` (also when the owner does not answer): true when a
  /// value is there. Throws ChannelClosedError when closed and empty.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const {
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

  /// Close the channel: no more puts; values already in it can still be taken; every blocked
  /// put, and every take/fetch/wait that finds it empty, wakes with ChannelClosedError.
  void close() const {
    check("close");
    if (local()) detail::ch_close<T>(id());
    else detail::channel_remote(owner(), &detail::ch_close<T>, id());
  }

  bool is_open() const {
    check("is_open");
    return local() ? detail::ch_is_open<T>(id()) : detail::channel_remote(owner(), &detail::ch_is_open<T>, id());
  }

  /// Number of values in the channel now (unbuffered: puts waiting for a take).
  std::size_t size() const {
    check("size");
    return local() ? detail::ch_length<T>(id()) : detail::channel_remote(owner(), &detail::ch_length<T>, id());
  }

  int owner() const noexcept { return ref_.owner(); }
  std::size_t capacity() const noexcept { return capacity_; }
  detail::RefId id() const noexcept { return ref_.id(); }
  bool valid() const noexcept { return ref_.valid(); }
  /// "RemoteChannel 1.3 (owned by process 2)".
  std::string name() const {
    return "RemoteChannel " + detail::ref_id_name(id()) + " (owned by process " + std::to_string(owner()) + ")";
  }
  friend bool operator==(const RemoteChannel& a, const RemoteChannel& b) noexcept { return a.ref_ == b.ref_; }

  /// Ships the handle (a reference with weight, never the values).
  template <class A>
  void save(A& ar) const {
    ar(ref_, capacity_);
  }
  template <class A>
  void load(A& ar) {
    ar(ref_, capacity_);
  }

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
  friend RemoteChannel detail::channel_make<T>(std::uint64_t);
  RemoteChannel(detail::RemoteRef ref, std::uint64_t capacity) : ref_(std::move(ref)), capacity_(capacity) {}

  bool local() const { return owner() == myid(); }
  void check(const char* op) const {
    if (!ref_.valid())
      throw UsageError(std::string("vscale: ") + op + " on an empty RemoteChannel handle (default-constructed)");
  }
  [[noreturn]] void closed_error(const char* op, const char* why) const {
    throw ChannelClosedError(std::string("vscale: ") + op + " on " + name() + " from process " +
                             std::to_string(myid()) + ": " + why);
  }

  detail::RemoteRef ref_;
  std::uint64_t capacity_ = 0;
};

namespace detail {
/// On the process that will own it: a new channel and the first handle on it.
template <class T>
RemoteChannel<T> channel_make(std::uint64_t capacity) {
  return RemoteChannel<T>(RemoteRef(new_remote_object(std::make_shared<ChannelState<T>>(capacity))), capacity);
}
template <class S, class... A>
RemoteValue<S> remote_object_make(A... a);
}  // namespace detail

/// A handle on an object of type S that lives on process `owner()` (made by remote_object).
/// Carries a weight like RemoteChannel: pass it to remote calls as an argument (or inside
/// vscale::closure); a shipped lambda cannot capture it. `call(f, args...)` runs
/// `f(S&, args...)` on the owner and returns its result; `f` may block there (on S's own
/// condition variables, say), as channel operations do. Concurrent calls run concurrently: S
/// does its own locking. The object lives until the last handle on any process is gone, or
/// until free().
template <class S>
class RemoteValue {
 public:
  RemoteValue() = default;

  template <class F, class... A>
  auto call(F&& f, A&&... args) const -> std::decay_t<std::invoke_result_t<std::decay_t<F>&, S&, std::decay_t<A>&...>> {
    using Fd = std::decay_t<F>;
    if (!ref_.valid()) throw UsageError("vscale: call on an empty RemoteValue handle (default-constructed)");
    if (owner() == myid())
      return detail::remote_object_call<S, Fd, std::decay_t<A>...>(id(), Fd(std::forward<F>(f)), std::forward<A>(args)...);
    return remotecall_fetch(owner(), &detail::remote_object_call<S, Fd, std::decay_t<A>...>, id(), std::forward<F>(f),
                            std::forward<A>(args)...);
  }

  /// Destroy the object on its owner now; later calls throw. Returns false if it was already gone.
  bool free() const {
    if (!ref_.valid()) return false;
    if (owner() == myid()) return detail::remote_object_free<S>(id());
    return remotecall_fetch(owner(), &detail::remote_object_free<S>, id());
  }

  int owner() const noexcept { return ref_.owner(); }
  detail::RefId id() const noexcept { return ref_.id(); }
  bool valid() const noexcept { return ref_.valid(); }
  friend bool operator==(const RemoteValue& a, const RemoteValue& b) noexcept { return a.ref_ == b.ref_; }

  /// Ships the handle (a reference with weight, never the object).
  template <class Ar>
  void save(Ar& ar) const {
    ar(ref_);
  }
  template <class Ar>
  void load(Ar& ar) {
    ar(ref_);
  }

 private:
  template <class U, class... B>
  friend RemoteValue<U> detail::remote_object_make(B...);
  explicit RemoteValue(detail::RemoteRef ref) : ref_(std::move(ref)) {}
  detail::RemoteRef ref_;
};

namespace detail {
/// On the process that will own it: construct the object and return the first handle on it.
template <class S, class... A>
RemoteValue<S> remote_object_make(A... a) {
  return RemoteValue<S>(RemoteRef(new_remote_object(std::make_shared<S>(std::move(a)...))));
}
}  // namespace detail

/// Construct an S from `args` on process `owner` (the arguments are shipped there; S itself
/// need not be shippable) and return a handle on it.
/// Example: auto d = vscale::remote_object<DictChannel>(1); d.call([](DictChannel& c, int k) { ... }, 3);
template <class S, class... A>
RemoteValue<S> remote_object(int owner, A&&... args) {
  if (owner == myid()) return detail::remote_object_make<S, std::decay_t<A>...>(std::forward<A>(args)...);
  return remotecall_fetch(owner, &detail::remote_object_make<S, std::decay_t<A>...>, std::forward<A>(args)...);
}

}  // namespace vscale
