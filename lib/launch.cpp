// Starting, watching and stopping processes: Session, addprocs, rmprocs, the join handshake,
// output forwarding ("From worker N:"), and how a worker lives and dies.
//
// A worker is this very program re-executed (posix_spawn of /proc/self/exe) with a hidden
// `--vscale-worker=ID:SOCK:SEG:MASTERPID` flag. It inherits a socketpair end (handshake and
// liveness: EOF means the master is gone) and the control segment's memfd; the cookie comes
// in the environment. Spawning happens on the master's monitor thread, because
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
#include <elf.h>
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "vscale/cluster.hpp"
#include "vscale/placement.hpp"
#include "vscale/detail/env.hpp"
#include "vscale/detail/fd_passing.hpp"
#include "vscale/detail/runtime.hpp"

extern char** environ;

namespace vscale {
namespace detail {

namespace {

constexpr char kWorkerFlag[] = "--vscale-worker=";
constexpr char kHelloMagic[8] = {'v', 's', 'c', 'h', 'e', 'l', 'o', '1'};

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

std::string hex(const unsigned char* p, std::size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

/// The ELF build id of the main program (or a hash of the file when it has none).
std::string build_id() {
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
    std::uint64_t h = 1469598103934665603ull;
    char buf[65536];
    while (f.read(buf, sizeof buf) || f.gcount() > 0) {
      for (std::streamsize i = 0; i < f.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buf[i])) * 1099511628211ull;
    }
    return "fnv-" + std::to_string(h);
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
    // master with SIGPIPE (found by the start-timeout test); other fds are plain writes.
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

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

/// Closes /proc/<pid>/fd, /proc/<pid>/mem and ptrace to other processes of the same user, so
/// that none can open the control segment and forge a death or a message (the cookie guards
/// the join only). VSCALE_DEBUGGABLE=1 keeps the process debuggable (gdb -p, perf, core
/// dumps). Sanitizer builds stay dumpable: LeakSanitizer ptraces its own process at exit.
void make_private() {
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  if (env_long("VSCALE_DEBUGGABLE", 0, 0, 1) == 0) prctl(PR_SET_DUMPABLE, 0);
#endif
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

/// Room for more tasks in this process's cgroup (pids.max - pids.current), if it has a limit.
std::optional<long> cgroup_tasks_room() {
  std::ifstream cg("/proc/self/cgroup");
  for (std::string line; std::getline(cg, line);) {
    // v2 "0::/path", or v1 "N:pids:/path"
    std::string dir;
    if (line.rfind("0::", 0) == 0) dir = "/sys/fs/cgroup" + line.substr(3);
    else if (auto c = line.find(":pids:"); c != std::string::npos) dir = "/sys/fs/cgroup/pids" + line.substr(c + 6);
    else continue;
    std::ifstream mx(dir + "/pids.max"), cur(dir + "/pids.current");
    std::string max_s;
    long current = 0;
    if (!(mx >> max_s) || max_s == "max" || !(cur >> current)) continue;
    return std::strtol(max_s.c_str(), nullptr, 10) - current;
  }
  return std::nullopt;
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
    std::ifstream cur(std::filesystem::path(m.memory_cgroup_dirs.front()) /
                      (m.memory_cgroup_v1 ? "memory.usage_in_bytes" : "memory.current"));
    long used = 0;
    if (cur >> used) {
      const long cg = static_cast<long>(*m.memory_limit) - used;
      room = room ? std::min(*room, cg) : cg;
    }
  }
  return room;
}

}  // namespace

// ================================================================= master: the Launcher

class Launcher {
 public:
  explicit Launcher(Runtime& rt) : rt_(rt), cookie_(random_cookie()), oom_base_(oom_kills()) {
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    thread_ = std::thread([this] { loop(); });
  }
  ~Launcher() { shutdown(); }

  LaunchResult launch(int n, const std::string& exe, const std::string& cookie, std::chrono::milliseconds timeout);
  /// Threads per worker, and the CPUs the next workers are pinned to (in start order; workers
  /// started after the list is used up are not pinned).
  void set_plan(int threads, std::vector<std::vector<int>> cpus) {
    std::lock_guard lk(m_);
    threads_ = threads;
    cpu_plan_.assign(cpus.begin(), cpus.end());
  }
  void push_fd(int id, FdKey key, int fd);
  void remove(const std::vector<int>& ids, std::chrono::milliseconds timeout);
  void shutdown();

 private:
  struct Worker {
    int id = 0;
    pid_t pid = -1;
    int sock = -1, out = -1, err = -1, pidfd = -1;
    std::string out_buf, err_buf;
    bool verified = false;  // passed the cookie and build-id check; joined once it is Ready
    bool joined = false, refused = false, exited = false, removing = false;
    std::string failure;  // why it never joined
    int status = 0;
  };
  struct Batch {
    int n;
    std::string exe, cookie;
    std::vector<int> ids;
    bool spawned = false;
  };

  void loop();
  void check_room(int n);  // with m_ held
  void spawn(Batch& b);
  void on_hello(Worker& w);
  void on_ready(Worker& w);
  bool on_output(Worker& w, bool err_stream);  // false when nothing was there
  void flush_line(Worker& w, bool err_stream, const std::string& line);
  void reap(Worker& w);
  // Publishes a worker's death in its slot: the reason first, then the state, once (the
  // first reason stays: readers in other processes may be reading it). With m_ held.
  void mark_dead(int id, const std::string& why) {
    auto& slot = rt_.segment().slot(id);
    if (slot.state.load() == std::uint32_t(SlotState::Dead)) return;
    copy_str(slot.reason, sizeof slot.reason, why);
    slot.state.store(std::uint32_t(SlotState::Dead));
  }
  void kick() {
    std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }

  Runtime& rt_;
  std::string cookie_;
  long oom_base_;
  int wake_fd_ = -1;
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  std::map<int, Worker> workers_;  // guarded by m_
  std::vector<Batch*> pending_;    // guarded by m_
  int next_id_ = 2;                // guarded by m_
  int threads_ = 1;                 // guarded by m_
  std::deque<std::vector<int>> cpu_plan_;  // guarded by m_
  bool quit_ = false;
};

LaunchResult Launcher::launch(int n, const std::string& exe, const std::string& cookie,
                              std::chrono::milliseconds timeout) {
  LaunchResult res;
  if (n <= 0) return res;
  Batch b{n, exe, cookie, {}, false};
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
  for (auto& [id, why] : res.failed) mark_dead(id, why);
  lk.unlock();
  for (auto& [id, why] : res.failed) std::fprintf(stderr, "vscale: worker %d failed to start: %s\n", id, why.c_str());
  if (!res.failed.empty()) {
    rt_.segment().header().epoch.fetch_add(1);
  }
  return res;
}

void Launcher::check_room(int n) {
  const std::string ask = "vscale: cannot start " + plural(n, "more worker", "more workers") + ": ";
  // Ids: never reused, and each has its slot and rings in the control segment.
  const long max_procs = static_cast<long>(rt_.segment().max_procs());
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

void Launcher::spawn(Batch& b) {
  // Runs on the monitor thread (see the file comment about PR_SET_PDEATHSIG).
  std::string exe = b.exe.empty() ? std::string("/proc/self/exe") : b.exe;
  std::string cookie_env = "VSCALE_COOKIE=" + (b.cookie.empty() ? cookie_ : b.cookie);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "VSCALE_COOKIE=", 14) != 0) env_store.emplace_back(*e);
  env_store.push_back(cookie_env);
  std::vector<char*> envp;
  for (auto& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  const int max_procs = static_cast<int>(rt_.segment().max_procs());
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
    auto& slot = rt_.segment().slot(id);
    slot.state.store(std::uint32_t(SlotState::Starting));
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
             (seg_copy = fcntl(rt_.segment().fd(), F_DUPFD_CLOEXEC, 10)) < 0)
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
    slot.os_pid.store(pid);
    std::lock_guard lk(m_);
    workers_[id] = std::move(w);
  }
}

void Launcher::on_hello(Worker& w) {
  Hello h;
  Verdict v{};
  if (!read_all(w.sock, &h, sizeof h) || std::memcmp(h.magic, kHelloMagic, sizeof h.magic) != 0) {
    w.failure = "refused: did not speak the vscale join protocol";
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

void Launcher::on_ready(Worker& w) {
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
  rt_.segment().slot(w.id).state.store(std::uint32_t(SlotState::Alive));
  w.joined = true;
  rt_.segment().header().epoch.fetch_add(1);
}

void Launcher::flush_line(Worker& w, bool err_stream, const std::string& line) {
  std::string s = "      From worker " + std::to_string(w.id) + ":\t" + line + "\n";
  (void)write_all(err_stream ? 2 : 1, s.data(), s.size());
}

bool Launcher::on_output(Worker& w, bool err_stream) {
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

void Launcher::reap(Worker& w) {
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
  const std::size_t pending = rt_.pending_requests_to(w.id);  // before they are failed below
  mark_dead(w.id, why);
  rt_.segment().header().epoch.fetch_add(1);
  // Wake every process so that each fails what it was waiting for from this one.
  const int n = static_cast<int>(rt_.segment().max_procs());
  for (int id = 1; id <= n; ++id) {
    auto& s = rt_.segment().slot(id);
    if (s.state.load() == std::uint32_t(SlotState::Unused)) break;
    ring_doorbell(s.doorbell);
  }
  if (w.joined && !w.removing)
    std::fprintf(stderr, "vscale: worker %d (pid %d) died: %s; %zu pending call%s failed\n", w.id,
                 static_cast<int>(w.pid), why.c_str(), pending, pending == 1 ? "" : "s");
  for (int* fd : {&w.sock, &w.pidfd}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Launcher::loop() {
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

void Launcher::push_fd(int id, FdKey key, int fd) {
  std::lock_guard lk(m_);  // also keeps the socket open while we write
  auto it = workers_.find(id);
  if (it == workers_.end() || !it->second.joined || it->second.exited || it->second.sock < 0)
    throw ProcessExitedException(id, rt_.dead_reason(id));
  char ctrl[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{&key, sizeof key};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t k;
  do {
    k = sendmsg(it->second.sock, &msg, MSG_NOSIGNAL);
  } while (k < 0 && errno == EINTR);
  if (k != static_cast<ssize_t>(sizeof key))
    throw Error("vscale: could not pass a file descriptor to worker " + std::to_string(id) + ": " + std::strerror(errno));
}

void Launcher::remove(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
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
      rt_.send(id, kExit, nullptr, 0, nullptr, 0, false);
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

void Launcher::shutdown() {
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

// ================================================================= the session

namespace {

struct Config {
  std::uint32_t max_procs;
  std::uint64_t ring_bytes;
  std::uint64_t bulk_bytes;
};

std::chrono::milliseconds default_start_timeout() {
  return std::chrono::milliseconds(env_long("VSCALE_START_TIMEOUT_MS", 60'000, 1, 86'400'000));
}

Config config_from_env() {
  Config c;
  // Ids are never reused, and each id has its slot, rings and bulk area in the (sparse)
  // control segment: this is how many processes a session can ever start.
  c.max_procs = static_cast<std::uint32_t>(env_long("VSCALE_MAX_PROCS", std::max(256, 8 * usable_cpus()), 1, 65535));
  // Any ring size works: a message whose record would not fit a quarter of the ring goes
  // through the bulk area (Runtime::try_emit), and a bulk descriptor always fits.
  c.ring_bytes = std::uint64_t(env_long("VSCALE_RING_KB", 64, 1, 1 << 20)) << 10;
  c.bulk_bytes = std::uint64_t(env_long("VSCALE_BULK_MB", 1024, 1, 1 << 20)) << 20;
  return c;
}

std::mutex g_fd_m;  // fds the master pushed to this worker, not yet taken
std::condition_variable g_fd_cv;
std::vector<std::pair<FdKey, int>> g_fds;

std::unique_ptr<Runtime> g_runtime;
std::unique_ptr<Launcher> g_launcher;
std::mutex g_session_m;
Placement g_placement;  // what the master chose at start (guarded by g_session_m)

void pin_self(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus)
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  if (CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof set, &set) != 0)
    std::fprintf(stderr, "vscale: cannot pin the master to CPUs %s: %s\n", format_cpu_list(cpus).c_str(),
                 std::strerror(errno));
}

void start_socket_thread(int sock);

void flush_output() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
}

// The master's exit handler: a program that calls exit() (from main with the Session still
// alive, from a call, from any thread) stops its workers first, politely. The runtime is
// left allocated: other threads may still be waiting in it while the process ends.
void master_on_exit(int, void*) {
  std::unique_lock lk(g_session_m, std::try_to_lock);
  if (!lk) return;  // a Session is being built or destroyed right now: that thread finishes it
  if (g_launcher) g_launcher->shutdown();
  if (g_runtime) g_runtime->stop();
  (void)g_runtime.release();
}

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
  try {
    auto rt = std::make_unique<Runtime>(id, false);
    rt->master_os_pid = mpid;
    rt->segment().attach(seg);
    rt->start(threads);
    g_runtime = std::move(rt);
    start_socket_thread(sock);
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
  Runtime& rt = *g_runtime;
  rt.wait_until([&] { return rt.exit_requested().load(); });
  flush_output();
  _exit(0);
}

// The master holds the other end of `sock`: it sends fds on it (push_fd), and EOF means it
// is gone, and so must we be.
void start_socket_thread(int sock) {
  std::thread([sock] {
    while (true) {
      FdKey key;
      char ctrl[CMSG_SPACE(sizeof(int))] = {};
      iovec iov{&key, sizeof key};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      ssize_t k = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) {
        std::fflush(nullptr);
        _exit(0);
      }
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      if (k == static_cast<ssize_t>(sizeof key) && c && c->cmsg_type == SCM_RIGHTS) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
        std::lock_guard lk(g_fd_m);
        g_fds.emplace_back(key, fd);
        g_fd_cv.notify_all();
      }
    }
  }).detach();
}

void start_master(const SessionOptions& o, const char* argv0) {
  std::lock_guard lk(g_session_m);
  if (g_runtime) throw UsageError("vscale: only one vscale::Session may exist in a process");
  (void)argv0;
  make_private();
  // Threads beyond a multiple of the CPUs only cost memory and switches (and TBB fails at
  // shutdown past 65,536): refuse them with the bound instead.
  const int max_threads = std::max(64, 16 * usable_cpus());
  if (o.threads > max_threads)
    throw UsageError("vscale: -t " + std::to_string(o.threads) + " (or --threads, VSCALE_THREADS) asks for more threads per process than " +
                     "this machine can use: at most " + std::to_string(max_threads) + " (16 per usable CPU, " +
                     std::to_string(usable_cpus()) + " usable here, and at least 64)");
  const Placement plan = plan_placement(machine(), o.procs, o.threads, o.bind);
  for (const auto& w : plan.warnings) std::fprintf(stderr, "vscale: %s\n", w.c_str());
  if (!plan.master_cpus.empty()) pin_self(plan.master_cpus);
  Config c = config_from_env();
  const auto timeout = default_start_timeout();
  static const bool exit_handler = [] { return on_exit(master_on_exit, nullptr) == 0; }();
  (void)exit_handler;
  try {
    auto rt = std::make_unique<Runtime>(1, true);
    rt->segment().create(c.max_procs, c.ring_bytes, c.bulk_bytes);
    rt->segment().slot(1).os_pid.store(getpid());
    rt->segment().slot(1).state.store(std::uint32_t(SlotState::Alive));
    rt->start(plan.threads);
    g_launcher = std::make_unique<Launcher>(*rt);
    g_launcher->set_plan(plan.threads, plan.bind ? plan.worker_cpus : std::vector<std::vector<int>>{});
    rt->launcher = g_launcher.get();
    g_runtime = std::move(rt);
    g_placement = plan;
    if (plan.workers > 0) {
      auto res = g_launcher->launch(plan.workers, {}, {}, timeout);
      (void)res;  // failures were reported on stderr; the session goes on with those that joined
    }
  } catch (...) {
    // Nothing of a failed start stays behind: a later Session may try again.
    if (g_launcher) g_launcher->shutdown();
    if (g_runtime) g_runtime->stop();
    g_launcher.reset();
    g_runtime.reset();
    try {
      throw;
    } catch (const std::system_error& e) {
      // std::thread could not start one of the master's threads.
      throw Error(std::string("vscale: the master cannot start its threads: ") + e.what() +
                  (e.code() == std::errc::resource_unavailable_try_again
                       ? " (the limit of processes and threads, ulimit -u, is reached: raise it)"
                       : ""));
    }
  }
}

void stop_master() {
  std::lock_guard lk(g_session_m);
  if (g_launcher) g_launcher->shutdown();
  if (g_runtime) g_runtime->stop();
  g_launcher.reset();
  g_runtime.reset();
}

Launcher& launcher_for(const char* what) {
  Runtime& rt = Runtime::get(what);
  if (!rt.master() || !rt.launcher)
    throw UsageError(std::string("vscale: ") + what + " can only be called on the master (process 1); it was called on process " +
                     std::to_string(rt.self()));
  return *rt.launcher;
}

}  // namespace

void push_fd(int id, FdKey key, int fd) { launcher_for("passing a file descriptor").push_fd(id, key, fd); }

int take_pushed_fd(FdKey key, std::chrono::milliseconds timeout) {
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

LaunchResult launch(int n, const std::string& exe, const std::string& cookie, std::chrono::milliseconds timeout) {
  return launcher_for("addprocs").launch(n, exe, cookie, timeout.count() > 0 ? timeout : default_start_timeout());
}

}  // namespace detail

// ================================================================= public API

int usable_cpus() { return machine().usable_cpus; }

int nthreads() { return detail::Runtime::get("nthreads").threads(); }

std::string describe() {
  std::string out = describe_machine(machine());
  Placement plan;
  {
    std::lock_guard lk(detail::g_session_m);
    plan = detail::g_placement;
  }
  out += "placement: " + plan.how + "\n";
  for (const auto& w : plan.warnings) out += "  warning: " + w + "\n";
  auto* rt = detail::Runtime::current();
  if (!rt) return out + "  (no session running)\n";
  for (int id : rt->alive_ids()) {
    const int pid = static_cast<int>(rt->segment().slot(id).os_pid.load());
    std::string cpus = "?";
    std::ifstream st("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(st, line);)
      if (line.rfind("Cpus_allowed_list:", 0) == 0) {
        cpus = line.substr(line.find_first_not_of(" \t", 18));
        break;
      }
    // Workers not pinned keep the master's mask; the master is pinned only by the plan.
    const bool pinned = id == 1 ? !plan.master_cpus.empty() : (cpus != "?" && parse_cpu_list(cpus) != machine().affinity);
    out += "  process " + std::to_string(id) + (id == 1 ? " (master)" : "") + ", pid " + std::to_string(pid) + ": " +
           std::to_string(rt->threads()) + (rt->threads() == 1 ? " thread" : " threads") + ", cpus " + cpus +
           (pinned ? " (pinned)" : " (not pinned)") + "\n";
  }
  return out;
}

SessionOptions parse_options(int& argc, char** argv) {
  SessionOptions o;
  bool procs_given = false, threads_given = false;
  auto parse_count = [&](const std::string& v, const std::string& flag, bool threads) {
    if (v == "auto") return -1;
    char* end;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || n < 0 || (threads && n == 0) || n > 1'000'000)
      throw UsageError("vscale: " + flag + " expects " + (threads ? "a number of threads (1 or more)" : "a number of workers") +
                       " or `auto`, got `" + v + "`");
    return static_cast<int>(n);
  };
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    // -p N, --procs N, --procs=N, -pN; the same for -t/--threads.
    auto match = [&](const char* s, const char* l, std::string& val, int& consumed) {
      const std::string lo = std::string(l) + "=";
      if (a == s || a == l) {
        if (i + 1 >= argc)
          throw UsageError("vscale: " + a + " needs a value: " + (a == "-t" || a == "--threads" ? "a number of threads" : "a number of workers") + " or `auto`");
        val = argv[i + 1];
        consumed = 2;
      } else if (a.rfind(lo, 0) == 0) {
        val = a.substr(lo.size());
        consumed = 1;
      } else if (a.size() > 2 && a.rfind(s, 0) == 0 && (std::isdigit(static_cast<unsigned char>(a[2])) || a.substr(2) == "auto")) {
        val = a.substr(2);
        consumed = 1;
      }
      return consumed > 0;
    };
    std::string val;
    int consumed = 0;
    if (match("-p", "--procs", val, consumed)) {
      o.procs = parse_count(val, a.rfind("--", 0) == 0 ? "--procs" : "-p", false);
      procs_given = true;
    } else if (match("-t", "--threads", val, consumed)) {
      o.threads = parse_count(val, a.rfind("--", 0) == 0 ? "--threads" : "-t", true);
      threads_given = true;
    } else if (a == "--bind") {
      o.bind = 1;
      consumed = 1;
    } else if (a == "--bind=none") {
      o.bind = 0;
      consumed = 1;
    } else if (a.rfind("--bind=", 0) == 0) {
      throw UsageError("vscale: --bind takes no value, or `--bind=none` to turn binding off; got `" + a + "`");
    } else if (a == "--vscale-info") {
      o.info = true;
      consumed = 1;
    }
    if (consumed) {
      i += consumed - 1;
      continue;
    }
    argv[out++] = argv[i];
  }
  if (argc > 0) {
    argv[out] = nullptr;
    argc = out;
  }
  // The variables are checked even when a flag overrides them: a typo is never silent.
  if (const char* e = std::getenv("VSCALE_PROCS"); e && *e) {
    const int v = parse_count(e, "VSCALE_PROCS", false);
    if (!procs_given) o.procs = v;
  }
  if (const char* e = std::getenv("VSCALE_THREADS"); e && *e) {
    const int v = parse_count(e, "VSCALE_THREADS", true);
    if (!threads_given) o.threads = v;
  }
  return o;
}

Session::Session(int& argc, char** argv) {
  if (argc >= 2 && std::strncmp(argv[1], detail::kWorkerFlag, sizeof detail::kWorkerFlag - 1) == 0)
    detail::worker_main(argv[1] + sizeof detail::kWorkerFlag - 1);
  // Started from a command line, a bad flag or variable, or a limit that stops the start, ends
  // the program as any command-line tool does: the message and exit status 2 (1 for a limit
  // of the machine), not an uncaught exception and a core dump. The other constructor throws.
  try {
    const SessionOptions o = parse_options(argc, argv);
    detail::start_master(o, argc > 0 ? argv[0] : nullptr);
    if (o.info) std::fputs(describe().c_str(), stdout);
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", e.what());
    std::exit(dynamic_cast<const UsageError*>(&e) ? 2 : 1);
  }
}

Session::Session(SessionOptions options, const char* argv0) {
  detail::start_master(options, argv0);
  if (options.info) std::fputs(describe().c_str(), stdout);
}

Session::~Session() { detail::stop_master(); }

int myid() { return detail::Runtime::get("myid").self(); }
int nprocs() { return static_cast<int>(detail::Runtime::get("nprocs").alive_ids().size()); }
int nworkers() { return nprocs() - 1; }
std::vector<int> procs() { return detail::Runtime::get("procs").alive_ids(); }
std::vector<int> workers() {
  auto ids = procs();
  if (ids.size() <= 1) return {1};
  ids.erase(ids.begin());
  return ids;
}

std::vector<int> addprocs(int n) { return addprocs(n, std::chrono::milliseconds(0)); }

std::vector<int> addprocs(int n, std::chrono::milliseconds start_timeout) {
  if (n < 0) throw UsageError("vscale: addprocs(" + std::to_string(n) + "): the count must not be negative");
  return detail::launch(n, {}, {}, start_timeout).joined;
}

void rmprocs(const std::vector<int>& ids, std::chrono::milliseconds timeout) {
  auto& l = detail::launcher_for("rmprocs");
  for (int id : ids)
    if (id == 1) throw UsageError("vscale: rmprocs cannot remove the master (process 1)");
  l.remove(ids, timeout);
}

}  // namespace vscale
