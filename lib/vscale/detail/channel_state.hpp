// A RemoteChannel's state on its owner (remote_channel.hpp) and the operations that run
// there: put, take, fetch, wait (plain and timed), close, the verdicts on values held for
// timed operations of other processes, and the owner's side of the credits that let other
// processes put without a round trip (channel_credits.hpp). Not for users (installed:
// RemoteChannel<T> instantiates these templates).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "vscale/cluster.hpp"
#include "vscale/detail/channel_credits.hpp"
#include "vscale/detail/remote_object.hpp"
#include "vscale/remotecall.hpp"

namespace vscale::detail {

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
void ch_credit_revoke(RefId id, bool closing);

template <class T>
struct ChannelState {
  explicit ChannelState(std::uint64_t cap) : capacity(cap) {}
  RefId id;  // set by channel_make
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
  // Credits (channel_credits.hpp): slots reserved for the puts of other processes, by process.
  // `revoking`: asked back, no answer yet; `closing`: asked back for good (close).
  struct Ledger {
    std::uint64_t reserved = 0;
    bool revoking = false;
    bool closing = false;
  };
  std::map<int, Ledger> credit;
  std::uint64_t reserved = 0;  // the sum over `credit`
  std::size_t putters = 0;     // puts waiting for room now (no credit is granted while one waits)

  void pop_front() {
    q.pop_front();
    if (capacity == 0) qid.pop_front();
  }
  std::uint64_t used() const { return q.size() + held_takes + held_puts + reserved; }
  bool room() const { return used() < capacity; }
  // Closed and empty, and no credited put on its way: a take can say so.
  bool closed_and_empty() const { return !open && q.empty() && held_takes == 0 && reserved == 0; }
  // With m held: room for a put; if there is none but slots stand reserved, ask them back.
  bool room_or_revoke() {
    if (room()) return true;
    if (reserved > 0) revoke(false);
    return false;
  }
  // With m held: ask every process holding credits to give back its unused ones (`closing`:
  // and never to use credits again). The answers come as ch_credit_back.
  void revoke(bool closing) {
    for (auto it = credit.begin(); it != credit.end();) {
      auto cur = it++;
      Ledger& l = cur->second;
      if (l.reserved == 0 || (l.revoking && (l.closing || !closing))) continue;
      l.revoking = true;
      l.closing = l.closing || closing;
      try {
        inline_call(cur->first, false, &ch_credit_revoke<T>, id, closing);
      } catch (...) {  // gone: its credits with it
        drop(cur);
      }
    }
  }
  // With m held: credits for `caller`, which has just put a value: up to half of the room
  // left, none while another put waits for room.
  std::uint64_t grant(int caller) {
    if (putters > 0 || !open || capacity <= used()) return 0;
    const std::uint64_t g = std::min<std::uint64_t>((capacity - used()) / 2, kMaxGrant);
    if (g == 0) return 0;
    credit[caller].reserved += g;
    reserved += g;
    return g;
  }
  static constexpr std::uint64_t kMaxGrant = 4096;
  void drop(typename std::map<int, Ledger>::iterator it) {
    reserved -= it->second.reserved;
    credit.erase(it);
  }
  // With m held: `n` of `it`'s reserved slots are used or given back; the entry goes once
  // nothing is reserved and no revoke waits for an answer.
  void release(typename std::map<int, Ledger>::iterator it, std::uint64_t n) {
    it->second.reserved -= n;
    reserved -= n;
    if (it->second.reserved == 0 && !it->second.revoking) credit.erase(it);
  }
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
  // With m held: values held for processes that are gone go back (their verdict never comes),
  // and their credits are dropped once everything they wrote here has been read (their puts
  // on the way are in the channel first).
  void sweep() {
    bool any = false;
    if (!held.empty()) {
      const auto live = procs();
      for (auto it = held.begin(); it != held.end();) {
        auto cur = it++;
        if (!std::binary_search(live.begin(), live.end(), cur->second.caller)) {
          settle(cur, false);
          any = true;
        }
      }
    }
    for (auto it = credit.begin(); it != credit.end();) {
      auto cur = it++;
      if (peer_drained(cur->first)) {
        drop(cur);
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

// The state, for an operation that looks at the values: while other processes hold credits,
// their puts on the way are applied first, so that a put that returned before the caller
// learned of it (through any chain of messages) is seen. (Not on the polling thread.)
template <class T>
std::shared_ptr<ChannelState<T>> ch_state_settled(const RefId& id) {
  auto s = ch_state<T>(id);
  if (!s) return s;
  bool credited;
  {
    std::lock_guard lk(s->m);
    credited = s->reserved > 0;
  }
  if (credited) drain_incoming();
  return s;
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

// A put on a buffered channel: waits for room, puts, and (`grant`) grants `caller` credits.
// -1: closed; else the credits granted.
template <class T>
std::int64_t ch_put_buffered(ChannelState<T>& s, int caller, T v, bool grant) {
  std::unique_lock lk(s.m);
  {
    TakerMark waiting(s.putters);  // (counts a waiting put the same way: no grants meanwhile)
    channel_wait(lk, s.not_full, caller, [&] {
      s.sweep();
      return !s.open || s.room_or_revoke();
    }, "put");
  }
  if (!s.open) return -1;
  s.q.push_back(std::move(v));
  const auto g = grant ? static_cast<std::int64_t>(s.grant(caller)) : 0;
  lk.unlock();
  s.not_empty.notify_all();  // takers and fetchers/waiters
  return g;
}

template <class T>
bool ch_put(RefId id, int caller, T v) {  // false: closed
  auto s = ch_state<T>(id);
  if (!s) return false;
  if (s->capacity == 0) return ch_put_unbuffered(*s, caller, std::move(v), kNoDeadlineNs) == kChDone;
  return ch_put_buffered(*s, caller, std::move(v), false) >= 0;
}

/// A put from another process without credit (channel_credits.hpp): waits for room, puts, and
/// grants `caller` credits for its next puts. -1: closed; else the credits granted.
template <class T>
std::int64_t ch_put_granting(RefId id, int caller, T v) {
  auto s = ch_state<T>(id);
  if (!s) return -1;
  return ch_put_buffered(*s, caller, std::move(v), true);
}

/// A put on credit from `producer`, on this (the owner's) polling thread as it arrives: its
/// slot is reserved, so it never waits. After a close it still goes in: close waits for it.
template <class T>
void ch_put_credited(RefId id, int producer, T v) {
  auto s = ch_state<T>(id);
  if (!s) return;  // freed: no handle is left anywhere, nobody can see the value
  {
    std::lock_guard lk(s->m);
    auto it = s->credit.find(producer);
    if (it != s->credit.end() && it->second.reserved > 0) {
      s->release(it, 1);
    } else if (!s->open) {
      // Its credits were dropped (the process was taken for gone) and the channel is closed.
      std::fprintf(stderr, "vscale: a put from process %d to a closed RemoteChannel %s was dropped\n", producer,
                   ref_id_name(id).c_str());
      return;
    }
    s->q.push_back(std::move(v));
  }
  s->not_empty.notify_all();
  s->not_full.notify_all();  // a close waiting for the last credited put
}

/// `producer` gives back `n` unused credits (`answer`: in answer to a revoke), on this (the
/// owner's) polling thread.
template <class T>
void ch_credit_back(RefId id, int producer, std::uint64_t n, bool answer) {
  auto s = ch_state<T>(id);
  if (!s) return;
  {
    std::lock_guard lk(s->m);
    auto it = s->credit.find(producer);
    if (it == s->credit.end()) return;
    if (answer) it->second.revoking = false;
    s->release(it, std::min(n, it->second.reserved));
  }
  s->not_full.notify_all();
  s->not_empty.notify_all();  // a take waiting to know whether the closed channel is empty
}

/// CreditBook::GiveBack for channels of T.
template <class T>
void give_back_credits(int owner, RefId id, std::uint64_t n, bool answer) noexcept {
  try {
    inline_call(owner, false, &ch_credit_back<T>, id, self_id(), n, answer);
  } catch (...) {  // the owner or this session is gone: so are the credits
  }
}

/// The owner asks for this process's credits on channel `id` (on this process's polling
/// thread): the unused ones go back.
template <class T>
void ch_credit_revoke(RefId id, bool closing) {
  std::uint64_t n = 0;
  if (auto b = find_credit_book(id)) n = b->revoke(closing);
  give_back_credits<T>(id.owner, id, n, true);
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
  bool ok;
  {
    TakerMark waiting(s->putters);
    ok = channel_wait(lk, s->not_full, caller, [&] {
      s->sweep();
      if (!s->open) return true;
      // Unbuffered: served once a take waits for a value that no other put has promised.
      return s->capacity ? s->room_or_revoke() : s->takers > s->q.size() + s->held_puts;
    }, "put_for", until_ns, serve_ns);
  }
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
  auto s = ch_state_settled<T>(id);
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
  auto s = ch_state_settled<T>(id);
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
  auto s = ch_state_settled<T>(id);
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
  auto s = ch_state_settled<T>(id);
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
  auto s = ch_state_settled<T>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return !s->q.empty();
}

template <class T>
bool ch_isopen(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return false;
  std::lock_guard lk(s->m);
  return s->open;
}

template <class T>
std::uint64_t ch_length(RefId id) {
  auto s = ch_state_settled<T>(id);
  if (!s) return 0;
  std::lock_guard lk(s->m);
  return s->q.size();
}

// Returns once every credit is used or given back (channel_credits.hpp): a credited put that
// returned before this began is in the channel then.
template <class T>
void ch_close(RefId id) {
  auto s = ch_state<T>(id);
  if (!s) return;
  {
    std::unique_lock lk(s->m);
    s->open = false;
    s->revoke(true);
    s->not_empty.notify_all();
    s->not_full.notify_all();
    while (s->reserved > 0) {
      s->not_full.wait_for(lk, std::chrono::milliseconds(100));
      s->sweep();
      s->revoke(true);  // (one whose grant was on its way when it answered)
    }
  }
  s->not_empty.notify_all();
  s->not_full.notify_all();
}

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

}  // namespace vscale::detail
