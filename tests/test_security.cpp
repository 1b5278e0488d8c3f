// Security properties (DESIGN.md, "Reliability and security bar"):
//   - no TCP or UDP port (nor raw socket) is ever opened by any process of the job: every
//     socket is an unnamed AF_UNIX socket (the socketpairs between master and workers);
//   - shared memory is memfd only (nothing under /dev/shm, nothing another user could open by
//     name), and files vscale creates are 0600;
//   - a process that cannot show the cookie, or runs another binary, is refused and logged;
//   - workers inherit no stray file descriptors and no cookie in their environment.
// Each check runs after the job has exercised calls, SharedArrays (memory and file backed),
// channels, pmap, distributed_for and addprocs/rmprocs.
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <sys/prctl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using test_util::eventually;
using Doubles = vscale::SharedArray<double, 1>;

// Where this file's temporary directories (and so its file-backed arrays) live: mappings of
// files under it are expected.
constexpr const char* kTempPrefix = "/tmp/vscale-test-security-";

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string join(const std::vector<std::string>& v, const char* sep = "\n") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

void check_cluster_works() {
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
  }
  CHECK(vscale::remotecall_fetch(1, [] { return vscale::myid(); }) == 1);
}

// A fresh directory under /tmp, removed with everything in it at the end.
struct TempDir {
  std::string path;
  TempDir() {
    std::string t = std::string(kTempPrefix) + "XXXXXX";
    std::vector<char> tmpl(t.begin(), t.end());
    tmpl.push_back('\0');
    const char* p = ::mkdtemp(tmpl.data());
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path + "/" + name; }
};

// ---- what one process has open and mapped (run in that process) ----------------------------

// Targets of /proc/self/fd/* ("socket:[123]", "/memfd:vscale-control (deleted)", ...).
std::vector<std::string> fd_targets() {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/self/fd", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code rec;
    auto t = fs::read_symlink(it->path(), rec);
    if (!rec) out.push_back(t.string());
  }
  return out;
}

std::vector<unsigned long> socket_inodes() {
  std::vector<unsigned long> out;
  for (const auto& t : fd_targets()) {
    unsigned long ino = 0;
    if (std::sscanf(t.c_str(), "socket:[%lu]", &ino) == 1) out.push_back(ino);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Inodes listed in a /proc/net table (column `col`, 0-based, after the header line), with the
// line, for messages.
std::map<unsigned long, std::string> net_table(const std::string& file, std::size_t col) {
  std::map<unsigned long, std::string> out;
  std::ifstream in(file);
  std::string line;
  if (!std::getline(in, line)) return out;  // header (or no such table)
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string field;
    for (std::size_t k = 0; k <= col && ls >> field; ++k) {
      if (k == col) {
        try {
          out[std::stoul(field)] = file + ": " + line;
        } catch (...) {
        }
      }
    }
  }
  return out;
}

// What one process reports about its sockets.
struct SocketReport {
  int pid = 0;                           // OS pid
  std::vector<unsigned long> sockets;    // inodes of its sockets
  std::vector<std::string> inet;         // /proc/net/{tcp,tcp6,udp,udp6,udplite*,raw,raw6} lines of its sockets
  std::vector<std::string> not_unix;     // its sockets that are not AF_UNIX (nor netlink)
  std::vector<std::string> named_unix;   // its AF_UNIX sockets that have a path (someone could connect)
  std::string netns;
  template <class A>
  void serialize(A& a) {
    a(pid, sockets, inet, not_unix, named_unix, netns);
  }
};

SocketReport socket_report() {
  SocketReport r;
  r.pid = static_cast<int>(::getpid());
  r.sockets = socket_inodes();
  std::error_code ec;
  r.netns = fs::read_symlink("/proc/self/ns/net", ec).string();
  // Tables of the network namespace this process lives in.
  std::map<unsigned long, std::string> inet;
  for (const char* t : {"tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6"})
    for (auto& [ino, line] : net_table(std::string("/proc/self/net/") + t, 9)) inet[ino] = line;
  auto unix_tab = net_table("/proc/self/net/unix", 6);
  auto netlink = net_table("/proc/self/net/netlink", 9);
  for (unsigned long ino : r.sockets) {
    if (ino == 0) continue;
    if (auto it = inet.find(ino); it != inet.end()) r.inet.push_back(it->second);
    auto u = unix_tab.find(ino);
    if (u == unix_tab.end()) {
      if (!netlink.count(ino)) r.not_unix.push_back("socket:[" + std::to_string(ino) + "]");
      continue;
    }
    // "Num RefCount Protocol Flags Type St Inode Path": a path (or @abstract name) is an 8th field.
    std::istringstream ls(u->second.substr(u->second.find(": ") + 2));
    std::vector<std::string> f;
    for (std::string x; ls >> x;) f.push_back(x);
    if (f.size() > 7) r.named_unix.push_back(u->second);
  }
  return r;
}

std::vector<std::string> maps_lines() {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/maps");
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

struct MemoryReport {
  std::vector<std::string> dev_shm;  // mappings and fds under /dev/shm
  int control_maps = 0;              // mappings of the control segment memfd
  int array_maps = 0;                // mappings of SharedArray memfds
  int array_fds = 0;                 // open SharedArray memfds
  std::vector<std::string> other_shared;  // shared file mappings that are no memfd and not under `allowed`
  template <class A>
  void serialize(A& a) {
    a(dev_shm, control_maps, array_maps, array_fds, other_shared);
  }
};

// `allowed`: a path prefix of files that may be mapped shared (file-backed arrays).
MemoryReport memory_report(const std::string& allowed) {
  MemoryReport r;
  for (const auto& line : maps_lines()) {
    if (contains(line, "/dev/shm")) r.dev_shm.push_back(line);
    if (contains(line, "/memfd:vscale-control")) ++r.control_maps;
    if (contains(line, "/memfd:vscale-shared-array")) ++r.array_maps;
    // "addr perms offset dev inode path": a shared mapping of a named file.
    std::istringstream ls(line);
    std::string addr, perms, off, dev, inode, path;
    ls >> addr >> perms >> off >> dev >> inode;
    std::getline(ls, path);
    path.erase(0, path.find_first_not_of(' '));
    if (perms.size() == 4 && perms[3] == 's' && !path.empty() && path.rfind("/memfd:", 0) != 0 &&
        (allowed.empty() || path.rfind(allowed, 0) != 0) && path.rfind("/dev/zero", 0) != 0 &&
        path.rfind("/SYSV", 0) != 0)
      r.other_shared.push_back(line);
  }
  for (const auto& t : fd_targets()) {
    if (t.rfind("/dev/shm", 0) == 0) r.dev_shm.push_back("fd -> " + t);
    if (contains(t, "/memfd:vscale-shared-array")) ++r.array_fds;
  }
  return r;
}

std::set<std::string> dev_shm_entries() {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/dev/shm", ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    out.insert(it->path().filename().string());
  return out;
}

// Exercise everything that could open a socket or a segment: calls in every direction, large
// messages (bulk area), Futures, a memory SharedArray and a file-backed one, channels, pmap,
// distributed_for, and a worker started and removed.
void exercise(const std::string& dir) {
  auto ws = vscale::workers();
  for (int w : ws) {
    CHECK(vscale::remotecall_fetch(w, [](int x) { return x + vscale::myid(); }, 1) == 1 + w);
    CHECK(vscale::remotecall_fetch(w, [](const std::vector<char>& v) { return v.size(); }, std::vector<char>(1 << 20, 'x')) ==
          std::size_t(1) << 20);
  }
  CHECK(vscale::remotecall_fetch(ws.front(), [](int to) { return vscale::remotecall_fetch(to, [] { return vscale::myid(); }); },
                                 ws.back()) == ws.back());
  auto f = vscale::remotecall(ws.back(), [] { return std::string("stored"); });
  CHECK(f.fetch() == "stored");
  {
    vscale::SharedArray<int, 1> a(1000, vscale::init([](const vscale::SharedArray<int, 1>& s) {
                                    for (auto i : vscale::localindices(s)) s[i] = vscale::myid();
                                  }));
    CHECK(a[0] == ws.front());
    Doubles fa(dir + "/exercise.bin", 100, 0, vscale::FileMode::w_plus);
    vscale::distributed_for({0, 100}, vscale::closure([](const Doubles& s, long i) {
                              s[static_cast<std::size_t>(i)] = static_cast<double>(i);
                            }, fa))
        .wait();
    CHECK(fa[99] == 99.0);
  }
  {
    vscale::RemoteChannel<int> ch(8, ws.front());
    auto producer = vscale::remotecall(ws.back(), [](vscale::RemoteChannel<int> c) {
      for (int i = 0; i < 20; ++i) c.put(i);
      c.close();
    }, ch);
    int sum = 0;
    for (int v : ch) sum += v;
    producer.wait();
    CHECK(sum == 190);
  }
  std::vector<long> xs(50);
  std::iota(xs.begin(), xs.end(), 0L);
  auto ys = vscale::pmap([](long x) { return x * x; }, xs);
  CHECK(ys[7] == 49);
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  CHECK(vscale::remotecall_fetch(added[0], [] { return vscale::myid(); }) == added[0]);
  vscale::rmprocs(added);
}

using test_util::StderrCapture;

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

}  // namespace

TEST_CASE("security.no_tcp_or_udp_port") {
  TempDir dir;
  // Before, while objects are alive, and after.
  auto check_all = [&](const std::string& when) {
    CAPTURE(when);
    std::set<int> os_pids;
    std::string netns;
    for (int p : vscale::procs()) {
      CAPTURE(p);
      SocketReport r = p == 1 ? socket_report() : vscale::remotecall_fetch(p, [] { return socket_report(); });
      if (p == 1) {
        CHECK(r.pid == static_cast<int>(::getpid()));
        netns = r.netns;
      } else {
        CHECK(r.pid == vscale::remotecall_fetch(p, [] { return static_cast<int>(::getpid()); }));
        CHECK(r.netns == netns);  // the same tables were consulted
      }
      os_pids.insert(r.pid);
      INFO("TCP/UDP/raw sockets:\n" << join(r.inet));
      CHECK(r.inet.empty());
      INFO("sockets that are not AF_UNIX: " << join(r.not_unix, ", "));
      CHECK(r.not_unix.empty());
      INFO("named AF_UNIX sockets:\n" << join(r.named_unix));
      CHECK(r.named_unix.empty());
      if (p != 1) CHECK_FALSE(r.sockets.empty());  // its control socket is there (the check sees something)
    }
    CHECK(os_pids.size() == vscale::procs().size());
  };
  check_all("before");
  exercise(dir.path);
  {
    vscale::SharedArray<double, 2> a({64, 64});
    vscale::RemoteChannel<std::string> ch(4, test_util::w2());
    ch.put("open");
    auto g = vscale::remotecall(test_util::w1(), [](const vscale::SharedArray<double, 2>& s) { return s.size(); }, a);
    CHECK(g.fetch() == 64 * 64);
    check_all("while a SharedArray, a channel and a Future are alive");
    ch.close();
  }
  check_all("after");
  // Also from the outside: /proc/<pid>/fd of every process of the job, read by the master.
  std::set<unsigned long> inet;
  for (const char* t : {"tcp", "tcp6", "udp", "udp6", "raw", "raw6"})
    for (auto& [ino, line] : net_table(std::string("/proc/net/") + t, 9)) inet.insert(ino);
  for (int p : vscale::procs()) {
    const int os = p == 1 ? static_cast<int>(::getpid()) : vscale::remotecall_fetch(p, [] { return static_cast<int>(::getpid()); });
    CAPTURE(p);
    CAPTURE(os);
    std::error_code ec;
    int seen = 0;
    for (auto it = fs::directory_iterator("/proc/" + std::to_string(os) + "/fd", ec); !ec && it != fs::directory_iterator();
         it.increment(ec)) {
      std::error_code rec;
      auto t = fs::read_symlink(it->path(), rec).string();
      unsigned long ino = 0;
      if (!rec && std::sscanf(t.c_str(), "socket:[%lu]", &ino) == 1) {
        ++seen;
        CHECK_MESSAGE(inet.count(ino) == 0, "process " << p << " has an inet socket: " << t);
      }
    }
    if (ec) MESSAGE("cannot read /proc/" << os << "/fd from the master: " << ec.message());
    if (p != 1 && !ec) CHECK(seen > 0);
  }
  check_cluster_works();
}

TEST_CASE("security.segments_are_memfd") {
  TempDir dir;
  const auto shm_before = dev_shm_entries();
  auto check_process = [&](int p, bool array_alive, const std::string& when) {
    CAPTURE(p);
    CAPTURE(when);
    const std::string d = kTempPrefix;
    MemoryReport r = p == 1 ? memory_report(d)
                            : vscale::remotecall_fetch(p, [](const std::string& x) { return memory_report(x); }, d);
    INFO("under /dev/shm:\n" << join(r.dev_shm));
    CHECK(r.dev_shm.empty());
    INFO("shared mappings of named files:\n" << join(r.other_shared));
    CHECK(r.other_shared.empty());
    CHECK(r.control_maps >= 1);  // the control segment is a memfd
    if (array_alive) CHECK(r.array_maps >= 1);
  };
  for (int p : vscale::procs()) check_process(p, false, "before");
  exercise(dir.path);
  {
    vscale::SharedArray<float, 3> a({10, 10, 10}, vscale::init([](const vscale::SharedArray<float, 3>& s) {
                                       for (auto i : vscale::localindices(s)) s[i] = 1.0f;
                                     }));
    Doubles file_backed(dir.file("mapped.bin"), 512, 0, vscale::FileMode::w_plus);
    vscale::RemoteChannel<int> ch(2);
    // Every worker maps the array (it takes part), and the master holds it.
    for (int p : vscale::procs()) check_process(p, true, "while a SharedArray is alive");
    // Its fd and mappings are memfds on the master too.
    MemoryReport m = memory_report(kTempPrefix);
    CHECK(m.array_fds >= 1);
    const auto shm_during = dev_shm_entries();
    std::vector<std::string> added;
    std::set_difference(shm_during.begin(), shm_during.end(), shm_before.begin(), shm_before.end(), std::back_inserter(added));
    INFO("new in /dev/shm: " << join(added, ", "));
    CHECK(added.empty());
    ch.close();
  }
  // Dropped: the memfds go away everywhere (asynchronously on workers), /dev/shm is unchanged.
  CHECK(eventually([] { return memory_report("").array_maps == 0; }));
  for (int w : vscale::workers())
    CHECK(eventually([w] { return vscale::remotecall_fetch(w, [] { return memory_report("").array_maps; }) == 0; }));
  for (int p : vscale::procs()) check_process(p, false, "after");
  const auto shm_after = dev_shm_entries();
  std::vector<std::string> added;
  std::set_difference(shm_after.begin(), shm_after.end(), shm_before.begin(), shm_before.end(), std::back_inserter(added));
  INFO("new in /dev/shm: " << join(added, ", "));
  CHECK(added.empty());
  check_cluster_works();
}

TEST_CASE("security.files_created_0600") {
  // vscale creates files only for file-backed arrays (w+, a+, or the default on a missing
  // file); they are private to the user whatever the umask.
  TempDir dir;
  const mode_t old = ::umask(0);
  std::vector<std::pair<std::string, vscale::FileMode>> cases = {
      {dir.file("w.bin"), vscale::FileMode::w_plus},
      {dir.file("a.bin"), vscale::FileMode::a_plus},
      {dir.file("auto.bin"), vscale::FileMode::automatic},
  };
  for (auto& [path, mode] : cases) {
    CAPTURE(path);
    try {
      Doubles a(path, 16, 0, mode);
      a[3] = 1.0;
    } catch (...) {
      ::umask(old);
      throw;
    }
  }
  ::umask(old);
  for (auto& [path, mode] : cases) {
    CAPTURE(path);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }
  check_cluster_works();
}

TEST_CASE("security.wrong_cookie_refused_and_logged") {
  auto before = vscale::workers();
  vscale::detail::LaunchResult r;
  std::string log;
  {
    StderrCapture cap;
    r = vscale::detail::launch(1, "", "forged-cookie");
    int failed_id = r.failed.empty() ? -1 : r.failed[0].first;
    // The refusal is written by the master's launcher thread (and the worker's own words come
    // through its stderr pipe): wait for it.
    eventually([&] {
      std::string s = cap.contents();
      return contains(s, "worker " + std::to_string(failed_id)) && contains(lower(s), "cookie");
    }, 30);
    cap.restore();
    log = cap.contents();
  }
  CHECK(r.joined.empty());
  REQUIRE(r.failed.size() == 1);
  const int id = r.failed[0].first;
  CAPTURE(r.failed[0].second);
  CAPTURE(log);
  CHECK(contains(lower(r.failed[0].second), "refused"));
  CHECK(contains(lower(r.failed[0].second), "cookie"));
  CHECK(contains(log, "worker " + std::to_string(id)));
  CHECK(contains(lower(log), "refused"));
  CHECK(contains(lower(log), "cookie"));
  CHECK(vscale::workers() == before);
  CHECK_THROWS_AS(vscale::remotecall_fetch(id, [] { return 1; }), vscale::ProcessExitedException);
  check_cluster_works();
}

TEST_CASE("security.other_binary_refused_and_logged") {
  // Another program of this build (a sibling test binary), started where a worker should be:
  // it speaks the protocol and has the cookie, but its build id differs.
  const std::string self = self_exe();
  REQUIRE_FALSE(self.empty());
  std::string other;
  for (const char* name : {"test_bad_inputs", "test_errors", "test_remotecall", "test_cluster"}) {
    auto cand = fs::path(self).parent_path() / name;
    if (fs::exists(cand) && cand.string() != self) {
      other = cand.string();
      break;
    }
  }
  if (other.empty()) {
    MESSAGE("skipped: no sibling test binary next to " << self);
    return;
  }
  CAPTURE(other);
  auto before = vscale::workers();
  vscale::detail::LaunchResult r;
  std::string log;
  {
    StderrCapture cap;
    r = vscale::detail::launch(1, other);
    int failed_id = r.failed.empty() ? -1 : r.failed[0].first;
    eventually([&] {
      std::string s = cap.contents();
      return contains(s, "worker " + std::to_string(failed_id)) && contains(lower(s), "binary");
    }, 30);
    cap.restore();
    log = cap.contents();
  }
  CHECK(r.joined.empty());
  REQUIRE(r.failed.size() == 1);
  const int id = r.failed[0].first;
  CAPTURE(r.failed[0].second);
  CAPTURE(log);
  CHECK(contains(lower(r.failed[0].second), "refused"));
  CHECK((contains(lower(r.failed[0].second), "binary") || contains(lower(r.failed[0].second), "build id")));
  CHECK(contains(log, "worker " + std::to_string(id)));
  CHECK(contains(lower(log), "refused"));
  CHECK(vscale::workers() == before);
  check_cluster_works();
}

TEST_CASE("security.workers_run_this_binary") {
  const std::string self = self_exe();
  REQUIRE_FALSE(self.empty());
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK(vscale::remotecall_fetch(w, [] { return self_exe(); }) == self);
  }
}

TEST_CASE("security.cookie_not_in_any_environment") {
  // The cookie reaches a worker in its environment and is removed at once, so that nothing
  // the worker starts inherits it; the master never has it in its environment.
  auto env_has_cookie = [] {
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "VSCALE_COOKIE", 13) == 0) return true;
    return std::getenv("VSCALE_COOKIE") != nullptr;
  };
  CHECK_FALSE(env_has_cookie());
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK_FALSE(vscale::remotecall_fetch(w, [] {
      for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "VSCALE_COOKIE", 13) == 0) return true;
      return std::getenv("VSCALE_COOKIE") != nullptr;
    }));
  }
  // A worker started now as well.
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  CHECK_FALSE(vscale::remotecall_fetch(added[0], [] { return std::getenv("VSCALE_COOKIE") != nullptr; }));
  vscale::rmprocs(added);
}

TEST_CASE("security.workers_inherit_no_stray_fds") {
  // A file the master opened without O_CLOEXEC must not leak into a worker started later.
  TempDir dir;
  const std::string path = dir.file("master-secret.txt");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0600);  // deliberately without O_CLOEXEC
  REQUIRE(fd >= 0);
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  auto targets = vscale::remotecall_fetch(added[0], [] { return fd_targets(); });
  vscale::rmprocs(added);
  ::close(fd);
  INFO("fds of the new worker:\n" << join(targets));
  for (const auto& t : targets) CHECK_FALSE(contains(t, dir.path));
  // Its stdin is /dev/null (it reads nothing of the master's terminal).
  CHECK(std::any_of(targets.begin(), targets.end(), [](const std::string& t) { return t == "/dev/null"; }));
  check_cluster_works();
}

TEST_CASE("security.cookie_not_readable_from_proc") {
  // Any process of the same user may read /proc/<pid>/environ and /proc/<pid>/cmdline of a
  // worker (also where Yama forbids it to ptrace the worker). unsetenv() removes the cookie
  // from `environ` but not from the initial environment block that /proc/<pid>/environ
  // shows, so the value must be wiped there too (or never be put in the environment).
  for (int w : vscale::workers()) {
    CAPTURE(w);
    const int os = vscale::remotecall_fetch(w, [] { return static_cast<int>(::getpid()); });
    for (const std::string file : {"cmdline", "environ"}) {
      CAPTURE(file);
      std::ifstream in("/proc/" + std::to_string(os) + "/" + file, std::ios::binary);
      REQUIRE(in.good());
      std::string block((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      CHECK_FALSE(contains(block, "VSCALE_COOKIE="));
    }
  }
}

TEST_CASE("security.processes_are_not_dumpable") {
  // Another process of the same user could open the control segment through
  // /proc/<master>/fd and forge a worker's death: the cookie guards the join only. vscale's
  // processes are non-dumpable (PR_SET_DUMPABLE 0), which closes /proc/<pid>/fd, /proc/<pid>/mem
  // and ptrace to them for everyone but root; VSCALE_DEBUGGABLE=1 keeps them debuggable.
  // Sanitizer builds stay dumpable (LeakSanitizer ptraces its own process at exit).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  const int expected = 1;
#else
  const char* dbg = std::getenv("VSCALE_DEBUGGABLE");
  const int expected = dbg && std::string(dbg) == "1" ? 1 : 0;
#endif
  CHECK(::prctl(PR_GET_DUMPABLE) == expected);
  for (int w : vscale::workers()) {
    CAPTURE(w);
    CHECK(vscale::remotecall_fetch(w, [] { return ::prctl(PR_GET_DUMPABLE); }) == expected);
  }
}
