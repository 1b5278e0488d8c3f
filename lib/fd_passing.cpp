// File descriptors over the control socket, both halves (see vscale/detail/fd_passing.hpp).
#include "vscale/detail/fd_passing.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace vscale::detail {

namespace {
std::mutex g_fd_m;  // fds the master pushed to this worker, not yet taken
std::condition_variable g_fd_cv;
std::vector<std::pair<RefId, int>> g_fds;

// One message of the exchange, both ways: the key as data, one fd as SCM_RIGHTS ancillary data.
// Not copyable: the header points into the object.
struct FdMessage {
  RefId key;
  char ctrl[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{&key, sizeof key};
  msghdr msg{};
  FdMessage() {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
};
}  // namespace

bool send_fd(int sock, RefId key, int fd) {
  FdMessage m;
  m.key = key;
  cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t k;
  do {
    k = sendmsg(sock, &m.msg, MSG_NOSIGNAL);
  } while (k < 0 && errno == EINTR);
  if (k >= 0 && k != static_cast<ssize_t>(sizeof key)) errno = EMSGSIZE;
  return k == static_cast<ssize_t>(sizeof key);
}

void start_fd_receiver(int sock) {
  std::thread([sock] {
    while (true) {
      FdMessage m;
      ssize_t k = recvmsg(sock, &m.msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        std::fflush(nullptr);
        _exit(0);
      }
      cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
      if (k == static_cast<ssize_t>(sizeof m.key) && c && c->cmsg_type == SCM_RIGHTS) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
        std::lock_guard lk(g_fd_m);
        g_fds.emplace_back(m.key, fd);
        g_fd_cv.notify_all();
      }
    }
  }).detach();
}

int take_pushed_fd(RefId key, std::chrono::milliseconds timeout) {
  std::unique_lock lk(g_fd_m);
  int fd = -1;
  g_fd_cv.wait_for(lk, timeout, [&] {
    for (auto it = g_fds.begin(); it != g_fds.end(); ++it)
      if (it->first == key) {
        fd = it->second;
        g_fds.erase(it);
        return true;
      }
    return false;
  });
  return fd;
}

}  // namespace vscale::detail
