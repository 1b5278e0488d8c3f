// Future<R>: the result of a remote call, kept by the process that ran it (Julia's Future).
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "vscale/detail/core.hpp"

namespace vscale {

template <class R>
class Future;

namespace detail {
template <class R>
void serialize_typed(const void* obj, Writer& w) {
  write(w, *static_cast<const R*>(obj));
}
/// Bytes to the value, as the object a Future keeps.
template <class R>
std::shared_ptr<void> decode_typed(Reader& r) {
  if constexpr (MemcpyShippable<R> && !is_closure<R>::value && (sizeof(R) > 256)) {
    // A big trivially copyable value goes straight from the bytes into its heap home
    // (read<R> would pass it through a stack copy). Storage from operator new holds such a
    // type's object once its bytes are there.
    std::shared_ptr<R> p(static_cast<R*>(::operator new(sizeof(R), std::align_val_t(alignof(R)))),
                         [](R* q) { ::operator delete(q, std::align_val_t(alignof(R))); });
    r.read_raw(p.get(), sizeof(R));
    return p;
  } else {
    return std::make_shared<R>(read<R>(r));
  }
}
/// Tell `core` how to decode and re-serialize an R (every Future<R> handle does).
template <class R>
void bind_type(FutureCore& core) {
  if constexpr (!std::is_void_v<R>) {
    std::lock_guard lk(core.m);
    if (!core.serialize_typed) core.serialize_typed = &serialize_typed<R>;
    if (!core.decode_typed) core.decode_typed = &decode_typed<R>;
  }
}
template <class R>
Future<R> make_future(std::shared_ptr<FutureCore> core);
template <class R>
struct fetch_for_result {
  using type = std::optional<R>;
};
template <>
struct fetch_for_result<void> {
  using type = bool;
};
}  // namespace detail

/// A reference to a value being computed by, and then stored on, process `where()`.
/// Copies share one state; the first `fetch` brings the value here and caches it, so a
/// second fetch costs no round trip. The owner frees the value when the last handle in any
/// process is gone. A Future may be passed as an argument to a remote call.
/// Example: auto r = remotecall(2, [] { return 6 * 7; }); int v = r.fetch();
template <class R>
class Future {
 public:
  using value_type = R;
  /// What fetch_for returns: std::optional<R>, or for Future<void> a bool (true: done).
  using fetch_for_type = typename detail::fetch_for_result<R>::type;
  Future() = default;

  /// The value; waits for it, and brings it here on first use (then the decoded value is
  /// the only copy here). Throws RemoteException if the call threw, ProcessExitedException
  /// if the owner is gone. The reference lives as long as some copy of this Future.
  std::add_lvalue_reference_t<const R> fetch() const&;
  /// On an rvalue (`remotecall(2, f).fetch()`), the value itself, moved out when this was the
  /// last handle here, else copied. Leaves this Future empty.
  R fetch() &&;
  /// Wait until the value exists (without bringing it here). Throws like fetch on failure.
  void wait() const;
  /// Wait at most `timeout` for the value to exist (without bringing it here): true when it
  /// does, false when the time ran out. Throws like wait on failure.
  /// Example: if (!f.wait_for(std::chrono::seconds(5))) std::cerr << "worker is slow\n";
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const;
  /// Like fetch, but gives up after `timeout`: the value (a copy), or std::nullopt when the
  /// time ran out. Future<void>: true when the call has finished, false on timeout.
  /// Example: if (auto v = f.fetch_for(std::chrono::seconds(5))) use(*v);
  template <class Rep, class Period>
  fetch_for_type fetch_for(std::chrono::duration<Rep, Period> timeout) const&;
  /// The same on an rvalue Future: the value moved out as fetch() && does.
  template <class Rep, class Period>
  fetch_for_type fetch_for(std::chrono::duration<Rep, Period> timeout) &&;
  /// True once the value exists (asks the owner when not known here).
  bool isready() const { return detail::poll_ready(checked("isready")); }
  /// The id of the process that keeps the value.
  int where() const { return checked("where").id.owner; }
  /// False for a default-constructed or moved-from Future.
  bool valid() const noexcept { return core_ != nullptr; }

  /// Ships the handle (a reference with weight, never the value).
  template <class A>
  void save(A& ar) const;
  template <class A>
  void load(A& ar);

 private:
  friend Future detail::make_future<R>(std::shared_ptr<detail::FutureCore>);
  explicit Future(std::shared_ptr<detail::FutureCore> c) : core_(std::move(c)) {
    if (core_) detail::bind_type<R>(*core_);
  }
  detail::FutureCore& checked(const char* what) const;
  using value_ptr = std::conditional_t<std::is_void_v<R>, bool, const std::remove_cv_t<R>*>;
  /// The value here, once it exists (brought on first use); null (false for void) when
  /// `deadline` came first. Throws on failure.
  value_ptr value(detail::Deadline deadline, const char* what) const;
  /// For an rvalue fetch: the value out of `v` (the core's) if no other handle can see it.
  template <class V>  // (V is R: a template, so that Future<void> never forms `const void&`)
  R take(const V& v);
  std::shared_ptr<detail::FutureCore> core_;
};

template <class R>
std::add_lvalue_reference_t<const R> Future<R>::fetch() const& {
  if constexpr (std::is_void_v<R>) {
    (void)value(detail::kNoDeadline, "fetch");
  } else {
    return *value(detail::kNoDeadline, "fetch");
  }
}

template <class R>
R Future<R>::fetch() && {
  if constexpr (std::is_void_v<R>) {
    (void)value(detail::kNoDeadline, "fetch");
    core_.reset();
  } else {
    return take(*value(detail::kNoDeadline, "fetch"));
  }
}

template <class R>
void Future<R>::wait() const {
  auto& c = checked("wait");
  detail::await_core(c, false);
  if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
}

// An owner that is stopped or overloaded does not answer. Asking again later costs no new
// question: the one in flight is kept, and its answer taken when it comes.
template <class R>
template <class Rep, class Period>
bool Future<R>::wait_for(std::chrono::duration<Rep, Period> timeout) const {
  auto& c = checked("wait_for");
  const bool settled = detail::await_core(c, false, detail::deadline_after(timeout));
  if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
  return settled;
}

template <class R>
template <class Rep, class Period>
typename Future<R>::fetch_for_type Future<R>::fetch_for(std::chrono::duration<Rep, Period> timeout) const& {
  auto p = value(detail::deadline_after(timeout), "fetch_for");
  if constexpr (std::is_void_v<R>) {
    return p;
  } else {
    if (!p) return std::nullopt;
    return fetch_for_type(std::in_place, *p);
  }
}

template <class R>
template <class Rep, class Period>
typename Future<R>::fetch_for_type Future<R>::fetch_for(std::chrono::duration<Rep, Period> timeout) && {
  auto p = value(detail::deadline_after(timeout), "fetch_for");
  if constexpr (std::is_void_v<R>) {
    if (p) core_.reset();
    return p;
  } else {
    if (!p) return std::nullopt;
    return fetch_for_type(take(*p));
  }
}

template <class R>
template <class A>
void Future<R>::save(A& ar) const {
  if (!core_) throw UsageError("vscale: cannot send an empty Future (moved-from or default-constructed)");
  detail::WireRef w = detail::export_ref(core_);
  ar(cereal::binary_data(&w, sizeof w));
}

template <class R>
template <class A>
void Future<R>::load(A& ar) {
  detail::WireRef w;
  ar(cereal::binary_data(&w, sizeof w));
  core_ = detail::import_ref(w);
  detail::bind_type<R>(*core_);
}

template <class R>
detail::FutureCore& Future<R>::checked(const char* what) const {
  if (!core_)
    throw UsageError(std::string("vscale: ") + what + " on an empty Future (it was moved from or default-constructed)");
  return *core_;
}

template <class R>
typename Future<R>::value_ptr Future<R>::value(detail::Deadline deadline, const char* what) const {
  auto& c = checked(what);
  if constexpr (std::is_void_v<R>) {
    if (!detail::await_core(c, true, deadline)) return false;
    if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
    return true;
  } else {
    {
      std::lock_guard lk(c.m);
      if (c.typed) return static_cast<const R*>(c.typed.get());
    }
    if (!detail::await_core(c, true, deadline)) return nullptr;
    std::lock_guard lk(c.m);
    if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
    if (!c.typed) {
      // Bytes that came another way (a call's answer kept here, or a result stored here).
      detail::Reader r(c.bytes.data(), c.bytes.size());
      c.typed = detail::decode_typed<R>(r);
    }
    c.drop_bytes_locked();
    return static_cast<const R*>(c.typed.get());
  }
}

// This Future lets go either way.
template <class R>
template <class V>
R Future<R>::take(const V& v) {
  auto core = std::move(core_);
  if (detail::sole_handle(core)) {
    std::lock_guard lk(core->m);
    return std::move(*static_cast<R*>(core->typed.get()));
  }
  return v;
}

/// Wait for every Future in `futures`, then rethrow the first failure, if any (so that no call
/// is still running when the error reaches the caller). Example:
///     std::vector<vscale::Future<void>> calls; ...; vscale::wait_all(calls);
template <class R>
void wait_all(const std::vector<Future<R>>& futures) {
  std::exception_ptr first;
  for (const auto& f : futures) {
    try {
      f.wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

/// Free-function spellings, as in Julia (on an rvalue Future, fetch returns the value).
template <class R>
decltype(auto) fetch(const Future<R>& f) {
  return f.fetch();
}
template <class R>
R fetch(Future<R>&& f) {
  return std::move(f).fetch();
}
template <class R>
void wait(const Future<R>& f) {
  f.wait();
}
template <class R>
bool isready(const Future<R>& f) {
  return f.isready();
}

namespace detail {
template <class R>
Future<R> make_future(std::shared_ptr<FutureCore> core) {
  return Future<R>(std::move(core));
}
}  // namespace detail

}  // namespace vscale
