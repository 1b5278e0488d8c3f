// A worker process's main (worker_main.cpp). Internal.
#pragma once

namespace vscale::detail {

/// Run this process as worker `spec` ("ID:SOCK:SEG:MASTERPID:THREADS:CPUS", the value of the
/// hidden --vscale-worker= flag): join the master, serve calls, and exit; never returns.
[[noreturn]] void worker_main(const char* spec);

}  // namespace vscale::detail
