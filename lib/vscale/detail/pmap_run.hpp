// pmap's machinery (pmap.hpp): the batches on the wire, the callables cached per worker, the
// progress display, and PmapRun, one pmap from start to finish. Not for users.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <tbb/parallel_for.h>

#include "vscale/errors.hpp"
#include "vscale/future.hpp"
#include "vscale/pmap_options.hpp"
#include "vscale/remotecall.hpp"
#include "vscale/serialize.hpp"
#include "vscale/worker_pool.hpp"

namespace vscale::detail {

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
std::vector<R> apply_batch(const F& f, const std::vector<T>& xs, bool threaded) {
  std::vector<R> out;
  if (threaded && xs.size() > 1) {
    // The batch's elements over this process's arena (the call runs inside it).
    std::vector<std::optional<R>> tmp(xs.size());
    tbb::parallel_for(std::size_t(0), xs.size(), [&](std::size_t k) { tmp[k].emplace(std::invoke(f, xs[k])); });
    out.reserve(xs.size());
    for (auto& r : tmp) out.push_back(std::move(*r));
    return out;
  }
  out.reserve(xs.size());
  for (const T& x : xs) out.push_back(std::invoke(f, x));
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

/// One pmap: the elements' batches, the workers taken from the pool, what is in flight, and
/// the results. run() does it all, once.
template <class F, class T, class R>
class PmapRun {
 public:
  using Clock = std::chrono::steady_clock;
  PmapRun(F f, std::vector<T> items, const PmapOptionsFor<R>& opt, bool threaded);
  /// The results in input order; throws PmapError (or what failed on this side).
  std::vector<R> run();

 private:
  static constexpr bool kCache = cache_callable_v<F>;
  struct Batch {
    std::size_t lo, hi;
    std::size_t retries = 0;
    Clock::time_point not_before{};
    int failed_on = 0;  // the worker of the last failure: a retry prefers another one
  };
  struct InFlight {
    Batch b;
    int w;
    Future<std::vector<R>> fut;
    Clock::time_point issued;
  };

  /// Ship f to `ws` (cached callables only), waiting until each holds it.
  void install(const std::vector<int>& ws);
  /// Take `ws` (already taken from the pool) into this run.
  void adopt(std::vector<int> ws);
  /// Stop using `w` (gone) and remove it from the pool.
  void drop_worker(int w);
  /// Workers that became free in the pool join in (and one is waited for when none is left).
  void take_free_workers();
  /// Fill every worker up to `depth_` batches with batches that are due.
  void fill();
  /// Send batch `b` to `w`; a worker found gone gets the batch back into `pending_`.
  void issue(int w, Batch b);
  /// Wait until some batch is back, then take in every one that is.
  void collect();
  /// Batch `b` failed on `w`: split it, retry it, or settle its element (on_error or failure).
  void fail(Batch b, int w, std::exception_ptr e);
  /// Give the workers back and drop f from those that hold it.
  void finish();
  /// After a failure on this side: wait for what is in flight, then finish.
  void abandon();
  std::vector<R> results();

  F f_;
  std::vector<T> items_;
  const PmapOptionsFor<R>& opt_;
  bool threaded_;
  const WorkerPool& pool_;
  std::vector<std::optional<R>> results_;
  // Batches in flight per worker: 2, so that a worker has the next batch at hand when it
  // finishes one; 8 once batches turn out to take well under a millisecond (the master may
  // then be asleep for longer than a batch takes; a deeper queue costs at most 8 short
  // batches of imbalance at the end).
  int depth_ = 2;
  double batch_secs_ = 0;  // moving average of a batch's time from issue to result
  std::deque<Batch> pending_;
  std::vector<InFlight> inflight_;
  std::vector<int> owned_;      // workers taken from the pool
  std::map<int, int> load_;     // batches in flight per worker
  std::vector<int> installed_;  // workers that hold f (cached callables only)
  std::vector<int> dead_;       // workers found gone while sending
  RefId fid_ = new_ref_id();    // f's name in the workers' FnRegistry
  std::exception_ptr first_error_;
  std::size_t first_index_ = 0;
  std::string first_what_;
  std::vector<std::size_t> failed_;  // elements without a result
  std::size_t done_ = 0;
  PmapProgress progress_;
};

template <class F, class T, class R>
PmapRun<F, T, R>::PmapRun(F f, std::vector<T> items, const PmapOptionsFor<R>& opt, bool threaded)
    : f_(std::move(f)),
      items_(std::move(items)),
      opt_(opt),
      threaded_(threaded),
      pool_(opt.pool ? *opt.pool : default_worker_pool()),
      results_(items_.size()),
      progress_(opt.progress, items_.size()) {
  const std::size_t n = items_.size();
  std::size_t bs = opt.batch_size;
  // Automatic: about 4 batches per worker (2 with threads, each split over the worker's arena).
  if (bs == 0) bs = std::max<std::size_t>(1, n / ((threaded ? 2 : 4) * std::max<std::size_t>(1, pool_.length())));
  for (std::size_t lo = 0; lo < n; lo += bs) pending_.push_back({lo, std::min(n, lo + bs)});
}

template <class F, class T, class R>
std::vector<R> PmapRun<F, T, R>::run() {
  {
    std::vector<int> ws{pool_.take()};
    while (ws.size() < items_.size())
      if (auto w = pool_.try_take()) ws.push_back(*w);
      else break;
    adopt(std::move(ws));
  }
  try {
    auto looked = Clock::now();
    while (!pending_.empty() || !inflight_.empty()) {
      // Workers freed or added meanwhile join in; looking every millisecond, not every turn
      // (the default pool brings its members up to date on each look: a few allocations).
      if (!pending_.empty() && (owned_.empty() || Clock::now() - looked > std::chrono::milliseconds(1))) {
        take_free_workers();
        looked = Clock::now();
      }
      fill();
      for (int w : dead_) drop_worker(w);
      if (!dead_.empty()) {
        dead_.clear();
        continue;  // take other workers, or wait for one
      }
      if (inflight_.empty()) {  // only retries waiting for their delay
        auto next = pending_.front().not_before;
        for (const auto& b : pending_) next = std::min(next, b.not_before);
        std::this_thread::sleep_until(next);
        continue;
      }
      collect();
      progress_.update(done_);
    }
  } catch (...) {
    // Something failed on this side (a dead pool, on_error or retry_check threw): wait for
    // what is in flight, give the workers back, and pass the exception on.
    abandon();
    throw;
  }
  finish();
  progress_.update(done_, true);
  return results();
}

template <class F, class T, class R>
void PmapRun<F, T, R>::install(const std::vector<int>& ws) {
  if constexpr (kCache) {
    std::vector<Future<void>> futs;
    for (int w : ws) {
      try {
        futs.push_back(remotecall_push(
            w, [](RefId id, const F& fn) { FnRegistry<F>::get().install(id, fn); }, fid_, f_));
      } catch (const ProcessExitedException&) {
        futs.emplace_back();  // a dead worker: its batches will fail and send it away
      }
    }
    for (std::size_t k = 0; k < futs.size(); ++k) {
      if (!futs[k].valid()) continue;
      try {
        futs[k].wait();
        installed_.push_back(ws[k]);
      } catch (const ProcessExitedException&) {
      }
    }
  } else {
    (void)ws;
  }
}

template <class F, class T, class R>
void PmapRun<F, T, R>::adopt(std::vector<int> ws) {
  install(ws);
  for (int w : ws) {
    owned_.push_back(w);
    load_[w] = 0;
  }
}

template <class F, class T, class R>
void PmapRun<F, T, R>::drop_worker(int w) {
  owned_.erase(std::remove(owned_.begin(), owned_.end(), w), owned_.end());
  installed_.erase(std::remove(installed_.begin(), installed_.end(), w), installed_.end());
  pool_.remove(w);
}

template <class F, class T, class R>
void PmapRun<F, T, R>::take_free_workers() {
  std::vector<int> more;
  while (auto w = pool_.try_take()) more.push_back(*w);
  if (!more.empty()) adopt(std::move(more));
  if (owned_.empty()) adopt({pool_.take()});
}

template <class F, class T, class R>
void PmapRun<F, T, R>::fill() {
  const auto now = Clock::now();
  bool issued = true;
  while (issued && !pending_.empty()) {
    issued = false;
    for (int w : owned_) {
      if (load_[w] >= depth_) continue;
      auto it = std::find_if(pending_.begin(), pending_.end(), [&](const Batch& b) {
        return b.not_before <= now && (b.failed_on != w || owned_.size() == 1);
      });
      if (it == pending_.end()) continue;
      Batch b = *it;
      pending_.erase(it);
      issue(w, b);
      issued = true;
    }
  }
}

template <class F, class T, class R>
void PmapRun<F, T, R>::issue(int w, Batch b) {
  // A batch travels as a std::vector: trivially copyable elements as one block of bytes
  // (serialize.hpp), others through cereal.
  std::vector<T> xs(items_.begin() + static_cast<std::ptrdiff_t>(b.lo),
                    items_.begin() + static_cast<std::ptrdiff_t>(b.hi));
  Future<std::vector<R>> fut;
  try {
    if constexpr (kCache) {
      fut = remotecall_push(w, [](RefId id, bool threaded, const std::vector<T>& v) {
        auto fn = FnRegistry<F>::get().find(id);
        if (!fn) throw Error("vscale::pmap: the function was not installed on this worker (internal error)");
        return apply_batch<R>(*fn, v, threaded);
      }, fid_, threaded_, std::move(xs));
    } else {
      fut = remotecall_push(w, [](const F& fn, bool threaded, const std::vector<T>& v) {
        return apply_batch<R>(fn, v, threaded);
      }, f_, threaded_, std::move(xs));
    }
  } catch (const ProcessExitedException& e) {
    if (e.pid() != w) throw;
    // The worker is gone before the batch could be sent: the batch goes back (it never
    // ran, so this is no retry), and the worker leaves once the filling loop is done.
    pending_.push_front(b);
    load_[w] = std::numeric_limits<int>::max() / 2;
    dead_.push_back(w);
    return;
  }
  ++load_[w];
  inflight_.push_back({b, w, std::move(fut), Clock::now()});
}

template <class F, class T, class R>
void PmapRun<F, T, R>::collect() {
  // Wait for the oldest batch unless some batch is already back.
  if (std::none_of(inflight_.begin(), inflight_.end(), [](const InFlight& x) { return x.fut.isready(); })) {
    try {
      inflight_.front().fut.wait();
    } catch (...) {
    }
  }
  for (std::size_t k = 0; k < inflight_.size();) {
    if (!inflight_[k].fut.isready()) {
      ++k;
      continue;
    }
    InFlight x = std::move(inflight_[k]);
    inflight_.erase(inflight_.begin() + static_cast<std::ptrdiff_t>(k));
    --load_[x.w];
    const double took = std::chrono::duration<double>(Clock::now() - x.issued).count();
    batch_secs_ = batch_secs_ == 0 ? took : 0.8 * batch_secs_ + 0.2 * took;
    depth_ = batch_secs_ < 200e-6 ? 8 : 2;
    try {
      const auto& got = x.fut.fetch();
      for (std::size_t i = x.b.lo; i < x.b.hi; ++i) results_[i] = got[i - x.b.lo];
      done_ += x.b.hi - x.b.lo;
    } catch (const ProcessExitedException& e) {
      if (e.pid() == x.w) drop_worker(x.w);  // the worker is gone: stop using it
      fail(x.b, x.w, std::current_exception());
    } catch (...) {
      fail(x.b, x.w, std::current_exception());
    }
  }
}

template <class F, class T, class R>
void PmapRun<F, T, R>::fail(Batch b, int w, std::exception_ptr e) {
  b.failed_on = w;
  if (b.hi - b.lo > 1) {  // find the failing element: run each one on its own
    for (std::size_t i = b.hi; i-- > b.lo;) pending_.push_front({i, i + 1, 0, {}, w});
    return;
  }
  if (b.retries < opt_.retry_delays.size() && (!opt_.retry_check || opt_.retry_check(e))) {
    b.not_before = Clock::now() + std::chrono::duration_cast<Clock::duration>(opt_.retry_delays[b.retries]);
    ++b.retries;
    pending_.push_back(b);
    return;
  }
  std::string what = "unknown exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    // (Failures are always a vscale::Error here; on_error's own exception ends the pmap.)
    if (opt_.on_error) {
      results_[b.lo].emplace(opt_.on_error(x));
      ++done_;
      return;
    }
    what = x.what();
  } catch (...) {
  }
  if (!first_error_ || b.lo < first_index_) {
    first_error_ = e;
    first_index_ = b.lo;
    first_what_ = what;
  }
  failed_.push_back(b.lo);
  ++done_;
}

template <class F, class T, class R>
void PmapRun<F, T, R>::finish() {
  for (int w : owned_) pool_.put(w);
  if constexpr (kCache) {
    for (int w : installed_) {
      try {
        remote_do(w, [](RefId id) { FnRegistry<F>::get().erase(id); }, fid_);
      } catch (...) {
      }
    }
  }
}

template <class F, class T, class R>
void PmapRun<F, T, R>::abandon() {
  for (auto& x : inflight_) {
    try {
      x.fut.wait();
    } catch (...) {
    }
  }
  finish();
}

template <class F, class T, class R>
std::vector<R> PmapRun<F, T, R>::results() {
  if (first_error_) {
    std::sort(failed_.begin(), failed_.end());
    throw PmapError(std::move(failed_), first_error_, first_what_);
  }
  std::vector<R> out;
  out.reserve(results_.size());
  for (auto& r : results_) out.push_back(std::move(*r));
  return out;
}

}  // namespace vscale::detail
