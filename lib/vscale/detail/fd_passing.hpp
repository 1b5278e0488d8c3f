// File descriptors between processes, over the control socket (SCM_RIGHTS): how a worker
// gets a SharedArray's memfd. Only the master holds a socket to every worker, so fds always
// come from the master. Both halves of the exchange live in fd_passing.cpp. Internal.
#pragma once

#include <chrono>
#include <cstdint>

namespace vscale::detail {

/// A 16-byte name for what the fd is (a SharedArray's key).
struct FdKey {
  std::uint64_t a = 0, b = 0;
  friend bool operator==(const FdKey&, const FdKey&) = default;
};

/// Master: send a duplicate of `fd` to worker `id` (through the cluster manager, which owns
/// the sockets). Throws ProcessExitedException.
void push_fd(int id, FdKey key, int fd);
/// Worker: wait for the fd the master pushed under `key` and take it (-1 after `timeout`).
int take_pushed_fd(FdKey key, std::chrono::milliseconds timeout);

/// The sending half: `fd` with its key as one message on socket `sock`. False (errno set)
/// when the message could not be sent whole.
bool send_fd(int sock, FdKey key, int fd);
/// The receiving half, on a worker: a thread that files every fd the master sends on `sock`
/// for take_pushed_fd. EOF on the socket means the master is gone: the worker exits.
void start_fd_receiver(int sock);

}  // namespace vscale::detail
