// How values and callables travel between processes.
//
// Every process runs the same binary, so code is shipped as an address relative to the
// object file that contains it (survives ASLR), and data as bytes:
//   - trivially copyable values (ints, PODs, lambdas with trivially copyable captures): memcpy;
//   - function pointers: as code addresses;
//   - std::string and std::vector of trivially copyable elements: a length and the bytes
//     (no archive: building cereal's stream costs more than a small call itself);
//   - other std containers, Eigen matrices, types with a cereal `serialize` member:
//     cereal's binary archive;
//   - vscale handles (Future, RemoteChannel, RemoteValue, SharedArray, WorkerPool): as ids
//     (with weights, so that the owner knows when the last one is gone), resolved on arrival;
//   - vscale::closure(f, captures...): f plus its captures, for lambdas whose captures are
//     not trivially copyable.
// Anything else is a compile-time error that says what to add.
//
// One rule for handles: a shipped lambda captures none (a handle is not trivially copyable,
// and a lambda has no way to ship its captures otherwise). Pass a handle as an argument of the
// call, `remotecall(p, [](vscale::RemoteChannel<int> ch) { ... }, ch)`, or bundle it with the
// function, `vscale::closure([](const vscale::RemoteChannel<int>& ch, int x) { ... }, ch)`.
#pragma once

#include <complex>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <streambuf>
#include <ostream>
#include <istream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>
#include <Eigen/Core>
#include <concepts>

#include "vscale/errors.hpp"

// Eigen dense matrices and arrays through cereal (one template for both: each derives from
// PlainObjectBase of itself): dimensions, then the raw coefficients.
namespace cereal {
template <class Archive, class M>
  requires std::derived_from<M, Eigen::PlainObjectBase<M>>
void save(Archive& ar, const M& m) {
  static_assert(std::is_trivially_copyable_v<typename M::Scalar>, "vscale: Eigen scalars must be trivially copyable");
  std::int64_t rows = m.rows(), cols = m.cols();
  ar(rows, cols);
  ar(binary_data(m.data(), sizeof(typename M::Scalar) * static_cast<std::size_t>(rows * cols)));
}
template <class Archive, class M>
  requires std::derived_from<M, Eigen::PlainObjectBase<M>>
void load(Archive& ar, M& m) {
  std::int64_t rows = 0, cols = 0;
  ar(rows, cols);
  m.resize(rows, cols);
  ar(binary_data(m.data(), sizeof(typename M::Scalar) * static_cast<std::size_t>(rows * cols)));
}
}  // namespace cereal

/// The rule for shipped callables, as a string literal so that every header's static_assert
/// about an unshippable callable can say it (see the top of this file).
#define VSCALE_SHIP_CAPTURE_RULE                                                                        \
  "A shipped lambda may capture only trivially copyable values (by value), and no vscale handle "      \
  "(Future, RemoteChannel, RemoteValue, SharedArray, WorkerPool): pass a handle, or other data that is " \
  "not trivially copyable, as an argument of the call (remotecall(p, f, ch)) or bundle it with "         \
  "vscale::closure(f, handles...), whose function takes them as leading parameters."

namespace vscale {

/// A callable bundled with captured values that are shipped with it: the way to send a
/// lambda whose captures are not trivially copyable. `closure(f, v)(x)` calls `f(v, x)`.
/// Example: remotecall(2, closure([](const std::vector<double>& v, int i) { return v[i]; }, data), 3)
template <class F, class... C>
struct Closure {
  F f;
  std::tuple<C...> captured;
  template <class... A>
  decltype(auto) operator()(A&&... a) const {
    return std::apply([&](const C&... c) -> decltype(auto) { return std::invoke(f, c..., std::forward<A>(a)...); },
                      captured);
  }
};

/// Bundle `f` with `captures` so that both travel to the process that calls it.
template <class F, class... C>
Closure<std::decay_t<F>, std::decay_t<C>...> closure(F&& f, C&&... captures) {
  return {std::forward<F>(f), {std::forward<C>(captures)...}};
}

namespace detail {

/// Position-independent name of a piece of code: which loaded object, and where in it.
struct CodeRef {
  std::uint64_t object;  // hash of the object's name ("" for the main program)
  std::uint64_t offset;  // address minus the object's load base
};
CodeRef encode_code(const void* address);
const void* decode_code(CodeRef ref);

// A streambuf with no buffer of its own, so cereal's writes and our raw writes land in the
// same byte vector in program order.
class VectorBuf : public std::streambuf {
 public:
  explicit VectorBuf(std::vector<char>& out) : out_(out) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    out_.insert(out_.end(), s, s + n);
    return n;
  }
  int_type overflow(int_type c) override {
    if (c != traits_type::eof()) out_.push_back(static_cast<char>(c));
    return c;
  }

 private:
  std::vector<char>& out_;
};

class SpanBuf : public std::streambuf {
 public:
  SpanBuf(const char*& pos, const char* end) : pos_(pos), end_(end) {}

 protected:
  std::streamsize xsgetn(char* s, std::streamsize n) override {
    std::streamsize avail = end_ - pos_;
    if (n > avail) n = avail;
    if (n > 0) std::memcpy(s, pos_, static_cast<std::size_t>(n));  // (s may be null when n is 0)
    pos_ += n;
    return n;
  }
  int_type underflow() override { return pos_ < end_ ? traits_type::to_int_type(*pos_) : traits_type::eof(); }
  int_type uflow() override { return pos_ < end_ ? traits_type::to_int_type(*pos_++) : traits_type::eof(); }

 private:
  const char*& pos_;
  const char* end_;
};

/// Appends serialized values to a byte vector.
class Writer {
 public:
  // The usual small call allocates nothing: a Writer starts with its thread's spare buffer
  // and gives it back when done (one allocation per call, and the vector's growth steps,
  // showed in callgrind's instruction counts: see bench/RESULTS.md). A Writer made while
  // another holds the spare, or whose bytes were moved out, starts with 128 bytes of its own.
  Writer() {
    buf_.swap(spare());
    if (buf_.capacity() == 0) buf_.reserve(128);
  }
  ~Writer() {
    cereal_.reset();  // (its stream writes into buf_)
    auto& s = spare();
    if (buf_.capacity() <= kKeepSpare && s.capacity() == 0) {
      buf_.clear();
      s.swap(buf_);
    }
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  std::vector<char>& bytes() noexcept { return buf_; }
  void write_raw(const void* p, std::size_t n) {
    // resize + memcpy rather than insert: GCC 12 warns falsely (-Wstringop-overflow) on
    // inlined small inserts.
    const std::size_t old = buf_.size();
    buf_.resize(old + n);
    if (n) std::memcpy(buf_.data() + old, p, n);
  }
  /// A block of any length: one pass over the bytes (resize would zero them first).
  void write_block(const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    buf_.insert(buf_.end(), c, c + n);
  }
  cereal::BinaryOutputArchive& archive() {
    if (!cereal_) cereal_ = std::make_unique<Cereal>(buf_);
    return cereal_->archive;
  }

 private:
  struct Cereal {
    explicit Cereal(std::vector<char>& b) : buf(b), stream(&buf), archive(stream) {}
    VectorBuf buf;
    std::ostream stream;
    cereal::BinaryOutputArchive archive;
  };
  static constexpr std::size_t kKeepSpare = 4096;  // a bigger buffer is freed, not kept
  static std::vector<char>& spare() noexcept {
    static thread_local std::vector<char> s;
    return s;
  }
  std::vector<char> buf_;
  std::unique_ptr<Cereal> cereal_;
};

/// Reads serialized values back, in the order they were written.
class Reader {
 public:
  Reader(const char* data, std::size_t size) : pos_(data), end_(data + size) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  void read_raw(void* p, std::size_t n) {
    if (static_cast<std::size_t>(end_ - pos_) < n) throw Error("vscale: truncated message (internal error)");
    if (n) std::memcpy(p, pos_, n);
    pos_ += n;
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - pos_); }
  /// A length written by write_length for elements of `elem` bytes, checked against what is left.
  std::uint64_t read_length(std::size_t elem) {
    std::uint64_t n = 0;
    read_raw(&n, sizeof n);
    if (n > remaining() / elem) throw Error("vscale: truncated message (internal error)");
    return n;
  }
  cereal::BinaryInputArchive& archive() {
    if (!cereal_) cereal_ = std::make_unique<Cereal>(pos_, end_);
    return cereal_->archive;
  }

 private:
  struct Cereal {
    Cereal(const char*& pos, const char* end) : buf(pos, end), stream(&buf), archive(stream) {}
    SpanBuf buf;
    std::istream stream;
    cereal::BinaryInputArchive archive;
  };
  const char* pos_;
  const char* end_;
  std::unique_ptr<Cereal> cereal_;
};

template <class T>
struct is_closure : std::false_type {};
template <class F, class... C>
struct is_closure<Closure<F, C...>> : std::true_type {};

template <class T>
concept FunctionPointer = std::is_pointer_v<T> && std::is_function_v<std::remove_pointer_t<T>>;

template <class T>
concept CerealShippable = cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
                          cereal::traits::is_input_serializable<T, cereal::BinaryInputArchive>::value;

template <class T>
concept MemcpyShippable = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && !std::is_member_pointer_v<T>;

/// Elements a vector ships as one block of bytes (std::vector<bool> packs its bits; an empty
/// type has no bytes).
template <class T>
concept PodElement = MemcpyShippable<T> && !std::is_same_v<T, bool> && !std::is_empty_v<T>;

template <class T>
struct is_pod_vector : std::false_type {};
template <class E>
struct is_pod_vector<std::vector<E>> : std::bool_constant<PodElement<E>> {};
/// std::vector of PodElements and std::string: a length and the bytes, without cereal.
template <class T>
concept ByteBlock = is_pod_vector<T>::value || std::is_same_v<T, std::string>;

template <class T>
inline constexpr bool shippable_v = [] {
  if constexpr (is_closure<T>::value) {
    return []<class F, class... C>(std::type_identity<Closure<F, C...>>) {
      return (FunctionPointer<F> || MemcpyShippable<F>)&&(... && (MemcpyShippable<C> || ByteBlock<C> || CerealShippable<C>));
    }(std::type_identity<T>{});
  } else if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    return FunctionPointer<T>;  // (asking cereal about a data pointer would hit its own static_assert)
  } else {
    return MemcpyShippable<T> || ByteBlock<T> || CerealShippable<T>;
  }
}();

template <class T>
inline constexpr bool dependent_false_v = false;

/// Serialize one value (see the rules at the top of this file).
template <class T>
void write(Writer& w, const T& v) {
  if constexpr (FunctionPointer<T>) {
    CodeRef ref = encode_code(reinterpret_cast<const void*>(v));
    w.write_raw(&ref, sizeof ref);
  } else if constexpr (is_closure<T>::value) {
    write(w, v.f);
    std::apply([&](const auto&... c) { (write(w, c), ...); }, v.captured);
  } else if constexpr (MemcpyShippable<T>) {
    if constexpr (!std::is_empty_v<T>) w.write_raw(&v, sizeof(T));  // captureless lambdas: nothing to send
  } else if constexpr (ByteBlock<T>) {
    const std::uint64_t n = v.size();
    w.write_raw(&n, sizeof n);
    w.write_block(v.data(), n * sizeof(typename T::value_type));
  } else if constexpr (CerealShippable<T>) {
    w.archive()(v);
  } else if constexpr (std::is_pointer_v<T>) {
    static_assert(dependent_false_v<T>,
                  "vscale: a raw pointer cannot be shipped to another process (its address means nothing "
                  "there). Pass the value itself, a std::vector, or a SharedArray.");
  } else {
    static_assert(dependent_false_v<T>,
                  "vscale: this type cannot be shipped to another process. Make it trivially copyable, or "
                  "give it a cereal member `template <class A> void serialize(A& a) { a(field1, field2); }` "
                  "(and a default constructor). " VSCALE_SHIP_CAPTURE_RULE);
  }
}

/// Deserialize one value written by write<T>.
template <class T>
T read(Reader& r) {
  if constexpr (FunctionPointer<T>) {
    CodeRef ref;
    r.read_raw(&ref, sizeof ref);
    return reinterpret_cast<T>(const_cast<void*>(decode_code(ref)));
  } else if constexpr (is_closure<T>::value) {
    return []<class F, class... C>(Reader& rd, std::type_identity<Closure<F, C...>>) {
      F f = read<F>(rd);
      std::tuple<C...> caps{read<C>(rd)...};  // braced: read left to right
      return Closure<F, C...>{std::move(f), std::move(caps)};
    }(r, std::type_identity<T>{});
  } else if constexpr (MemcpyShippable<T>) {
    alignas(T) unsigned char storage[sizeof(T)] = {};
    if constexpr (!std::is_empty_v<T>) r.read_raw(storage, sizeof(T));
    return *std::launder(reinterpret_cast<T*>(storage));
  } else if constexpr (ByteBlock<T>) {
    using E = typename T::value_type;
    T v;
    v.resize(r.read_length(sizeof(E)));
    r.read_raw(v.data(), v.size() * sizeof(E));
    return v;
  } else if constexpr (!CerealShippable<T>) {
    // Not shippable: write<T> (or the caller's check) has said so at compile time already;
    // nothing more is instantiated here, so that its message is the one to read.
    throw Error("vscale: internal error: reading a type that cannot be shipped");
  } else {
    static_assert(std::is_default_constructible_v<T>,
                  "vscale: a type received through cereal needs a default constructor");
    T v;
    r.archive()(v);
    return v;
  }
}

}  // namespace detail
}  // namespace vscale
