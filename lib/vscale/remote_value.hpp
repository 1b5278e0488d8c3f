// RemoteValue<S>: a handle on an object of any type S that lives on one process (the way to
// build channels over a user type, like the manual's DictChannel). Made and kept exactly as a
// RemoteChannel (remote_channel.hpp): constructed with the owner's id, the object lives in
// its owner's registry of remote objects under a RefId (detail/remote_object.hpp), and the
// handle is a reference with weight, as a Future's: copies in one process share one
// reference, a handle sent to another process takes half of the sender's weight with it, and
// the owner frees the object when the last handle on any process is gone (or at free()).
// Handles travel as arguments and results of remote calls (or inside vscale::closure); like
// every vscale handle they are not trivially copyable, so a shipped lambda cannot capture one.
//
//     vscale::RemoteValue<DictChannel> d(2);   // a DictChannel constructed on worker 2
//     d.call([](DictChannel& c, int k) { return c.get(k); }, 3);
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "vscale/cluster.hpp"
#include "vscale/detail/remote_object.hpp"
#include "vscale/errors.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

template <class S>
class RemoteValue;

namespace detail {
/// On the process that will own it: construct the object and return the first handle on it.
template <class S, class... A>
RemoteValue<S> remote_value_make(A... a);

/// On the owner: f(object, a...).
template <class S, class F, class... A>
auto remote_value_call(RefId id, F f, A... a) -> std::decay_t<std::invoke_result_t<F&, S&, A&...>> {
  auto obj = get_remote_object<S>(id);
  return std::invoke(f, *obj, a...);
}

/// On the owner: destroy the object now; false when it was already gone.
template <class S>
bool remote_value_free(RefId id) {
  (void)find_remote_object<S>(id);  // type check
  return erase_remote_object(id);
}
}  // namespace detail

/// A handle on an object of type S that lives on process `owner()`. `call(f, args...)` runs
/// `f(S&, args...)` on the owner and returns its result; `f` may block there (on S's own
/// condition variables, say), as channel operations do. Concurrent calls run concurrently: S
/// does its own locking. See the top of this file for lifetime.
template <class S>
class RemoteValue {
 public:
  /// An empty handle that names no object (assign one to it).
  RemoteValue() = default;
  /// A new S constructed from `args` on process `owner` (the arguments are shipped there; S
  /// itself need not be shippable).
  template <class... A>
  explicit RemoteValue(int owner, A&&... args);

  /// f(S&, args...) on the owner, and its result.
  template <class F, class... A>
  auto call(F&& f, A&&... args) const -> std::decay_t<std::invoke_result_t<std::decay_t<F>&, S&, std::decay_t<A>&...>>;
  /// Destroy the object on its owner now; later calls throw. Returns false if it was already gone.
  bool free() const;

  /// The process that holds the object.
  int owner() const noexcept { return ref_.owner(); }
  detail::RefId id() const noexcept { return ref_.id(); }
  /// False for an empty handle (default-constructed).
  bool valid() const noexcept { return ref_.valid(); }
  /// "RemoteValue 1.3 (owned by process 2)".
  std::string name() const {
    return "RemoteValue " + detail::ref_id_name(id()) + " (owned by process " + std::to_string(owner()) + ")";
  }
  friend bool operator==(const RemoteValue& a, const RemoteValue& b) noexcept { return a.ref_ == b.ref_; }

  /// Ships the handle (a reference with weight, never the object).
  template <class Ar>
  void save(Ar& ar) const { ar(ref_); }
  template <class Ar>
  void load(Ar& ar) { ar(ref_); }

 private:
  template <class U, class... B>
  friend RemoteValue<U> detail::remote_value_make(B...);
  explicit RemoteValue(detail::RemoteRef ref) : ref_(std::move(ref)) {}
  detail::RemoteRef ref_;
};

template <class S>
template <class... A>
RemoteValue<S>::RemoteValue(int owner, A&&... args) {
  if (owner == myid()) *this = detail::remote_value_make<S, std::decay_t<A>...>(std::forward<A>(args)...);
  else *this = remotecall_fetch(owner, &detail::remote_value_make<S, std::decay_t<A>...>, std::forward<A>(args)...);
}

template <class S>
template <class F, class... A>
auto RemoteValue<S>::call(F&& f, A&&... args) const
    -> std::decay_t<std::invoke_result_t<std::decay_t<F>&, S&, std::decay_t<A>&...>> {
  using Fd = std::decay_t<F>;
  if (!ref_.valid()) throw UsageError("vscale: call on an empty RemoteValue handle (default-constructed)");
  if (owner() == myid())
    return detail::remote_value_call<S, Fd, std::decay_t<A>...>(id(), Fd(std::forward<F>(f)), std::forward<A>(args)...);
  return remotecall_fetch(owner(), &detail::remote_value_call<S, Fd, std::decay_t<A>...>, id(), std::forward<F>(f),
                          std::forward<A>(args)...);
}

template <class S>
bool RemoteValue<S>::free() const {
  if (!ref_.valid()) return false;
  if (owner() == myid()) return detail::remote_value_free<S>(id());
  return remotecall_fetch(owner(), &detail::remote_value_free<S>, id());
}

namespace detail {
template <class S, class... A>
RemoteValue<S> remote_value_make(A... a) {
  return RemoteValue<S>(RemoteRef(new_remote_object(std::make_shared<S>(std::move(a)...))));
}
}  // namespace detail

}  // namespace vscale
