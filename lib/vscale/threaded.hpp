// vscale::threaded: the one way to say "and inside each worker, over its threads" (-t), for
// distributed_for and pmap alike.
#pragma once

namespace vscale {

/// Tag, passed first: each worker splits its share over its own threads (tbb in the process's
/// -t arena) instead of running it on one. Examples:
/// distributed_for(vscale::threaded, {0, n}, body).wait(); pmap(vscale::threaded, f, xs);
struct Threaded {};
inline constexpr Threaded threaded{};

}  // namespace vscale
