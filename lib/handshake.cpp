// The join protocol's pieces and this program's identity (see vscale/detail/handshake.hpp).
#include "vscale/detail/handshake.hpp"

#include <elf.h>
#include <link.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "vscale/detail/env.hpp"
#include "vscale/detail/hash.hpp"

namespace vscale::detail {

namespace {

std::string hex(const unsigned char* p, std::size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

}  // namespace

/// The ELF build id of the main program (or a hash of the file when it has none).
const std::string& build_id() {
  static const std::string id = [] {
    std::string out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
          auto& s = *static_cast<std::string*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_NOTE) continue;
            const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
            const char* end = p + ph.p_memsz;
            while (p + sizeof(ElfW(Nhdr)) <= end) {
              auto* nh = reinterpret_cast<const ElfW(Nhdr)*>(p);
              const char* name = p + sizeof(ElfW(Nhdr));
              const char* desc = name + ((nh->n_namesz + 3) & ~3u);
              if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
                s = hex(reinterpret_cast<const unsigned char*>(desc), nh->n_descsz);
                return 1;
              }
              p = desc + ((nh->n_descsz + 3) & ~3u);
            }
          }
          return 1;  // only the first object: the program itself
        },
        &out);
    if (!out.empty()) return out;
    std::ifstream f("/proc/self/exe", std::ios::binary);
    Fnv1a h;
    char buf[65536];
    while (f.read(buf, sizeof buf) || f.gcount() > 0) h.add(buf, static_cast<std::size_t>(f.gcount()));
    return "fnv-" + std::to_string(h.value);
  }();
  return id;
}

std::string random_cookie() {
  unsigned char b[24];
  if (getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) {
    std::random_device rd;
    for (auto& c : b) c = static_cast<unsigned char>(rd());
  }
  return hex(b, sizeof b);
}

void copy_str(char* dst, std::size_t cap, const std::string& s) {
  std::size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = 0;
}

bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    // On a socket, MSG_NOSIGNAL: a peer that died before the handshake must not kill the
    // master with SIGPIPE; other fds are plain writes.
    ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k < 0 && errno == ENOTSOCK) k = ::write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t k = ::read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

/// Closes /proc/<pid>/fd, /proc/<pid>/mem and ptrace to other processes of the same user, so
/// that none can open the control segment and forge a death or a message (the cookie guards
/// the join only). VSCALE_DEBUGGABLE=1 keeps the process debuggable (gdb -p, perf, core
/// dumps). Sanitizer builds stay dumpable: LeakSanitizer ptraces its own process at exit.
void make_private() {
  const bool debuggable = env_long("VSCALE_DEBUGGABLE", 0, 0, 1) == 1;  // checked in every build
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  if (!debuggable) prctl(PR_SET_DUMPABLE, 0);
#else
  (void)debuggable;
#endif
}

}  // namespace vscale::detail
