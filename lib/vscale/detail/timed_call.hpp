// A remote call with a deadline (the caller's side of timed channel operations): the limits a
// duration gives, and timed_call, whose answer, when it comes after the caller gave up, goes
// to a handler instead (so that a value served late can be handed back). Not for users.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "vscale/detail/remote_object.hpp"
#include "vscale/errors.hpp"
#include "vscale/interrupt.hpp"
#include "vscale/remotecall.hpp"

namespace vscale::detail {

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


}  // namespace vscale::detail
