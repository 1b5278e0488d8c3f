// pmap: Julia's pmap. f is applied to every element of a collection on the workers of a pool;
// the results come back in input order.
//
// Elements go in batches (one remote call carries a std::vector of elements and returns a
// std::vector of results; the results are pushed back with the call's answer, one round trip),
// and each worker has 2 batches in flight (8 once batches turn out to take well under a
// millisecond) so that it never waits for the master. A callable that is more than a few bytes (a vscale::closure with big
// captured data, say) is shipped once per worker and kept there under an id for the duration
// of the pmap (Julia's CachingPool); batches then carry only the id. A small trivially
// copyable callable (a lambda capturing a few numbers) simply travels with each batch. A
// captured SharedArray travels as a handle either way, never as its data.
//
// Failures: a failed batch of several elements is split and its elements run again one by
// one (so that the failing element is known; the others may run twice: keep f free of side
// effects or use batch_size = 1). A failed element is retried after each of `retry_delays`
// in turn (when `retry_check` accepts the exception), on another worker when there is one (a
// worker that dies takes no more batches); after that
// `on_error` supplies its result, or, without on_error, pmap throws PmapError (naming the
// element's index) once every batch has finished.
//
// Options: pmap(f, xs, {.batch_size = 4, .on_error = [](const std::exception&) { return -1; }})
// (designated initializers, in the order of the members in pmap_options.hpp). The braced
// options are a PmapOptionsFor<R>, R being f's result type, so that on_error is typed: a
// function from the exception to R, and one whose result does not convert to R is a compile
// error. A named options variable is a vscale::PmapOptionsFor<R>, or a vscale::PmapOptions
// (every option but on_error, for options that do not depend on the result type).
//
// Threads: pmap(vscale::threaded, f, xs[, options]) runs the elements of each batch over the
// worker's threads (its -t arena), as distributed_for(vscale::threaded, ...) does its chunks.
#pragma once

#include <concepts>
#include <ranges>
#include <type_traits>
#include <utility>
#include <vector>

#include "vscale/detail/pmap_run.hpp"
#include "vscale/pmap_options.hpp"
#include "vscale/serialize.hpp"
#include "vscale/threaded.hpp"

namespace vscale {

namespace detail {
/// pmap's checks and its one run (`threaded`: each worker's batches over its threads).
template <class F, class Collection>
auto pmap_impl(F f, const Collection& collection, const PmapOptionsFor<pmap_result_t<F, Collection>>& opt,
               bool threaded) {
  using T = std::decay_t<std::ranges::range_value_t<Collection>>;
  static_assert(std::is_invocable_v<const F&, const T&>, "vscale: pmap's function cannot be called with an element");
  using R = std::decay_t<std::invoke_result_t<const F&, const T&>>;
  static_assert(!std::is_void_v<R>, "vscale: pmap's function must return a value");
  static_assert(shippable_v<T> && !is_closure<T>::value && !std::is_pointer_v<T>,
                "vscale: pmap's elements cannot be shipped: make them trivially copyable or give them a cereal "
                "`serialize` member");
  static_assert(shippable_v<R> && !std::is_pointer_v<R>,
                "vscale: pmap's results cannot be shipped back: make them trivially copyable or give them a "
                "cereal `serialize` member");
  static_assert(shippable_v<F>, "vscale: pmap's function cannot be shipped. " VSCALE_SHIP_CAPTURE_RULE);
  require_session("pmap");
  std::vector<T> items;
  if constexpr (std::ranges::sized_range<Collection>) items.reserve(std::ranges::size(collection));
  for (const auto& x : collection) items.push_back(x);
  if (items.empty()) return std::vector<R>{};
  return PmapRun<F, T, R>(std::move(f), std::move(items), opt, threaded).run();
}

/// PmapOptions as the PmapOptionsFor<R> of pmap's function (no on_error).
template <class F, class Collection>
PmapOptionsFor<pmap_result_t<F, Collection>> typed_options(const PmapOptions& o) {
  return {o.batch_size, {}, o.retry_delays, o.retry_check, o.pool, o.progress};
}
}  // namespace detail

/// Apply `f` to every element of `collection` on the workers of a pool; returns the results in
/// input order. `f` must be shippable (a lambda capturing trivially copyable values, a
/// function, or vscale::closure(f, data...) for captured data, which then travels once per
/// worker). Elements and results must be shippable.
/// Example: auto sq = pmap([](int x) { return x * x; }, std::vector<int>{1, 2, 3});
template <class F, class Collection>
auto pmap(F f, const Collection& collection, const PmapOptionsFor<detail::pmap_result_t<F, Collection>>& opt = {}) {
  return detail::pmap_impl(std::move(f), collection, opt, false);
}

/// pmap with options that do not depend on the result type (a PmapOptions variable).
template <class F, class Collection, std::same_as<PmapOptions> O>
auto pmap(F f, const Collection& collection, const O& opt) {
  return detail::pmap_impl(std::move(f), collection, detail::typed_options<F, Collection>(opt), false);
}

/// The same, each worker running the elements of a batch in parallel on its threads (its -t
/// arena, with tbb::parallel_for) instead of one after the other; results keep their order.
template <class F, class Collection>
auto pmap(Threaded, F f, const Collection& collection,
          const PmapOptionsFor<detail::pmap_result_t<F, Collection>>& opt = {}) {
  return detail::pmap_impl(std::move(f), collection, opt, true);
}

/// pmap(threaded, ...) with a PmapOptions variable.
template <class F, class Collection, std::same_as<PmapOptions> O>
auto pmap(Threaded, F f, const Collection& collection, const O& opt) {
  return detail::pmap_impl(std::move(f), collection, detail::typed_options<F, Collection>(opt), true);
}

}  // namespace vscale
