// Future<R>: the result of a remote call, kept by the process that ran it (Julia's Future).
#pragma once

#include <memory>
#include <type_traits>

#include "vscale/detail/core.hpp"

namespace vscale {

template <class R>
class Future;

namespace detail {
template <class R>
void serialize_typed(const void* obj, Writer& w) {
  write(w, *static_cast<const R*>(obj));
}
template <class R>
Future<R> make_future(std::shared_ptr<FutureCore> core);
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
  Future() = default;

  /// The value; waits for it, and brings it here on first use. Throws RemoteException if the
  /// call threw, ProcessExitedException if the owner is gone.
  std::add_lvalue_reference_t<const R> fetch() const {
    auto& c = checked("fetch");
    if constexpr (std::is_void_v<R>) {
      detail::await_core(c, true);
      if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
    } else {
      {
        std::lock_guard lk(c.m);
        if (c.typed) return *static_cast<const R*>(c.typed.get());
      }
      detail::await_core(c, true);
      std::lock_guard lk(c.m);
      if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
      if (!c.typed) {
        detail::Reader r(c.bytes.data(), c.bytes.size());
        c.typed = std::make_shared<R>(detail::read<R>(r));
      }
      return *static_cast<const R*>(c.typed.get());
    }
  }
  /// Wait until the value exists (without bringing it here). Throws like fetch on failure.
  void wait() const {
    auto& c = checked("wait");
    detail::await_core(c, false);
    if (c.state.load() == detail::FutureCore::Failed) c.error.raise();
  }
  /// True once the value exists (asks the owner when not known here).
  bool isready() const { return detail::poll_ready(checked("isready")); }
  /// The id of the process that keeps the value.
  int where() const { return checked("where").id.owner; }
  /// False for a default-constructed or moved-from Future.
  bool valid() const noexcept { return core_ != nullptr; }

  template <class A>
  void save(A& ar) const {
    if (!core_) throw UsageError("vscale: cannot send an empty Future (moved-from or default-constructed)");
    detail::WireRef w = detail::export_ref(core_);
    ar(cereal::binary_data(&w, sizeof w));
  }
  template <class A>
  void load(A& ar) {
    detail::WireRef w;
    ar(cereal::binary_data(&w, sizeof w));
    core_ = detail::import_ref(w);
    if constexpr (!std::is_void_v<R>) {
      if (!core_->serialize_typed) core_->serialize_typed = &detail::serialize_typed<R>;
    }
  }

 private:
  friend Future detail::make_future<R>(std::shared_ptr<detail::FutureCore>);
  explicit Future(std::shared_ptr<detail::FutureCore> c) : core_(std::move(c)) {}
  detail::FutureCore& checked(const char* what) const {
    if (!core_)
      throw UsageError(std::string("vscale: ") + what +
                       " on an empty Future (it was moved from or default-constructed)");
    return *core_;
  }
  std::shared_ptr<detail::FutureCore> core_;
};

/// Free-function spellings, as in Julia.
template <class R>
decltype(auto) fetch(const Future<R>& f) {
  return f.fetch();
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
