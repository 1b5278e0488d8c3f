// Remote calls: remotecall, remotecall_fetch (and remotecall_fetch_for, with a timeout),
// remotecall_wait, remote_do, spawnat, everywhere.
//
// `f` may be a function, a lambda (its captures must be trivially copyable: capture by
// value; use vscale::closure for heavier captures) or a function object. The call ships a
// code address of `invoke_call<F, Args...>`, then f's bytes, then the arguments; the
// receiving process (the same binary) jumps to that invoker. A call to one's own id runs
// here, with no serialization.
//
// Order: calls from one process to another are received in the order they were made, and a
// worker runs them on its executor threads. A worker has one executor, plus one more each
// time queued calls wait behind calls that block (sleep, a lock, a channel); from then on,
// calls to it may run concurrently and finish out of order, as Julia's tasks do. Wait on a
// Future (or use remotecall_fetch) when one call must see another's effects.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "vscale/cluster.hpp"
#include "vscale/future.hpp"

namespace vscale {

/// Tag for spawnat(any, f): pick a worker round robin, like Julia's `@spawnat :any`.
struct AnyWorker {};
inline constexpr AnyWorker any{};

namespace detail {

template <class F, class... A>
using call_result_t = std::decay_t<std::invoke_result_t<F&, A&&...>>;

template <class F, class... A>
constexpr void check_call() {
  static_assert(std::is_invocable_v<F&, A&&...>,
                "vscale: the function cannot be called with these arguments (after decay: each argument "
                "arrives as a value of its decayed type)");
  static_assert(shippable_v<F>,
                "vscale: this callable cannot be shipped to another process. " VSCALE_SHIP_CAPTURE_RULE
                " A function object needs a cereal serialize member.");
  static_assert((!(std::is_pointer_v<A> && !FunctionPointer<A>)&&...),
                "vscale: a raw pointer cannot be shipped to another process (its address means nothing "
                "there). Pass the value itself, a std::vector, or a SharedArray.");
  static_assert((shippable_v<A> && ...),
                "vscale: an argument type cannot be shipped to another process: make it trivially "
                "copyable or give it a cereal `serialize` member (std strings, containers and Eigen "
                "matrices work as they are)");
  using R = call_result_t<F, A...>;
  static_assert(std::is_void_v<R> || shippable_v<R>,
                "vscale: the function's return type cannot be shipped back: make it trivially copyable or "
                "give it a cereal `serialize` member");
}

/// The code a remote process jumps to: read f and the arguments, call, write the result.
template <class F, class... A>
void invoke_call(Reader& in, Writer& out) {
  F f = read<F>(in);
  std::tuple<A...> args{read<A>(in)...};  // braced: read left to right
  if constexpr (std::is_void_v<call_result_t<F, A...>>) {
    std::apply(f, std::move(args));
  } else {
    write(out, std::apply(f, std::move(args)));
  }
}

template <class F, class... A>
void pack_call(Writer& w, const F& f, const A&... a) {
  write(w, f);
  (write(w, a), ...);
}

template <class R, class F, class Tuple>
void run_local(FutureCore& core, F& f, Tuple& args) {
  try {
    if constexpr (std::is_void_v<R>) {
      std::apply(f, std::move(args));
      core.complete_bytes({});
    } else {
      core.complete_typed(std::make_shared<R>(std::apply(f, std::move(args))), &serialize_typed<R>);
    }
  } catch (...) {
    core.complete_error(ErrorInfo::from_current_exception(self_id()));
  }
}

}  // namespace detail

/// Call `f(args...)` on process `pid`; returns at once with a Future for the result, which
/// stays on `pid` until fetched. Example: auto r = remotecall(2, [](int n) { return n * n; }, 7);
template <class F, class... Args>
auto remotecall(int pid, F&& f, Args&&... args) -> Future<detail::call_result_t<std::decay_t<F>, std::decay_t<Args>...>> {
  using Fd = std::decay_t<F>;
  using R = detail::call_result_t<Fd, std::decay_t<Args>...>;
  detail::check_call<Fd, std::decay_t<Args>...>();
  detail::require_session("remotecall");
  if (pid == detail::self_id()) {
    auto core = detail::new_local_core();
    detail::submit_local([core, fn = Fd(std::forward<F>(f)),
                          tup = std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)]() mutable {
      detail::run_local<R>(*core, fn, tup);
    });
    return detail::make_future<R>(std::move(core));
  }
  detail::Writer w;
  detail::pack_call<Fd, std::decay_t<Args>...>(w, f, args...);
  auto code = detail::code_of<&detail::invoke_call<Fd, std::decay_t<Args>...>>();
  return detail::make_future<R>(detail::call_ref(pid, code, w));
}

namespace detail {
/// Like remotecall, but the result comes back with the call's answer and is kept here: one
/// round trip in all, for results that only this process will wait on.
template <class F, class... Args>
auto remotecall_push(int pid, F&& f, Args&&... args) -> Future<call_result_t<std::decay_t<F>, std::decay_t<Args>...>> {
  using Fd = std::decay_t<F>;
  using R = call_result_t<Fd, std::decay_t<Args>...>;
  check_call<Fd, std::decay_t<Args>...>();
  if (pid == self_id()) return remotecall(pid, std::forward<F>(f), std::forward<Args>(args)...);
  Writer w;
  pack_call<Fd, std::decay_t<Args>...>(w, f, args...);
  return make_future<R>(call_push(pid, code_of<&invoke_call<Fd, std::decay_t<Args>...>>(), w));
}
}  // namespace detail

namespace detail {
/// A ResultSink that reads an R into `out`.
template <class R>
ResultSink sink_into(std::optional<R>& out) {
  return {&out, [](void* ctx, Reader& r) { static_cast<std::optional<R>*>(ctx)->emplace(read<R>(r)); }};
}

/// remotecall_fetch with a deadline: the result, or std::nullopt (void: true, or false) when
/// the deadline came first.
template <class F, class... Args>
auto fetch_call(int pid, Deadline deadline, F&& f, Args&&... args) {
  using Fd = std::decay_t<F>;
  using R = call_result_t<Fd, std::decay_t<Args>...>;
  using Out = typename fetch_for_result<R>::type;
  check_call<Fd, std::decay_t<Args>...>();
  require_session("remotecall_fetch");
  if (pid == self_id()) {
    try {
      // Copies, as a remote call would get: the caller's callable and arguments are never
      // changed, and a parameter taking `T&&` works as it does remotely.
      Fd fn(f);
      if constexpr (std::is_void_v<R>) {
        std::invoke(fn, std::decay_t<Args>(std::forward<Args>(args))...);
        return Out(true);
      } else {
        return Out(std::invoke(fn, std::decay_t<Args>(std::forward<Args>(args))...));
      }
    } catch (...) {
      ErrorInfo::from_current_exception(pid).raise();
    }
  }
  Writer w;
  pack_call<Fd, std::decay_t<Args>...>(w, f, args...);
  const CodeRef code = code_of<&invoke_call<Fd, std::decay_t<Args>...>>();
  if constexpr (std::is_void_v<R>) {
    return Out(call_fetch(pid, code, w, ResultSink{}, deadline));
  } else {
    // Decoded straight from the answer (no copy of its bytes first).
    Out out;
    call_fetch(pid, code, w, sink_into<R>(out), deadline);
    return out;
  }
}
}  // namespace detail

/// Call `f(args...)` on `pid` and return its result (one round trip; nothing is stored there).
/// Example: int v = remotecall_fetch(2, [](int a, int b) { return a + b; }, 1, 2);
template <class F, class... Args>
auto remotecall_fetch(int pid, F&& f, Args&&... args) -> detail::call_result_t<std::decay_t<F>, std::decay_t<Args>...> {
  using R = detail::call_result_t<std::decay_t<F>, std::decay_t<Args>...>;
  [[maybe_unused]] auto out = detail::fetch_call(pid, detail::kNoDeadline, std::forward<F>(f), std::forward<Args>(args)...);
  if constexpr (!std::is_void_v<R>) return std::move(*out);
}

/// remotecall_fetch that waits at most `timeout` for the answer: the result, or std::nullopt
/// when the time ran out (for a void f: true, or false). The call itself is not cancelled:
/// it may still run on `pid`, and its late answer is dropped. A call to one's own id runs
/// here, to the end. Throws like remotecall_fetch.
/// Example: if (auto v = remotecall_fetch_for(2, std::chrono::seconds(5), f, x)) use(*v);
template <class Rep, class Period, class F, class... Args>
auto remotecall_fetch_for(int pid, std::chrono::duration<Rep, Period> timeout, F&& f, Args&&... args) {
  return detail::fetch_call(pid, detail::deadline_after(timeout), std::forward<F>(f), std::forward<Args>(args)...);
}

/// Like remotecall, but returns only once the call has finished on `pid`.
template <class F, class... Args>
auto remotecall_wait(int pid, F&& f, Args&&... args) {
  auto fut = remotecall(pid, std::forward<F>(f), std::forward<Args>(args)...);
  fut.wait();
  return fut;
}

namespace detail {
/// remote_do's work, shared with ext::post: run locally on one's own id, else send a kCallDo
/// (`may_block`: wait for ring space, or queue when the ring is full).
template <class F, class... Args>
void do_call(int pid, bool may_block, F&& f, Args&&... args) {
  using Fd = std::decay_t<F>;
  check_call<Fd, std::decay_t<Args>...>();
  if (pid == self_id()) {
    submit_local([fn = Fd(std::forward<F>(f)),
                  tup = std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)]() mutable {
      std::apply(fn, std::move(tup));
    });
    return;
  }
  Writer w;
  pack_call<Fd, std::decay_t<Args>...>(w, f, args...);
  call_do(pid, code_of<&invoke_call<Fd, std::decay_t<Args>...>>(), w, may_block);
}

/// `f(args...)` on `pid`'s polling thread, as it receives the message, after everything this
/// process sent `pid` before (call_inline): for short bookkeeping that never blocks. Not to
/// this process itself.
template <class F, class... Args>
void inline_call(int pid, bool may_block, F&& f, Args&&... args) {
  using Fd = std::decay_t<F>;
  check_call<Fd, std::decay_t<Args>...>();
  Writer w;
  pack_call<Fd, std::decay_t<Args>...>(w, f, args...);
  call_inline(pid, code_of<&invoke_call<Fd, std::decay_t<Args>...>>(), w, may_block);
}
}  // namespace detail

/// Run `f(args...)` on `pid` without any answer. An exception there is printed there.
template <class F, class... Args>
void remote_do(int pid, F&& f, Args&&... args) {
  detail::require_session("remote_do");
  detail::do_call(pid, true, std::forward<F>(f), std::forward<Args>(args)...);
}

/// Run `f()` on process `pid` (Julia's `@spawnat pid expr`).
template <class F>
auto spawnat(int pid, F&& f) {
  return remotecall(pid, std::forward<F>(f));
}

/// Run `f()` on the next worker, round robin (Julia's `@spawnat :any expr`).
template <class F>
auto spawnat(AnyWorker, F&& f) {
  detail::require_session("spawnat");
  return remotecall(detail::next_any_worker(), std::forward<F>(f));
}

/// Run `f()` on every process, master included, and wait for all (Julia's `@everywhere`).
/// Throws the first failure after all have finished.
template <class F>
void everywhere(F&& f) {
  detail::require_session("everywhere");
  std::vector<Future<detail::call_result_t<std::decay_t<F>>>> futs;
  for (int p : detail::all_procs()) futs.push_back(remotecall(p, f));
  std::exception_ptr first;
  for (auto& fu : futs) {
    try {
      fu.wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace vscale
