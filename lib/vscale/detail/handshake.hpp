// The join protocol between the master and a worker it started, and what identifies this
// program: the hidden worker flag, the handshake records on the control socket, the build id
// and the cookie. Internal.
//
// The handshake, on the socketpair the worker inherits as fd 3:
//   worker -> master  Hello   (magic, id, pid, cookie, build id)
//   master -> worker  Verdict (accepted, or why not)
//   worker -> master  Ready   (its runtime runs, or why it could not start)
// Only after Ready is the worker a member (Segment::set_alive).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace vscale::detail {

inline constexpr char kWorkerFlag[] = "--vscale-worker=";
inline constexpr char kHelloMagic[8] = {'v', 's', 'c', 'h', 'e', 'l', 'o', '1'};

struct Hello {
  char magic[8];
  std::int32_t id;
  std::int32_t os_pid;
  char cookie[64];
  char build_id[64];
};
struct Verdict {
  std::int32_t ok;
  char reason[124];
};
// The worker's last word of the handshake: its runtime runs (ok), or why it could not start.
// Only then is it a member: a worker that passed the cookie check but cannot make its threads
// (ulimit -u) must not be counted as joined.
struct Ready {
  std::int32_t ok;
  char reason[252];
};

/// The ELF build id of the main program (or a hash of the file when it has none).
const std::string& build_id();
/// 48 hex digits from getrandom.
std::string random_cookie();
/// `s` into a fixed char array, cut to fit and NUL-terminated.
void copy_str(char* dst, std::size_t cap, const std::string& s);
/// The whole buffer, retrying short writes and EINTR (MSG_NOSIGNAL on sockets); false on error.
bool write_all(int fd, const void* p, std::size_t n);
/// The whole buffer; false on EOF or error.
bool read_all(int fd, void* p, std::size_t n);
/// Makes this process non-dumpable unless VSCALE_DEBUGGABLE=1 (see handshake.cpp).
void make_private();

}  // namespace vscale::detail
