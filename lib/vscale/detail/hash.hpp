// The one FNV-1a hash of the runtime (build id fallback, object keys of code addresses).
#pragma once

#include <cstddef>
#include <cstdint>

namespace vscale::detail {

/// 64-bit FNV-1a, fed in pieces: `Fnv1a h; h.add(p, n); ... h.value`.
struct Fnv1a {
  std::uint64_t value = 1469598103934665603ull;
  void add(const void* p, std::size_t n) noexcept {
    const auto* c = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) value = (value ^ c[i]) * 1099511628211ull;
  }
  void add_cstr(const char* s) noexcept {
    for (; *s; ++s) value = (value ^ static_cast<unsigned char>(*s)) * 1099511628211ull;
  }
};

}  // namespace vscale::detail
