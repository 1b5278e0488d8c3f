// A producer's credits on a RemoteChannel owned by another process: slots of the channel that
// its owner reserved for this process, so that a put needs no round trip. Not for users
// (installed: RemoteChannel<T> uses it).
//
// The protocol (the owner's side is in channel_state.hpp):
//  - A put with no credit is a round trip (ch_put_granting); when the owner puts the value it
//    also reserves up to half of the room left for this process and says how many: credits.
//  - A put with a credit is one message, run on the owner's polling thread as it arrives
//    (ch_put_credited, an inline call): its slot is reserved, so it never waits, and it is
//    applied in the order of the ring, before anything this process sends the owner later
//    (a later take, length or close from here sees it).
//  - The owner takes credits back (ch_credit_revoke) when a put of another process finds the
//    channel full while slots stand reserved, and when the channel is closed; this book gives
//    back what it holds unused (ch_credit_back). After a close it never uses a credit again:
//    a put then asks the owner, which says closed. close() returns once every credit is used
//    or given back, so a put that returned before the close began is in the channel, and a
//    take sees "closed and empty" only when no credited put is still on its way.
//  - A book whose last handle here goes gives its credits back. Credits held by a process
//    that dies are dropped by the owner once everything it wrote there has been read, so
//    its puts on the way are in first.
//  - A put that returned is seen by every process that learns of it, not only by this one:
//    while credits are out, the owner's operations that look at the values (take, fetch,
//    wait, isready, length) first dispatch what is in its rings (ch_state_settled).
//    A producer that is stopped (SIGSTOP) while it holds credits holds up close() until it
//    runs again or is gone: its answer to the revoke is what close waits for.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "vscale/detail/core.hpp"

namespace vscale::detail {

/// This process's credits on one channel owned elsewhere: one book per channel per process,
/// shared by every handle on it here.
struct CreditBook {
  /// Sends `n` unused credits back to the owner (`answer`: in answer to a revoke). Never blocks
  /// or throws.
  using GiveBack = void (*)(int owner, RefId id, std::uint64_t n, bool answer);
  CreditBook(RefId i, GiveBack g) : id(i), give_back(g) {}
  CreditBook(const CreditBook&) = delete;
  CreditBook& operator=(const CreditBook&) = delete;
  ~CreditBook();

  /// Uses one credit: true when the put may go without a round trip.
  bool take_one() {
    std::lock_guard lk(m);
    if (credits == 0) return false;
    --credits;
    return true;
  }
  /// Credits the owner granted with a put. After a close they go straight back.
  void add(std::uint64_t g) {
    if (g == 0) return;
    {
      std::lock_guard lk(m);
      if (!closed) {
        credits += g;
        return;
      }
    }
    give_back(id.owner, id, g, false);
  }
  /// The owner takes them back: the unused ones, to be given back. `closing`: for good.
  std::uint64_t revoke(bool closing) {
    std::lock_guard lk(m);
    const std::uint64_t n = credits;
    credits = 0;
    closed = closed || closing;
    return n;
  }

  const RefId id;
  const GiveBack give_back;
  std::mutex m;
  std::uint64_t credits = 0;
  bool closed = false;  // a closing revoke came: credits are never used again
};

struct CreditBooks {
  std::mutex m;
  std::unordered_map<RefId, std::weak_ptr<CreditBook>, RefIdHash> books;
};

// Never destroyed: handles may go while the process ends.
inline CreditBooks& credit_books() {
  static auto* b = new CreditBooks;
  return *b;
}

/// This process's book on channel `id`, made if there is none.
inline std::shared_ptr<CreditBook> credit_book(RefId id, CreditBook::GiveBack give_back) {
  auto& r = credit_books();
  std::lock_guard lk(r.m);
  auto& slot = r.books[id];
  if (auto b = slot.lock()) return b;
  auto b = std::make_shared<CreditBook>(id, give_back);
  slot = b;
  return b;
}

/// This process's book on channel `id`, or null when no handle on it is left here.
inline std::shared_ptr<CreditBook> find_credit_book(RefId id) {
  auto& r = credit_books();
  std::lock_guard lk(r.m);
  auto it = r.books.find(id);
  return it == r.books.end() ? nullptr : it->second.lock();
}

inline CreditBook::~CreditBook() {
  {
    auto& r = credit_books();
    std::lock_guard lk(r.m);
    auto it = r.books.find(id);
    if (it != r.books.end() && it->second.expired()) r.books.erase(it);
  }
  if (credits > 0) give_back(id.owner, id, credits, false);
}

}  // namespace vscale::detail
