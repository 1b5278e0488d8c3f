// File descriptors between processes, over the control socket (SCM_RIGHTS): how a worker
// gets a SharedArray's memfd. Only the master holds a socket to every worker, so fds always
// come from the master. Both halves of the exchange live in fd_passing.cpp. Internal.
#pragma once

#include <chrono>
#include <cstdint>

#include "vscale/detail/core.hpp"

namespace vscale::detail {

// An fd travels with the RefId of what it is (a SharedArray's memory) as 16 raw bytes.
static_assert(std::is_trivially_copyable_v<RefId> && sizeof(RefId) == 16);

/// Master: send a duplicate of `fd` to worker `id` (through the cluster manager, which owns
/// the sockets). Throws ProcessExitedException.
void push_fd(int id, RefId key, int fd);
/// Worker: wait for the fd the master pushed under `key` and take it (-1 after `timeout`).
int take_pushed_fd(RefId key, std::chrono::milliseconds timeout);

/// The sending half: `fd` with its key as one message on socket `sock`. False (errno set)
/// when the message could not be sent whole.
bool send_fd(int sock, RefId key, int fd);
/// The receiving half, on a worker: a thread that files every fd the master sends on `sock`
/// for take_pushed_fd. EOF on the socket means the master is gone: the worker exits.
void start_fd_receiver(int sock);

}  // namespace vscale::detail
