// A worker's life: the hidden flag, pinning, the handshake, the runtime, and its end (kExit,
// the master's socket closing, or exit() in user code). The Session constructor calls
// worker_main when it finds the flag; it never returns into the user's main.
#include "vscale/detail/worker.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <system_error>

#include "vscale/detail/fd_passing.hpp"
#include "vscale/detail/handshake.hpp"
#include "vscale/detail/runtime.hpp"

namespace vscale::detail {

namespace {
void flush_output() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}
}  // namespace

[[noreturn]] void worker_main(const char* spec) {
  int id = 0, sock = -1, seg = -1, mpid = 0, threads = 1, used = 0;
  if (std::sscanf(spec, "%d:%d:%d:%d:%d:%n", &id, &sock, &seg, &mpid, &threads, &used) != 5 || used == 0) {
    std::fprintf(stderr, "vscale worker: malformed %s%s\n", kWorkerFlag, spec);
    _exit(2);
  }
  if (std::strcmp(spec + used, "-") != 0) {
    // Pin before any thread starts, so that every thread (TBB's included) inherits the mask.
    cpu_set_t set;
    CPU_ZERO(&set);
    for (const char* p = spec + used; *p;) {
      char* end;
      long c = std::strtol(p, &end, 10);
      if (end == p || c < 0 || c >= CPU_SETSIZE) break;
      CPU_SET(static_cast<int>(c), &set);
      p = *end == ',' ? end + 1 : end;
      if (end == p) break;
    }
    if (CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof set, &set) != 0)
      std::fprintf(stderr, "vscale worker %d: cannot pin to CPUs %s: %s\n", id, spec + used, std::strerror(errno));
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  make_private();
  std::string name = "vscale-w" + std::to_string(id);  // what ps and top show
  prctl(PR_SET_NAME, name.c_str());
  if (getppid() != mpid) _exit(1);  // the master died before we got here
  setvbuf(stdout, nullptr, _IOLBF, 0);
  // Keep the cookie out of anything this worker starts.
  std::string cookie;
  if (char* c = std::getenv("VSCALE_COOKIE")) {
    cookie = c;
    // Out of environ, and wiped in place: /proc/<pid>/environ shows the original block
    // (which outlives unsetenv), readable by any process of the same user.
    char* entry = c - std::strlen("VSCALE_COOKIE=");
    const std::size_t len = std::strlen(entry);
    unsetenv("VSCALE_COOKIE");
    std::memset(entry, 0, len);
  } else {
    unsetenv("VSCALE_COOKIE");
  }
  fcntl(sock, F_SETFD, FD_CLOEXEC);
  fcntl(seg, F_SETFD, FD_CLOEXEC);

  Hello h{};
  std::memcpy(h.magic, kHelloMagic, sizeof h.magic);
  h.id = id;
  h.os_pid = getpid();
  copy_str(h.cookie, sizeof h.cookie, cookie);
  copy_str(h.build_id, sizeof h.build_id, build_id());
  Verdict v{};
  if (!write_all(sock, &h, sizeof h) || !read_all(sock, &v, sizeof v)) _exit(1);
  if (!v.ok) {
    std::fprintf(stderr, "vscale worker %d: %s\n", id, v.reason);
    _exit(3);
  }
  Runtime* rt = nullptr;
  try {
    // Never destroyed: a worker ends by _exit (below, or in its exit handler).
    rt = new Runtime(id, false);
    rt->master_os_pid = mpid;
    rt->segment().attach(seg);
    rt->start(threads);
    start_fd_receiver(sock);  // the master's fds; EOF there (the master gone) ends us
  } catch (const std::exception& e) {
    // The master reports it as this worker's failure to start (nothing is printed here).
    Ready r{};
    std::string why = e.what();
    if (auto* se = dynamic_cast<const std::system_error*>(&e); se && se->code() == std::errc::resource_unavailable_try_again)
      why = "cannot create its threads (" + why + "): the limit of processes and threads (ulimit -u) is reached";
    copy_str(r.reason, sizeof r.reason, why);
    (void)write_all(sock, &r, sizeof r);
    _exit(4);
  }
  // exit() or quick_exit() from a call, from a thread the user started or from an atexit
  // handler ends this worker with that status and its output flushed, as the reason the
  // master reports ("exited with code 3"). Without this, exit() would run the destructors of
  // the runtime while its threads still run (one of them the caller): an abort.
  on_exit([](int status, void*) {
    flush_output();
    _exit(status);
  }, nullptr);
  at_quick_exit(flush_output);
  Ready ready{};
  ready.ok = 1;
  if (!write_all(sock, &ready, sizeof ready)) _exit(1);
  rt->wait_until([&] { return rt->exit_requested().load(); });
  flush_output();
  _exit(0);
}

}  // namespace vscale::detail
