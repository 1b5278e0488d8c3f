// File descriptors between processes, over the control socket (SCM_RIGHTS): how a worker
// gets a SharedArray's memfd. Only the master holds a socket to every worker, so fds always
// come from the master. Internal.
#pragma once

#include <chrono>
#include <cstdint>

namespace vscale::detail {

/// A 16-byte name for what the fd is (a SharedArray's key).
struct FdKey {
  std::uint64_t a = 0, b = 0;
  friend bool operator==(const FdKey&, const FdKey&) = default;
};

/// Master: send a duplicate of `fd` to worker `id`. Throws ProcessExitedException.
void push_fd(int id, FdKey key, int fd);
/// Worker: wait for the fd the master pushed under `key` and take it (-1 after `timeout`).
int take_pushed_fd(FdKey key, std::chrono::milliseconds timeout);

}  // namespace vscale::detail
