// SharedArray<T, N>: an N-dimensional array in memory that every participating process maps
// (Julia's SharedArrays). Column-major like Julia, Fortran and Eigen; 0-based indices.
//
// The memory is a memfd (never a name in /dev/shm, so nothing can leak), sized and reserved
// with fallocate at construction: too little memory (MemAvailable, the cgroup v1/v2 limit that
// placement.hpp reads) or a size beyond RLIMIT_FSIZE (`ulimit -f`) is an exception then, never
// a SIGBUS or SIGXFSZ later. A file-backed array's blocks are reserved the same way
// (posix_fallocate): a full filesystem is an exception at construction. Each participating process reserves (and so first-touches) the pages of its own
// localindices. A SharedArray passed to a remote call travels as a handle: the receiver gets
// the memfd from the master over its control socket once, maps it, and sees the same memory.
// The memory is released when the last handle in every process is gone.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "vscale/cluster.hpp"
#include "vscale/detail/remote_object.hpp"
#include "vscale/errors.hpp"
#include "vscale/range.hpp"
#include "vscale/remotecall.hpp"

namespace vscale {

/// How a file-backed SharedArray opens its file (Julia's modes).
enum class FileMode {
  automatic,  ///< "r+" if the file exists, else "w+"
  r,          ///< read only; the file must exist and be large enough
  r_plus,     ///< read and write; the file must exist and be large enough
  w_plus,     ///< create or truncate, read and write
  a_plus,     ///< create if missing, extend if too small, read and write
};

/// Dimensions of a SharedArray: N sizes, from any integers; a negative size is an error.
template <std::size_t N>
struct Extents {
  std::array<std::size_t, N> v{};
  Extents(const std::array<std::size_t, N>& a) : v(a) {}  // NOLINT: implicit on purpose
  template <std::integral... I>
    requires(sizeof...(I) == N)
  Extents(I... sizes) {  // NOLINT
    std::size_t k = 0;
    ((v[k] = check(sizes, k), ++k), ...);
  }

 private:
  template <class I>
  static std::size_t check(I s, std::size_t dim) {
    if constexpr (std::is_signed_v<I>)
      if (s < 0)
        throw UsageError("vscale: SharedArray dimension " + std::to_string(dim + 1) + " is negative (" +
                         std::to_string(s) + ")");
    return static_cast<std::size_t>(s);
  }
};

/// Option: the processes that take part (default: all workers, or the master alone).
struct Pids {
  std::vector<int> ids;
};
inline Pids pids(std::vector<int> ids) { return Pids{std::move(ids)}; }

/// Option: a function run on every participating process with the array, all waited for
/// before the constructor returns. Typically fills `localindices(S)`.
template <class F>
struct Init {
  F f;
};
template <class F>
Init<std::decay_t<F>> init(F&& f) {
  return {std::forward<F>(f)};
}

namespace detail {

/// The mapping of one array's memory in this process (shared by its local handles).
struct SharedMapping {
  RefId key;                  // the array's id (a memory-backed array's: its owner's, ref.id())
  RemoteRef ref;              // memory-backed: the master's memfd, with this process's weight
  std::size_t bytes = 0;      // data bytes
  char* data = nullptr;       // first element
  void* map_base = nullptr;   // what munmap needs
  std::size_t map_len = 0;
  int fd = -1;                // memfd (memory-backed arrays) or the file
  bool file = false;          // file-backed
  bool readonly = false;
  std::string path;
  std::size_t offset = 0;
  std::vector<int> pinned_on; // master: workers that keep this array mapped while we live
  ~SharedMapping();
};

/// A participating worker keeps its mapping while the master's array lives (as in Julia), so
/// that calls do not map and unmap the memory each time.
void shm_pin(const std::shared_ptr<SharedMapping>& m);
void shm_note_pinned(SharedMapping& m, const std::vector<int>& pids);

/// Master: a new memory-backed array of `bytes` (checked against available memory).
std::shared_ptr<SharedMapping> shm_create(std::size_t bytes);
/// Any process: open a file-backed array (mode decides creation; workers never truncate).
std::shared_ptr<SharedMapping> shm_open_file(const std::string& path, std::size_t bytes, std::size_t offset,
                                              FileMode mode, bool creating);
/// Reserve (fallocate) and first-touch the pages holding bytes [from, to) of the array.
void shm_reserve(SharedMapping& m, std::size_t from, std::size_t to);
void shm_save(cereal::BinaryOutputArchive& ar, const std::shared_ptr<SharedMapping>& m);
std::shared_ptr<SharedMapping> shm_load(cereal::BinaryInputArchive& ar);

/// Julia's split of `len` elements over `n` pids: part `k` (0-based).
inline IndexRange split_1dim(std::size_t len, std::size_t n, std::size_t k) {
  if (n == 0) return {};
  if (len < n) return k < len ? IndexRange{k, k + 1} : IndexRange{};
  std::size_t part = len / n;
  return {k * part, k + 1 == n ? len : (k + 1) * part};
}

std::size_t checked_count(const std::size_t* dims, std::size_t n, std::size_t elem_size);
std::vector<int> checked_pids(std::vector<int> ids);

}  // namespace detail

/// An N-dimensional array of T shared by processes. Copies are handles to the same memory.
/// Example: SharedArray<double, 2> a({3, 4}); a(2, 3) = 1.0;
/// (One dimension: write `SharedArray<double, 1> v(10)`; `v({10})` is ambiguous with the copy
/// constructor.)
template <class T, std::size_t N>
class SharedArray {
  static_assert(N >= 1, "vscale: a SharedArray has at least one dimension");
  static_assert(std::is_trivially_copyable_v<T>,
                "vscale: SharedArray elements must be trivially copyable (plain numbers, PODs, std::array of "
                "them): every process reads them as raw bytes in shared memory");

 public:
  using value_type = T;
  using Dims = std::array<std::size_t, N>;

  SharedArray() = default;
  /// A zero-filled array of the given dimensions. Options: vscale::init(f), vscale::pids({...}).
  template <class... Opts>
  explicit SharedArray(Extents<N> dims, Opts&&... opts);
  /// A file-backed array: `dims` elements of T at byte `offset` of the file at `path`.
  template <class... Opts>
  SharedArray(const std::string& path, Extents<N> dims, std::size_t offset = 0, FileMode mode = FileMode::automatic,
              Opts&&... opts);

  /// Element (i0, i1, ...): column-major, the first index varies fastest (checked only
  /// without NDEBUG).
  template <std::integral... I>
    requires(sizeof...(I) == N)
  T& operator()(I... idx) const;
  /// Element at linear (column-major) index k (checked only without NDEBUG).
  T& operator[](std::size_t k) const;
  /// Element (i0, i1, ...), its indices checked in every build: a bad one throws
  /// vscale::UsageError naming it and the dimensions.
  template <std::integral... I>
    requires(sizeof...(I) == N)
  T& at(I... idx) const;

  T* data() const noexcept { return data_; }
  std::size_t size() const noexcept;
  std::size_t size(std::size_t dim) const { return dims_.at(dim); }
  const Dims& dims() const noexcept { return dims_; }
  const std::vector<int>& pids() const noexcept { return pids_; }
  bool valid() const noexcept { return map_ != nullptr; }
  /// All elements as a span (Julia's sdata).
  std::span<T> span() const noexcept { return {data_, size()}; }
  /// N = 1: an Eigen vector over the elements; N = 2: an Eigen matrix (column-major).
  auto eigen() const;

  template <class A>
  void save(A& ar) const;
  template <class A>
  void load(A& ar);
  /// (Internal) reserve this process's localindices pages.
  void reserve_local() const;

 private:
  template <class X>
  struct is_init : std::false_type {};
  template <class F>
  struct is_init<Init<F>> : std::true_type {};
  static void take_option(Pids& who, const Pids& p) { who = p; }
  template <class F>
  static void take_option(Pids&, const Init<F>&) {}
  template <class... Opts>
  void setup(const Opts&... opts);
  template <class I>
  static std::size_t checked_index(I i);
  [[noreturn]] void bounds_error(std::size_t dim, std::size_t i) const;

  std::shared_ptr<detail::SharedMapping> map_;
  T* data_ = nullptr;
  Dims dims_{};
  std::vector<int> pids_;
};

template <class T, std::size_t N>
template <class... Opts>
SharedArray<T, N>::SharedArray(Extents<N> dims, Opts&&... opts) : dims_(dims.v) {
  Pids who{};
  (take_option(who, opts), ...);
  pids_ = detail::checked_pids(who.ids);
  const std::size_t count = detail::checked_count(dims_.data(), N, sizeof(T));
  map_ = detail::shm_create(count * sizeof(T));
  data_ = reinterpret_cast<T*>(map_->data);
  setup(opts...);
}

template <class T, std::size_t N>
template <class... Opts>
SharedArray<T, N>::SharedArray(const std::string& path, Extents<N> dims, std::size_t offset, FileMode mode,
                               Opts&&... opts)
    : dims_(dims.v) {
  Pids who{};
  (take_option(who, opts), ...);
  constexpr bool has_init = (is_init<std::decay_t<Opts>>::value || ...);
  if (has_init && mode == FileMode::r)
    throw UsageError("vscale: SharedArray(\"" + path + "\"): an init function needs a writable file, but the mode is r");
  pids_ = detail::checked_pids(who.ids);
  const std::size_t count = detail::checked_count(dims_.data(), N, sizeof(T));
  map_ = detail::shm_open_file(path, count * sizeof(T), offset, mode, true);
  data_ = reinterpret_cast<T*>(map_->data);
  setup(opts...);
}

template <class T, std::size_t N>
template <std::integral... I>
  requires(sizeof...(I) == N)
T& SharedArray<T, N>::operator()(I... idx) const {
  const std::size_t ix[N] = {static_cast<std::size_t>(idx)...};
  std::size_t lin = 0, stride = 1;
  for (std::size_t d = 0; d < N; ++d) {
#ifndef NDEBUG
    if (ix[d] >= dims_[d]) bounds_error(d, ix[d]);
#endif
    lin += ix[d] * stride;
    stride *= dims_[d];
  }
  return data_[lin];
}

template <class T, std::size_t N>
T& SharedArray<T, N>::operator[](std::size_t k) const {
#ifndef NDEBUG
  if (k >= size()) bounds_error(N, k);
#endif
  return data_[k];
}

template <class T, std::size_t N>
template <std::integral... I>
  requires(sizeof...(I) == N)
T& SharedArray<T, N>::at(I... idx) const {
  const std::size_t ix[N] = {checked_index(idx)...};
  std::size_t lin = 0, stride = 1;
  for (std::size_t d = 0; d < N; ++d) {
    if (ix[d] >= dims_[d]) bounds_error(d, ix[d]);
    lin += ix[d] * stride;
    stride *= dims_[d];
  }
  return data_[lin];
}

template <class T, std::size_t N>
std::size_t SharedArray<T, N>::size() const noexcept {
  std::size_t n = map_ ? 1 : 0;
  if (map_)
    for (auto d : dims_) n *= d;
  return n;
}

template <class T, std::size_t N>
auto SharedArray<T, N>::eigen() const {
  if constexpr (N == 1) {
    return Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(data_, static_cast<Eigen::Index>(dims_[0]));
  } else {
    static_assert(N == 2, "vscale: SharedArray::eigen() exists for 1 and 2 dimensions");
    return Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>(data_, static_cast<Eigen::Index>(dims_[0]),
                                                                        static_cast<Eigen::Index>(dims_[1]));
  }
}

template <class T, std::size_t N>
template <class A>
void SharedArray<T, N>::save(A& ar) const {
  if (!map_) throw UsageError("vscale: cannot send an empty SharedArray (moved-from or default-constructed)");
  ar(dims_, pids_);
  detail::shm_save(ar, map_);
}

template <class T, std::size_t N>
template <class A>
void SharedArray<T, N>::load(A& ar) {
  ar(dims_, pids_);
  map_ = detail::shm_load(ar);
  data_ = reinterpret_cast<T*>(map_->data);
}

template <class T, std::size_t N>
template <class... Opts>
void SharedArray<T, N>::setup(const Opts&... opts) {
  // Every participating process reserves (first-touches) its own part, then runs init.
  using Self = SharedArray<T, N>;
  std::vector<Future<void>> done;
  auto run_init = [&]<class O>(const O& opt) {
    if constexpr (is_init<O>::value) {
      for (int p : pids_)
        done.push_back(remotecall(p, [](const Self& s, const decltype(opt.f)& f) {
          s.reserve_local();
          detail::shm_pin(s.map_);
          f(s);
        }, *this, opt.f));
    }
  };
  (run_init(opts), ...);
  (void)run_init;  // (no options given)
  if (done.empty())
    for (int p : pids_)
      done.push_back(remotecall(p, [](const Self& s) {
        s.reserve_local();
        detail::shm_pin(s.map_);
      }, *this));
  detail::shm_note_pinned(*map_, pids_);
  wait_all(done);
}

template <class T, std::size_t N>
void SharedArray<T, N>::reserve_local() const {
  if (map_->file) return;
  std::size_t k = 0;
  for (; k < pids_.size(); ++k)
    if (pids_[k] == myid()) break;
  if (k == pids_.size()) return;
  IndexRange r = detail::split_1dim(size(), pids_.size(), k);
  detail::shm_reserve(*map_, r.first * sizeof(T), r.last * sizeof(T));
}

// A negative index becomes one too large for any dimension (no array has 2^63 elements).
template <class T, std::size_t N>
template <class I>
std::size_t SharedArray<T, N>::checked_index(I i) {
  if constexpr (std::is_signed_v<I>)
    if (i < 0) return std::numeric_limits<std::size_t>::max();
  return static_cast<std::size_t>(i);
}

template <class T, std::size_t N>
void SharedArray<T, N>::bounds_error(std::size_t dim, std::size_t i) const {
  std::string d = "(";
  for (std::size_t k = 0; k < N; ++k) d += (k ? ", " : "") + std::to_string(dims_[k]);
  d += ")";
  const std::string idx = i == std::numeric_limits<std::size_t>::max() ? std::string("(negative)") : std::to_string(i);
  if (dim == N)
    throw UsageError("vscale: SharedArray linear index " + idx + " is out of range for dimensions " + d +
                     " on process " + std::to_string(myid()));
  throw UsageError("vscale: SharedArray index " + idx + " in dimension " + std::to_string(dim + 1) +
                   " is out of range for dimensions " + d + " on process " + std::to_string(myid()));
}

/// 1-based position of myid() in procs(S), 0 when this process does not take part.
template <class T, std::size_t N>
int indexpids(const SharedArray<T, N>& s) {
  const auto& p = s.pids();
  for (std::size_t k = 0; k < p.size(); ++k)
    if (p[k] == myid()) return static_cast<int>(k + 1);
  return 0;
}

/// This process's part of the linear indices (empty where it does not take part).
template <class T, std::size_t N>
IndexRange localindices(const SharedArray<T, N>& s) {
  int k = indexpids(s);
  if (k == 0) return {};
  return detail::split_1dim(s.size(), s.pids().size(), static_cast<std::size_t>(k - 1));
}

/// The participating processes.
template <class T, std::size_t N>
const std::vector<int>& procs(const SharedArray<T, N>& s) {
  return s.pids();
}

/// All elements as a span (Julia's sdata).
template <class T, std::size_t N>
std::span<T> sdata(const SharedArray<T, N>& s) {
  return s.span();
}

}  // namespace vscale
