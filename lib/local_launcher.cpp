// The local launcher (see vscale/detail/local_launcher.hpp).
#include "vscale/detail/local_launcher.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "vscale/detail/cgroup.hpp"
#include "vscale/detail/handshake.hpp"
#include "vscale/detail/runtime.hpp"
#include "vscale/errors.hpp"
#include "vscale/placement.hpp"

extern char** environ;

namespace vscale::detail {

namespace {

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

/// The memory cgroup's OOM kill counter (v1 or v2: placement's reader), -1 if unknown.
long oom_kills() { return oom_kill_count(machine()); }

int pidfd_open(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

/// Open file descriptors of this process.
long open_fds() {
  long n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
    --n;  // the directory's own fd
  }
  return n;
}

/// Tasks (threads) of every process of this real user: what RLIMIT_NPROC counts.
long user_tasks() {
  long n = 0;
  const uid_t uid = getuid();
  DIR* d = opendir("/proc");
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    if (!std::isdigit(static_cast<unsigned char>(e->d_name[0]))) continue;
    std::ifstream st(std::string("/proc/") + e->d_name + "/status");
    long threads = 0;
    bool mine = false;
    for (std::string line; std::getline(st, line);) {
      if (line.rfind("Uid:", 0) == 0) mine = std::strtoul(line.c_str() + 4, nullptr, 10) == uid;
      else if (line.rfind("Threads:", 0) == 0) threads = std::strtol(line.c_str() + 8, nullptr, 10);
    }
    if (mine) n += threads;
  }
  closedir(d);
  return n;
}

std::string plural(long n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// What one worker costs the master and the user, for the up-front check of addprocs.
constexpr long kFdsPerWorker = 4;     // socket, stdout and stderr pipes, pidfd
constexpr long kSpawnFds = 8;         // held for a moment while one worker is spawned
constexpr long kTasksPerWorker = 4;   // main, progress and socket threads, one executor; plus -t
constexpr long kBytesPerWorker = 2L << 20;  // an idle worker's own memory (measured ~1 MiB anon) with slack

/// Memory that more processes may still take: MemAvailable, capped by the cgroup's room.
std::optional<long> memory_room() {
  std::optional<long> room;
  std::ifstream mi("/proc/meminfo");
  for (std::string key; mi >> key;) {
    long kb = 0;
    mi >> kb;
    if (key == "MemAvailable:") {
      room = kb * 1024;
      break;
    }
    mi.ignore(64, '\n');
  }
  const auto& m = machine();
  if (m.memory_limit && !m.memory_cgroup_dirs.empty()) {
    if (auto used = cgroup_memory_usage(m.memory_cgroup_dirs.front(), m.memory_cgroup_v1)) {
      const long cg = static_cast<long>(*m.memory_limit) - static_cast<long>(*used);
      room = room ? std::min(*room, cg) : cg;
    }
  }
  return room;
}

}  // namespace

LocalLauncher::LocalLauncher(LauncherHost& host) : host_(host), cookie_(random_cookie()), oom_base_(oom_kills()) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  thread_ = std::thread([this] { loop(); });
}

void LocalLauncher::kick() {
  std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

LaunchResult LocalLauncher::launch(int n, const LaunchSpec& spec) {
  LaunchResult res;
  if (n <= 0) return res;
  const auto timeout = spec.timeout;
  Batch b{n, spec.exe, spec.cookie, {}, false};
  std::unique_lock lk(m_);
  check_room(n);  // refuse up front: nothing is started when n cannot all be
  pending_.push_back(&b);
  kick();
  cv_.wait(lk, [&] { return b.spawned; });
  auto settled = [&] {
    for (int id : b.ids) {
      auto& w = workers_[id];
      if (!w.joined && !w.exited && !w.refused && w.failure.empty()) return false;
    }
    return true;
  };
  if (!cv_.wait_for(lk, timeout, settled)) {
    for (int id : b.ids) {
      auto& w = workers_[id];
      if (!w.joined && !w.exited && w.failure.empty()) {
        w.failure = "did not join within " + std::to_string(timeout.count()) + " ms; killed";
        if (w.pid > 0) kill(w.pid, SIGKILL);
      }
    }
  }
  for (int id : b.ids) {
    auto& w = workers_[id];
    if (w.joined && !w.exited)
      res.joined.push_back(id);
    else
      res.failed.emplace_back(id, w.failure.empty() ? "exited before joining" : w.failure);
  }
  // The slot is marked under m_, as reap() does: the monitor thread may be reaping the same
  // worker now (we just killed it), and its reason must not be written twice at once.
  for (auto& [id, why] : res.failed) host_.segment().set_dead(id, why);
  lk.unlock();
  for (auto& [id, why] : res.failed) std::fprintf(stderr, "vscale: worker %d failed to start: %s\n", id, why.c_str());
  return res;
}

void LocalLauncher::check_room(int n) {
  const std::string ask = "vscale: cannot start " + plural(n, "more worker", "more workers") + ": ";
  // Ids: never reused, and each has its slot and rings in the control segment.
  const long max_procs = static_cast<long>(host_.segment().max_procs());
  const long ids_left = max_procs - (next_id_ - 1);
  if (n > ids_left)
    throw UsageError(ask + "this session has " + plural(std::max(0L, ids_left), "process id", "process ids") +
                     " left of its " + std::to_string(max_procs) + " (ids are never reused). " +
                     (next_id_ - 1L + n <= 65535
                          ? "Start the program with a larger VSCALE_MAX_PROCS (e.g. VSCALE_MAX_PROCS=" +
                                std::to_string(next_id_ - 1 + n) + ")"
                          : std::string("A session can have at most 65535 process ids (VSCALE_MAX_PROCS)")));
  // File descriptors of the master: each worker keeps kFdsPerWorker open here.
  rlimit fl{};
  if (getrlimit(RLIMIT_NOFILE, &fl) == 0 && fl.rlim_cur != RLIM_INFINITY) {
    const long need = open_fds() + kFdsPerWorker * n + kSpawnFds;
    if (need > static_cast<long>(fl.rlim_cur))
      throw Error(ask + "the master would need about " + std::to_string(need) + " open files (" +
                  std::to_string(kFdsPerWorker) + " per worker) and the limit is " + std::to_string(fl.rlim_cur) +
                  ". Raise it (ulimit -n " + std::to_string(need + 64) + ") or start fewer workers");
  }
  // Processes and threads: RLIMIT_NPROC (not enforced for root) and the cgroup's pids.max.
  const long tasks = (kTasksPerWorker + threads_) * n;
  rlimit pl{};
  if (getuid() != 0 && getrlimit(RLIMIT_NPROC, &pl) == 0 && pl.rlim_cur != RLIM_INFINITY) {
    const long have = user_tasks();
    if (have + tasks > static_cast<long>(pl.rlim_cur))
      throw Error(ask + "they need about " + std::to_string(tasks) + " processes and threads (" +
                  std::to_string(kTasksPerWorker + threads_) + " each with -t " + std::to_string(threads_) +
                  "), this user runs " + std::to_string(have) + " and the limit is " + std::to_string(pl.rlim_cur) +
                  ". Raise it (ulimit -u) or start fewer workers");
  }
  if (auto room = memory_room(); room && kBytesPerWorker * n > *room)
    throw Error(ask + "they need at least " + std::to_string((kBytesPerWorker * n) >> 20) + " MiB of memory (" +
                std::to_string(kBytesPerWorker >> 20) + " MiB each, idle) and " + std::to_string(std::max(0L, *room) >> 20) +
                " MiB are available (MemAvailable, and the cgroup's memory limit). Start fewer workers");
  if (auto room = cgroup_tasks_room(); room && tasks > *room)
    throw Error(ask + "they need about " + std::to_string(tasks) + " processes and threads (" +
                std::to_string(kTasksPerWorker + threads_) + " each) and this cgroup has room for " +
                std::to_string(std::max(0L, *room)) + " (pids.max). Raise the cgroup's pids limit or start fewer workers");
}

void LocalLauncher::spawn(Batch& b) {
  // Runs on the monitor thread (see the file comment about PR_SET_PDEATHSIG).
  // VSCALE_WORKER_EXE: the same program by its path, for a tool that follows exec (valgrind
  // --trace-children=yes) but cannot follow /proc/self/exe (under the tool, that is the tool).
  const char* exe_env = std::getenv("VSCALE_WORKER_EXE");
  std::string exe = !b.exe.empty() ? b.exe : exe_env && *exe_env ? std::string(exe_env) : std::string("/proc/self/exe");
  std::string cookie_env = "VSCALE_COOKIE=" + (b.cookie.empty() ? cookie_ : b.cookie);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "VSCALE_COOKIE=", 14) != 0) env_store.emplace_back(*e);
  env_store.push_back(cookie_env);
  std::vector<char*> envp;
  for (auto& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  const int max_procs = static_cast<int>(host_.segment().max_procs());
  for (int i = 0; i < b.n; ++i) {
    int id, threads;
    std::vector<int> cpus;
    {
      std::lock_guard lk(m_);
      id = next_id_++;
      threads = threads_;
      if (!cpu_plan_.empty()) {
        cpus = std::move(cpu_plan_.front());
        cpu_plan_.pop_front();
      }
    }
    Worker w;
    w.id = id;
    b.ids.push_back(id);
    if (id > max_procs) {
      w.failure = "this session has used all " + std::to_string(max_procs) +
                  " process ids (ids are never reused); start with a larger VSCALE_MAX_PROCS";
      std::lock_guard lk(m_);
      workers_[id] = std::move(w);
      continue;
    }
    host_.segment().set_starting(id);
    // The worker's fds: a socketpair, two pipes and a copy of the segment's fd, each of ours
    // moved above 10 so that no dup2 in the child overwrites a later source. Any failure
    // (EMFILE under a low ulimit -n, say) closes what was made and says why.
    int sv[2] = {-1, -1}, po[2] = {-1, -1}, pe[2] = {-1, -1}, seg_copy = -1;
    auto close_all = [&] {
      for (int* fd : {&sv[0], &sv[1], &po[0], &po[1], &pe[0], &pe[1], &seg_copy})
        if (*fd >= 0) close(*fd), *fd = -1;
    };
    auto high = [](int& fd) {
      int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
      close(fd);
      fd = h;
      return h >= 0;
    };
    const char* step = nullptr;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) step = "a socket pair";
    else if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) step = "its output pipes";
    else if (!high(sv[1]) || !high(po[1]) || !high(pe[1]) ||
             (seg_copy = fcntl(host_.segment().fd(), F_DUPFD_CLOEXEC, 10)) < 0)
      step = "copies of its file descriptors";
    if (step) {
      const int err = errno;
      close_all();
      w.failure = std::string("cannot create ") + step + ": " + std::strerror(err);
      if (err == EMFILE || err == ENFILE) {
        rlimit fl{};
        getrlimit(RLIMIT_NOFILE, &fl);
        w.failure += " (the master has " + std::to_string(open_fds()) + " open files; ulimit -n is " +
                     (fl.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(fl.rlim_cur)) + ")";
      }
      std::lock_guard lk(m_);
      workers_[id] = std::move(w);
      continue;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    posix_spawn_file_actions_adddup2(&fa, seg_copy, 4);
    posix_spawn_file_actions_addclosefrom_np(&fa, 5);
    // id:socket fd:segment fd:master pid:threads:cpus ("-" when not pinned)
    std::string cpu_list;
    for (int c : cpus) cpu_list += (cpu_list.empty() ? "" : ",") + std::to_string(c);
    std::string flag = std::string(kWorkerFlag) + std::to_string(id) + ":3:4:" + std::to_string(getpid()) + ":" +
                       std::to_string(threads) + ":" + (cpu_list.empty() ? std::string("-") : cpu_list);
    std::string argv0 = program_invocation_name;
    char* argv[] = {argv0.data(), flag.data(), nullptr};
    pid_t pid = -1;
    int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    for (int* fd : {&seg_copy, &sv[1], &po[1], &pe[1]}) close(*fd), *fd = -1;
    if (rc != 0) {
      close_all();
      w.failure = "cannot start " + exe + ": " + std::strerror(rc);
      std::lock_guard lk(m_);
      workers_[id] = std::move(w);
      continue;
    }
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    w.pid = pid;
    w.sock = sv[0];
    w.out = po[0];
    w.err = pe[0];
    w.pidfd = pidfd_open(pid);
    host_.segment().set_starting(id, pid);
    std::lock_guard lk(m_);
    workers_[id] = std::move(w);
  }
}

namespace {
// A worker is /proc/self/exe started again. Under valgrind that is the tool's own binary, not
// the program (valgrind hides this from readlink, but its preload library shows): say so
// instead of leaving "did not speak" a riddle.
std::string exe_hint() {
  const char* pre = std::getenv("LD_PRELOAD");
  if (!pre || !std::strstr(pre, "vgpreload")) return {};
  return " (this program runs under valgrind, and a worker started from /proc/self/exe is valgrind's own "
         "binary, not this program: run the tool on the program with -p 0, or with --trace-children=yes and "
         "VSCALE_WORKER_EXE=<the program's path>)";
}
}  // namespace

void LocalLauncher::on_hello(Worker& w) {
  Hello h;
  Verdict v{};
  if (!read_all(w.sock, &h, sizeof h) || std::memcmp(h.magic, kHelloMagic, sizeof h.magic) != 0) {
    w.failure = "refused: did not speak the vscale join protocol" + exe_hint();
    w.refused = true;
  } else if (h.id != w.id) {
    w.failure = "refused: claimed to be worker " + std::to_string(h.id);
    w.refused = true;
  } else if (std::string(h.cookie, strnlen(h.cookie, sizeof h.cookie)) != cookie_) {
    w.failure = "refused: wrong cookie (it was not started by this master)";
    w.refused = true;
  } else if (std::string(h.build_id, strnlen(h.build_id, sizeof h.build_id)) != build_id()) {
    w.failure = "refused: runs a different binary (build id " +
                std::string(h.build_id, strnlen(h.build_id, sizeof h.build_id)) + ", master has " + build_id() + ")";
    w.refused = true;
  }
  v.ok = w.refused ? 0 : 1;
  copy_str(v.reason, sizeof v.reason, w.failure);
  (void)write_all(w.sock, &v, sizeof v);
  if (w.refused)
    std::fprintf(stderr, "vscale: worker %d (pid %d) %s\n", w.id, static_cast<int>(w.pid), w.failure.c_str());
  else
    w.verified = true;  // a member once its runtime runs (on_ready)
}

void LocalLauncher::on_ready(Worker& w) {
  Ready r{};
  if (!read_all(w.sock, &r, sizeof r)) {
    // It died before its runtime ran; its pidfd says how, and reap() records it.
    close(w.sock);
    w.sock = -1;
    return;
  }
  if (!r.ok) {
    w.failure = "could not start: " + std::string(r.reason, strnlen(r.reason, sizeof r.reason));
    return;  // it exits now; reap() keeps this reason
  }
  w.joined = true;
  host_.segment().set_alive(w.id, static_cast<int>(w.pid));
}

void LocalLauncher::flush_line(Worker& w, bool err_stream, const std::string& line) {
  std::string s = "      From worker " + std::to_string(w.id) + ":\t" + line + "\n";
  (void)write_all(err_stream ? 2 : 1, s.data(), s.size());
}

bool LocalLauncher::on_output(Worker& w, bool err_stream) {
  int& fd = err_stream ? w.err : w.out;
  std::string& buf = err_stream ? w.err_buf : w.out_buf;
  char tmp[65536];
  ssize_t k = ::read(fd, tmp, sizeof tmp);  // non-blocking
  if (k <= 0) {
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) return false;
    if (!buf.empty()) flush_line(w, err_stream, buf);
    buf.clear();
    close(fd);
    fd = -1;
    return false;
  }
  buf.append(tmp, static_cast<std::size_t>(k));
  std::size_t start = 0, nl;
  while ((nl = buf.find('\n', start)) != std::string::npos) {
    flush_line(w, err_stream, buf.substr(start, nl - start));
    start = nl + 1;
  }
  buf.erase(0, start);
  return true;
}

void LocalLauncher::reap(Worker& w) {
  int status = 0;
  if (waitpid(w.pid, &status, 0) != w.pid) status = 0;
  // Drain what it printed last, so its final words come before the news of its death.
  // (Non-blocking: a grandchild may still hold the pipe open.)
  for (int* fd : {&w.out, &w.err}) {
    while (*fd >= 0 && on_output(w, fd == &w.err)) {
    }
  }
  w.exited = true;
  w.status = status;
  std::string why;
  if (WIFEXITED(status)) {
    why = "exited with code " + std::to_string(WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    why = "killed by " + signal_name(WTERMSIG(status));
    long oom = oom_kills();
    if (WTERMSIG(status) == SIGKILL && oom >= 0 && oom > oom_base_) {
      why += " (out of memory)";
      oom_base_ = oom;
    }
  } else {
    why = "ended";
  }
  if (w.removing) why = "was removed by rmprocs";
  if (!w.joined && w.failure.empty()) w.failure = why;
  const long pending = host_.pending_to(w.id);  // before they are failed below
  host_.segment().set_dead(w.id, why, w.removing);  // every process then fails what it waits for from it
  if (w.joined && !w.removing && pending >= 0)
    std::fprintf(stderr, "vscale: worker %d (pid %d) died: %s; %ld pending call%s failed\n", w.id,
                 static_cast<int>(w.pid), why.c_str(), pending, pending == 1 ? "" : "s");
  for (int* fd : {&w.sock, &w.pidfd}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void LocalLauncher::loop() {
  std::vector<pollfd> fds;
  struct Src {
    int id;
    int what;  // 0 sock, 1 out, 2 err, 3 pidfd
  };
  std::vector<Src> src;
  while (true) {
    fds.clear();
    src.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    src.push_back({0, -1});
    {
      std::unique_lock lk(m_);
      if (quit_) break;
      std::vector<Batch*> todo;
      todo.swap(pending_);
      if (!todo.empty()) {
        lk.unlock();
        for (Batch* b : todo) spawn(*b);
        lk.lock();
        for (Batch* b : todo) b->spawned = true;
        cv_.notify_all();
      }
      for (auto& [id, w] : workers_) {
        if (w.exited) continue;
        if (w.sock >= 0) fds.push_back({w.sock, POLLIN, 0}), src.push_back({id, 0});
        if (w.out >= 0) fds.push_back({w.out, POLLIN, 0}), src.push_back({id, 1});
        if (w.err >= 0) fds.push_back({w.err, POLLIN, 0}), src.push_back({id, 2});
        if (w.pidfd >= 0) fds.push_back({w.pidfd, POLLIN, 0}), src.push_back({id, 3});
      }
    }
    int k = ::poll(fds.data(), fds.size(), 200);
    if (k < 0 && errno != EINTR) break;
    if (fds[0].revents) {
      std::uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof v);
    }
    std::lock_guard lk(m_);
    bool changed = false;
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      auto it = workers_.find(src[i].id);
      if (it == workers_.end() || it->second.exited) continue;
      Worker& w = it->second;
      switch (src[i].what) {
        case 0:
          // A worker already given up on (start timeout) is not heard again: it was reported once.
          if (!w.verified && !w.refused && w.failure.empty() && (fds[i].revents & POLLIN)) {
            on_hello(w);
            changed = true;
          } else if (w.verified && !w.joined && w.failure.empty() && (fds[i].revents & POLLIN)) {
            on_ready(w);
            changed = true;
            if (w.sock < 0 && w.pidfd < 0) reap(w);
          } else if (fds[i].revents & (POLLHUP | POLLERR)) {
            close(w.sock);
            w.sock = -1;  // the process is ending; its pidfd (or waitpid below) says how
            if (w.pidfd < 0) {
              reap(w);
              changed = true;
            }
          } else if (fds[i].revents & POLLIN) {
            char c;
            if (::read(w.sock, &c, 1) <= 0) {
              close(w.sock);
              w.sock = -1;
              if (w.pidfd < 0) {
                reap(w);
                changed = true;
              }
            }
          }
          break;
        case 1:
        case 2:
          on_output(w, src[i].what == 2);
          break;
        case 3:
          reap(w);
          changed = true;
          break;
      }
    }
    if (changed) cv_.notify_all();
  }
}

void LocalLauncher::push_fd(int id, RefId key, int fd) {
  std::lock_guard lk(m_);  // also keeps the socket open while we write
  auto it = workers_.find(id);
  if (it == workers_.end() || !it->second.joined || it->second.exited || it->second.sock < 0)
    throw ProcessExitedException(id, host_.segment().dead_reason(id));
  if (!send_fd(it->second.sock, key, fd))
    throw Error("vscale: could not pass a file descriptor to worker " + std::to_string(id) + ": " + std::strerror(errno));
}

void LocalLauncher::remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
  std::vector<int> targets;
  {
    std::lock_guard lk(m_);
    // An id that was never given out is a mistake in the program; one already gone is not
    // (removing twice, or a worker that died first, is harmless).
    for (int id : ids)
      if (id < 2 || id >= next_id_)
        throw UsageError("vscale: rmprocs(" + std::to_string(id) + "): there is no worker " + std::to_string(id) +
                         (next_id_ > 2 ? " (the workers' ids so far are 2.." + std::to_string(next_id_ - 1) + ")"
                                       : " (no worker was ever started)"));
    for (int id : ids) {
      auto it = workers_.find(id);
      if (it == workers_.end() || it->second.exited || !it->second.joined) continue;
      it->second.removing = true;
      targets.push_back(id);
    }
  }
  for (int id : targets) {
    try {
      host_.send_exit(id);
    } catch (const Error&) {
    }
  }
  auto gone = [&] {
    for (int id : targets)
      if (!workers_[id].exited) return false;
    return true;
  };
  std::unique_lock lk(m_);
  if (!cv_.wait_for(lk, timeout / 2, gone)) {
    for (int id : targets)
      if (!workers_[id].exited) kill(workers_[id].pid, SIGTERM);
    if (!cv_.wait_for(lk, timeout / 2, gone)) {
      for (int id : targets)
        if (!workers_[id].exited) kill(workers_[id].pid, SIGKILL);
      cv_.wait(lk, gone);
    }
  }
  for (int id : targets) workers_.erase(id);
}

void LocalLauncher::shutdown() {
  if (!thread_.joinable()) return;
  std::vector<int> ids;
  {
    std::lock_guard lk(m_);
    for (auto& [id, w] : workers_)
      if (w.joined && !w.exited) ids.push_back(id);
  }
  remove(ids, std::chrono::seconds(4));
  {
    std::lock_guard lk(m_);
    for (auto& [id, w] : workers_)
      if (!w.exited && w.pid > 0) {
        kill(w.pid, SIGKILL);
        waitpid(w.pid, nullptr, 0);
      }
    quit_ = true;
  }
  kick();
  thread_.join();
  for (auto& [id, w] : workers_)
    for (int fd : {w.sock, w.out, w.err, w.pidfd})
      if (fd >= 0) close(fd);
  workers_.clear();
  close(wake_fd_);
}

}  // namespace vscale::detail
