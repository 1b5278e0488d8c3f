// Reading vscale's environment variables: every one is validated like the command-line flags,
// so a typo is an error that names the variable, never a silent default.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <string>

#include "vscale/errors.hpp"

namespace vscale::detail {

/// The integer value of environment variable `name`, `dflt` when unset or empty. Throws
/// UsageError naming the variable, the value and the range when it is not an integer in
/// [lo, hi].
inline long env_long(const char* name, long dflt, long lo, long hi) {
  const char* e = std::getenv(name);
  if (!e || !*e) return dflt;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(e, &end, 10);
  if (end == e || *end || errno == ERANGE || v < lo || v > hi)
    throw UsageError(std::string("vscale: ") + name + "=" + e + " is not " +
                     (lo == 0 ? "a number from 0" : lo == 1 ? "a positive number" : "a number from " + std::to_string(lo)) +
                     " up to " + std::to_string(hi));
  return v;
}

}  // namespace vscale::detail
