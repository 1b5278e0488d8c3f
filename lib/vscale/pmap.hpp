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
// (designated initializers, in the order of the members below). The braced options are a
// PmapOptionsFor<R>, R being f's result type, so that on_error is typed: a function from the
// exception to R, and one whose result does not convert to R is a compile error. A named
// options variable is a vscale::PmapOptionsFor<R>, or a vscale::PmapOptions (every option but
// on_error, for options that do not depend on the result type).
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <tbb/parallel_for.h>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"
#include "vscale/future.hpp"
#include "vscale/remotecall.hpp"
#include "vscale/serialize.hpp"
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
  /// Each worker runs the elements of a batch in parallel on its threads (its -t arena, with
  /// tbb::parallel_for) instead of one after the other; results keep their order.
  bool threads = false;
};

/// PmapOptionsFor<R> without on_error, for options that do not depend on the result type (a
/// named variable, a parameter of one's own function); pmap(f, xs, opts) takes it too.
struct PmapOptions {
  std::size_t batch_size = 0;  ///< see PmapOptionsFor
  std::vector<std::chrono::duration<double>> retry_delays{};  ///< see PmapOptionsFor
  std::function<bool(std::exception_ptr)> retry_check{};      ///< see PmapOptionsFor
  const WorkerPool* pool = nullptr;                           ///< see PmapOptionsFor
  bool progress = false;                                      ///< see PmapOptionsFor
  bool threads = false;                                       ///< see PmapOptionsFor
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

namespace detail {

/// pmap's R: f's result on an element (void when f cannot take one: pmap's checks say so).
template <class F, class Collection>
struct pmap_result {
  using type = void;
};
template <class F, class Collection>
  requires std::is_invocable_v<const F&, const std::decay_t<std::ranges::range_value_t<Collection>>&>
struct pmap_result<F, Collection> {
  using type = std::decay_t<std::invoke_result_t<const F&, const std::decay_t<std::ranges::range_value_t<Collection>>&>>;
};
template <class F, class Collection>
using pmap_result_t = typename pmap_result<F, Collection>::type;

template <class T>
concept PodElement = MemcpyShippable<T> && !std::is_same_v<T, bool> && !std::is_empty_v<T>;

/// A batch of elements or results on the wire: trivially copyable types as one block of
/// bytes (a plain struct needs no cereal member), others element by element through cereal.
template <class T>
struct ShipVec {
  std::vector<T> v;
  template <class A>
  void save(A& ar) const {
    if constexpr (PodElement<T>) {
      std::uint64_t n = v.size();
      ar(n);
      ar(cereal::binary_data(v.data(), n * sizeof(T)));
    } else {
      ar(v);
    }
  }
  template <class A>
  void load(A& ar) {
    if constexpr (PodElement<T>) {
      std::uint64_t n = 0;
      ar(n);
      v.resize(n);
      ar(cereal::binary_data(v.data(), n * sizeof(T)));
    } else {
      ar(v);
    }
  }
};

/// Callables shipped once per worker: a per-process registry, one per callable type.
template <class F>
struct FnRegistry {
  std::mutex m;
  std::unordered_map<RefId, std::shared_ptr<const F>, RefIdHash> fns;
  static FnRegistry& get() {
    static FnRegistry r;
    return r;
  }
  void install(const RefId& id, const F& f) {
    auto p = std::make_shared<const F>(f);
    std::lock_guard lk(m);
    fns[id] = std::move(p);
  }
  std::shared_ptr<const F> find(const RefId& id) {
    std::lock_guard lk(m);
    auto it = fns.find(id);
    return it == fns.end() ? nullptr : it->second;
  }
  void erase(const RefId& id) {
    std::lock_guard lk(m);
    fns.erase(id);
  }
};

/// Whether pmap ships f once per worker (true) or with each batch (false).
template <class F>
inline constexpr bool cache_callable_v = !(FunctionPointer<F> || (MemcpyShippable<F> && sizeof(F) <= 256));

template <class R, class F, class T>
ShipVec<R> apply_batch(const F& f, const std::vector<T>& xs, bool threaded) {
  ShipVec<R> out;
  if (threaded && xs.size() > 1) {
    // The batch's elements over this process's arena (the call runs inside it).
    std::vector<std::optional<R>> tmp(xs.size());
    tbb::parallel_for(std::size_t(0), xs.size(), [&](std::size_t k) { tmp[k].emplace(std::invoke(f, xs[k])); });
    out.v.reserve(xs.size());
    for (auto& r : tmp) out.v.push_back(std::move(*r));
    return out;
  }
  out.v.reserve(xs.size());
  for (const T& x : xs) out.v.push_back(std::invoke(f, x));
  return out;
}

/// Progress display on stderr.
class PmapProgress {
 public:
  PmapProgress(bool on, std::size_t total) : on_(on), total_(total), tty_(on && ::isatty(2)), t0_(Clock::now()), last_(t0_) {}
  void update(std::size_t done, bool final = false) {
    if (!on_) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (!final && since < (tty_ ? 0.1 : 2.0)) return;
    last_ = now;
    const double el = std::chrono::duration<double>(now - t0_).count();
    const double rate = el > 0 ? static_cast<double>(done) / el : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    const double frac = total_ ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
    char line[256];
    if (tty_) {
      char bar[41];
      const int filled = static_cast<int>(frac * 40);
      for (int i = 0; i < 40; ++i) bar[i] = i < filled ? '#' : ' ';
      bar[40] = 0;
      std::snprintf(line, sizeof line, "\rpmap [%s] %3.0f%% %zu/%zu  %.4g/s  ETA %.1f s ", bar, frac * 100, done, total_, rate,
                    eta);
      std::fputs(line, stderr);
      if (final) std::fputs("\n", stderr);
    } else {
      std::snprintf(line, sizeof line, "pmap: %zu/%zu (%.0f%%), %.4g/s, %s %.1f s\n", done, total_, frac * 100, rate,
                    final ? "took" : "ETA", final ? el : eta);
      std::fputs(line, stderr);
    }
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool on_;
  std::size_t total_;
  bool tty_;
  Clock::time_point t0_, last_;
};

}  // namespace detail

/// Apply `f` to every element of `collection` on the workers of a pool; returns the results in
/// input order. `f` must be shippable (a lambda capturing trivially copyable values, a
/// function, or vscale::closure(f, data...) for captured data, which then travels once per
/// worker). Elements and results must be shippable.
/// Example: auto sq = pmap([](int x) { return x * x; }, std::vector<int>{1, 2, 3});
template <class F, class Collection>
auto pmap(F f, const Collection& collection, const PmapOptionsFor<detail::pmap_result_t<F, Collection>>& opt = {}) {
  using T = std::decay_t<std::ranges::range_value_t<Collection>>;
  static_assert(std::is_invocable_v<const F&, const T&>, "vscale: pmap's function cannot be called with an element");
  using R = std::decay_t<std::invoke_result_t<const F&, const T&>>;
  static_assert(!std::is_void_v<R>, "vscale: pmap's function must return a value");
  static_assert(detail::shippable_v<T> && !detail::is_closure<T>::value && !std::is_pointer_v<T>,
                "vscale: pmap's elements cannot be shipped: make them trivially copyable or give them a cereal "
                "`serialize` member");
  static_assert(detail::shippable_v<R> && !std::is_pointer_v<R>,
                "vscale: pmap's results cannot be shipped back: make them trivially copyable or give them a "
                "cereal `serialize` member");
  static_assert(detail::shippable_v<F>, "vscale: pmap's function cannot be shipped. " VSCALE_SHIP_CAPTURE_RULE);
  using Clock = std::chrono::steady_clock;
  detail::require_session("pmap");

  std::vector<T> items;
  if constexpr (std::ranges::sized_range<Collection>) items.reserve(std::ranges::size(collection));
  for (const auto& x : collection) items.push_back(x);
  const std::size_t n = items.size();
  std::vector<std::optional<R>> results(n);
  if (n == 0) return std::vector<R>{};

  const WorkerPool& pool = opt.pool ? *opt.pool : default_worker_pool();
  std::size_t bs = opt.batch_size;
  // Automatic: about 4 batches per worker (2 with threads, each split over the worker's arena).
  if (bs == 0) bs = std::max<std::size_t>(1, n / ((opt.threads ? 2 : 4) * std::max<std::size_t>(1, pool.length())));
  // Batches in flight per worker: 2, so that a worker has the next batch at hand when it
  // finishes one; 8 once batches turn out to take well under a millisecond (the master may
  // then be asleep for longer than a batch takes; a deeper queue costs at most 8 short
  // batches of imbalance at the end).
  int depth = 2;
  double batch_secs = 0;  // moving average of a batch's time from issue to result

  struct Batch {
    std::size_t lo, hi;
    std::size_t retries = 0;
    Clock::time_point not_before{};
    int failed_on = 0;  // the worker of the last failure: a retry prefers another one
  };
  struct InFlight {
    Batch b;
    int w;
    Future<detail::ShipVec<R>> fut;
    Clock::time_point issued;
  };
  std::deque<Batch> pending;
  for (std::size_t lo = 0; lo < n; lo += bs) pending.push_back({lo, std::min(n, lo + bs)});
  std::vector<InFlight> inflight;
  std::vector<int> owned;       // workers taken from the pool
  std::map<int, int> load;      // batches in flight per worker
  std::vector<int> installed;   // workers that hold f (cached callables only)
  const detail::RefId fid = detail::new_ref_id();
  constexpr bool cache = detail::cache_callable_v<F>;

  auto install = [&](const std::vector<int>& ws) {
    if constexpr (cache) {
      std::vector<Future<void>> futs;
      for (int w : ws) {
        try {
          futs.push_back(detail::remotecall_push(
              w, [](detail::RefId id, const F& fn) { detail::FnRegistry<F>::get().install(id, fn); }, fid, f));
        } catch (const ProcessExitedException&) {
          futs.emplace_back();  // a dead worker: its batches will fail and send it away
        }
      }
      for (std::size_t k = 0; k < futs.size(); ++k) {
        if (!futs[k].valid()) continue;
        try {
          futs[k].wait();
          installed.push_back(ws[k]);
        } catch (const ProcessExitedException&) {
        }
      }
    } else {
      (void)ws;
    }
  };
  auto adopt = [&](std::vector<int> ws) {
    install(ws);
    for (int w : ws) {
      owned.push_back(w);
      load[w] = 0;
    }
  };
  {
    std::vector<int> ws{pool.take()};
    while (ws.size() < n)
      if (auto w = pool.try_take()) ws.push_back(*w);
      else break;
    adopt(std::move(ws));
  }

  std::vector<int> dead;  // workers found gone while sending
  auto drop_worker = [&](int w) {
    owned.erase(std::remove(owned.begin(), owned.end(), w), owned.end());
    installed.erase(std::remove(installed.begin(), installed.end(), w), installed.end());
    pool.remove(w);
  };
  auto issue = [&](int w, Batch b) {
    detail::ShipVec<T> xs{std::vector<T>(items.begin() + static_cast<std::ptrdiff_t>(b.lo),
                                         items.begin() + static_cast<std::ptrdiff_t>(b.hi))};
    Future<detail::ShipVec<R>> fut;
    try {
      if constexpr (cache) {
        fut = detail::remotecall_push(w, [](detail::RefId id, bool threaded, const detail::ShipVec<T>& v) {
          auto fn = detail::FnRegistry<F>::get().find(id);
          if (!fn) throw Error("vscale::pmap: the function was not installed on this worker (internal error)");
          return detail::apply_batch<R>(*fn, v.v, threaded);
        }, fid, opt.threads, std::move(xs));
      } else {
        fut = detail::remotecall_push(w, [](const F& fn, bool threaded, const detail::ShipVec<T>& v) {
          return detail::apply_batch<R>(fn, v.v, threaded);
        }, f, opt.threads, std::move(xs));
      }
    } catch (const ProcessExitedException& e) {
      if (e.pid() != w) throw;
      // The worker is gone before the batch could be sent: the batch goes back (it never
      // ran, so this is no retry), and the worker leaves once the filling loop is done.
      pending.push_front(b);
      load[w] = std::numeric_limits<int>::max() / 2;
      dead.push_back(w);
      return;
    }
    ++load[w];
    inflight.push_back({b, w, std::move(fut), Clock::now()});
  };

  std::exception_ptr first_error;
  std::size_t first_index = 0;
  std::string first_what;
  std::vector<std::size_t> failed;  // elements without a result
  std::size_t done = 0;
  detail::PmapProgress progress(opt.progress, n);

  auto what_of = [](const std::exception_ptr& e) -> std::string {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return x.what();
    } catch (...) {
      return "unknown exception";
    }
  };
  auto fail = [&](Batch b, int w, std::exception_ptr e) {
    b.failed_on = w;
    if (b.hi - b.lo > 1) {  // find the failing element: run each one on its own
      for (std::size_t i = b.hi; i-- > b.lo;) pending.push_front({i, i + 1, 0, {}, w});
      return;
    }
    if (b.retries < opt.retry_delays.size() && (!opt.retry_check || opt.retry_check(e))) {
      b.not_before = Clock::now() + std::chrono::duration_cast<Clock::duration>(opt.retry_delays[b.retries]);
      ++b.retries;
      pending.push_back(b);
      return;
    }
    if (opt.on_error) {
      // (Failures are always a vscale::Error here; on_error's own exception ends the pmap.)
      bool replaced = false;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        results[b.lo].emplace(opt.on_error(x));
        replaced = true;
      } catch (...) {
      }
      if (replaced) {
        ++done;
        return;
      }
    }
    if (!first_error || b.lo < first_index) {
      first_error = e;
      first_index = b.lo;
      first_what = what_of(e);
    }
    failed.push_back(b.lo);
    ++done;
  };

  auto finish = [&]() {
    for (int w : owned) pool.put(w);
    if constexpr (cache) {
      for (int w : installed) {
        try {
          remote_do(w, [](detail::RefId id) { detail::FnRegistry<F>::get().erase(id); }, fid);
        } catch (...) {
        }
      }
    }
  };

  try {
    while (!pending.empty() || !inflight.empty()) {
      // Workers that became free in the pool join in.
      if (!pending.empty()) {
        std::vector<int> more;
        while (auto w = pool.try_take()) more.push_back(*w);
        if (!more.empty()) adopt(std::move(more));
        if (owned.empty()) adopt({pool.take()});
      }
      // Fill every worker up to `depth` batches with batches that are due.
      const auto now = Clock::now();
      bool issued = true;
      while (issued && !pending.empty()) {
        issued = false;
        for (int w : owned) {
          if (load[w] >= depth) continue;
          auto it = std::find_if(pending.begin(), pending.end(), [&](const Batch& b) {
            return b.not_before <= now && (b.failed_on != w || owned.size() == 1);
          });
          if (it == pending.end()) continue;
          Batch b = *it;
          pending.erase(it);
          issue(w, b);
          issued = true;
        }
      }
      for (int w : dead) drop_worker(w);
      if (!dead.empty()) {
        dead.clear();
        continue;  // take other workers, or wait for one
      }
      if (inflight.empty()) {  // only retries waiting for their delay
        auto next = pending.front().not_before;
        for (const auto& b : pending) next = std::min(next, b.not_before);
        std::this_thread::sleep_until(next);
        continue;
      }
      // Wait for the oldest batch unless some batch is already back.
      bool any_ready = false;
      for (const auto& x : inflight)
        if (x.fut.isready()) {
          any_ready = true;
          break;
        }
      if (!any_ready) {
        try {
          inflight.front().fut.wait();
        } catch (...) {
        }
      }
      for (std::size_t k = 0; k < inflight.size();) {
        if (!inflight[k].fut.isready()) {
          ++k;
          continue;
        }
        InFlight x = std::move(inflight[k]);
        inflight.erase(inflight.begin() + static_cast<std::ptrdiff_t>(k));
        --load[x.w];
        {
          const double took = std::chrono::duration<double>(Clock::now() - x.issued).count();
          batch_secs = batch_secs == 0 ? took : 0.8 * batch_secs + 0.2 * took;
          depth = batch_secs < 200e-6 ? 8 : 2;
        }
        try {
          const auto& got = x.fut.fetch();
          for (std::size_t i = x.b.lo; i < x.b.hi; ++i) results[i] = got.v[i - x.b.lo];
          done += x.b.hi - x.b.lo;
        } catch (const ProcessExitedException& e) {
          if (e.pid() == x.w) drop_worker(x.w);  // the worker is gone: stop using it
          fail(x.b, x.w, std::current_exception());
        } catch (...) {
          fail(x.b, x.w, std::current_exception());
        }
      }
      progress.update(done);
    }
  } catch (...) {
    // Something failed on this side (a dead pool, on_error or retry_check threw): wait for
    // what is in flight, give the workers back, and pass the exception on.
    for (auto& x : inflight) {
      try {
        x.fut.wait();
      } catch (...) {
      }
    }
    finish();
    throw;
  }
  finish();
  progress.update(done, true);
  if (first_error) {
    std::sort(failed.begin(), failed.end());
    throw PmapError(std::move(failed), first_error, first_what);
  }
  std::vector<R> out;
  out.reserve(n);
  for (auto& r : results) out.push_back(std::move(*r));
  return out;
}

/// pmap with options that do not depend on the result type (a PmapOptions variable).
template <class F, class Collection, std::same_as<PmapOptions> O>
auto pmap(F f, const Collection& collection, const O& opt) {
  using R = detail::pmap_result_t<F, Collection>;
  PmapOptionsFor<R> typed{opt.batch_size, {}, opt.retry_delays, opt.retry_check, opt.pool, opt.progress, opt.threads};
  return pmap(std::move(f), collection, typed);
}

}  // namespace vscale
