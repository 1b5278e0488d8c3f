// IndexRange: the one range of indices in the API (distributed_for's loop range, a
// SharedArray's localindices), half-open like C++ iterators, 0-based like the arrays.
#pragma once

#include <concepts>
#include <cstddef>
#include <string>
#include <type_traits>

#include "vscale/errors.hpp"

namespace vscale {

/// A half-open range [first, last) of indices from 0; iterable. Empty when last <= first.
struct IndexRange {
  std::size_t first = 0, last = 0;

  constexpr IndexRange() noexcept = default;
  /// From integers of any type, so that `{0, n}` works for an int or a long `n` (a braced
  /// pair would otherwise be a narrowing error); a negative one is a UsageError.
  template <std::integral A, std::integral B>
  constexpr IndexRange(A f, B l) : first(index(f)), last(index(l)) {}

  constexpr std::size_t size() const noexcept { return last > first ? last - first : 0; }
  constexpr bool empty() const noexcept { return last <= first; }
  struct iterator {
    std::size_t i;
    constexpr std::size_t operator*() const noexcept { return i; }
    constexpr iterator& operator++() noexcept {
      ++i;
      return *this;
    }
    constexpr bool operator==(const iterator&) const = default;
  };
  constexpr iterator begin() const noexcept { return {first}; }
  constexpr iterator end() const noexcept { return {empty() ? first : last}; }
  friend constexpr bool operator==(const IndexRange&, const IndexRange&) = default;

 private:
  template <std::integral I>
  static constexpr std::size_t index(I i) {
    if constexpr (std::is_signed_v<I>) {
      if (i < 0)
        throw UsageError("vscale: an IndexRange bound of " + std::to_string(i) +
                         ": indices start at 0 (shift the index inside the loop body instead)");
    }
    return static_cast<std::size_t>(i);
  }
};

}  // namespace vscale
