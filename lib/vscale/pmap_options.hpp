// pmap's options (Julia's keyword arguments: batch_size, on_error, retry_delays, retry_check)
// and its failure, PmapError. pmap itself: pmap.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "vscale/errors.hpp"
#include "vscale/worker_pool.hpp"

namespace vscale {

/// pmap's on_error: a function from a failed element's exception (a RemoteException, or
/// ProcessExitedException when its worker died) to the element's result, of type R or one
/// that converts to it. Empty: pmap throws PmapError instead.
template <class R>
class PmapOnError {
 public:
  PmapOnError() = default;
  /// From any callable `g(const std::exception&)` whose result converts to R.
  template <class G>
    requires(!std::is_same_v<std::decay_t<G>, PmapOnError>)
  PmapOnError(G g) {  // NOLINT: implicit, so that `.on_error = lambda` works
    static_assert(std::is_invocable_v<G&, const std::exception&>,
                  "vscale::pmap: on_error must take the failure as `const std::exception&` (a RemoteException, "
                  "or ProcessExitedException when the worker died) and return the element's result");
    if constexpr (std::is_invocable_v<G&, const std::exception&>) {
      constexpr bool converts = std::is_convertible_v<std::invoke_result_t<G&, const std::exception&>, R>;
      static_assert(converts,
                    "vscale::pmap: on_error must return the result type of pmap's function (or a type that "
                    "converts to it): its value takes the failed element's place");
      if constexpr (converts) fn_ = [g = std::move(g)](const std::exception& e) mutable -> R { return g(e); };
    }
  }
  explicit operator bool() const noexcept { return static_cast<bool>(fn_); }
  R operator()(const std::exception& e) const { return fn_(e); }

 private:
  std::function<R(const std::exception&)> fn_;
};

/// Options of pmap (Julia's keyword arguments) for a function whose result type is R; what a
/// braced list of options in a pmap call becomes.
template <class R>
struct PmapOptionsFor {
  /// Elements per remote call: 0 = automatic (about len / (4 * workers), at least 1).
  std::size_t batch_size = 0;
  /// Called on the calling process with a failed element's exception (a RemoteException, or
  /// ProcessExitedException when its worker died); its value (converted to R) takes the
  /// element's place. Empty: pmap throws PmapError.
  PmapOnError<R> on_error{};
  /// A failed element is retried after each of these delays in turn (Julia's retry_delays).
  std::vector<std::chrono::duration<double>> retry_delays{};
  /// Retry only when this accepts the exception (empty: always).
  std::function<bool(std::exception_ptr)> retry_check{};
  /// Where the elements run; nullptr: default_worker_pool() (the master alone without workers).
  /// pmap takes the pool's free workers (and any that become free while it runs) and puts
  /// them back when it returns; two pmaps at once on one pool share it first come, first
  /// served, also when they run on different processes (see worker_pool.hpp).
  const WorkerPool* pool = nullptr;
  /// Progress on stderr: a bar with rate and ETA on a terminal, a line every few seconds
  /// otherwise (and a last line when done).
  bool progress = false;
};

/// PmapOptionsFor<R> without on_error, for options that do not depend on the result type (a
/// named variable, a parameter of one's own function); pmap(f, xs, opts) takes it too.
struct PmapOptions {
  std::size_t batch_size = 0;  ///< see PmapOptionsFor
  std::vector<std::chrono::duration<double>> retry_delays{};  ///< see PmapOptionsFor
  std::function<bool(std::exception_ptr)> retry_check{};      ///< see PmapOptionsFor
  const WorkerPool* pool = nullptr;                           ///< see PmapOptionsFor
  bool progress = false;                                      ///< see PmapOptionsFor
};

/// pmap's failure without on_error: the elements `indices()` failed (or were lost with a
/// worker that died), the first of them, `index()`, with `cause()`.
class PmapError : public Error {
 public:
  PmapError(std::vector<std::size_t> indices, std::exception_ptr cause, const std::string& what)
      : Error(message(indices, what)), indices_(std::move(indices)), cause_(std::move(cause)) {}
  std::size_t index() const noexcept { return indices_.front(); }
  /// Every element that has no result, ascending.
  const std::vector<std::size_t>& indices() const noexcept { return indices_; }
  /// The original exception of the first one (RemoteException or ProcessExitedException).
  std::exception_ptr cause() const noexcept { return cause_; }

 private:
  static std::string message(const std::vector<std::size_t>& ix, const std::string& what) {
    if (ix.size() == 1) return "vscale::pmap: element " + std::to_string(ix[0]) + " failed: " + what;
    std::string list;
    for (std::size_t k = 0; k < ix.size() && k < 20; ++k) list += (k ? ", " : "") + std::to_string(ix[k]);
    if (ix.size() > 20) list += ", ...";
    return "vscale::pmap: " + std::to_string(ix.size()) + " elements failed (" + list + "); the first, element " +
           std::to_string(ix[0]) + ": " + what;
  }
  std::vector<std::size_t> indices_;
  std::exception_ptr cause_;
};

}  // namespace vscale
