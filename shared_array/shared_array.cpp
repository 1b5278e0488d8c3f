// SharedArray's memory: memfd creation and reservation, file-backed mappings, and the
// handle protocol (how a process that receives a SharedArray gets and maps its memory, and
// when the memory is freed).
//
// Memory-backed arrays are created on the master, which keeps each one's memfd in a table
// while any other process holds a handle. A worker that receives a handle asks the master
// for the fd (push_fd, over the control socket), maps it, and keeps the mapping while it has
// local handles. Handles carry weights exactly like Futures (detail/core.hpp): the master's
// table entry is freed when all weight has come back.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>

#include "vscale/detail/runtime.hpp"
#include "vscale/placement.hpp"
#include "vscale/shared_array.hpp"

namespace vscale::detail {

namespace {

constexpr std::uint64_t kShmWeight = std::uint64_t(1) << 20;  // as kInitialWeight (runtime.hpp)
const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

struct KeyLess {
  bool operator()(const FdKey& x, const FdKey& y) const { return x.a != y.a ? x.a < y.a : x.b < y.b; }
};

// Master: the fds of arrays that other processes hold, and the weight out there.
struct TableEntry {
  int fd = -1;
  std::int64_t weight = 0;
  std::size_t bytes = 0;
};
std::mutex table_m;
std::map<FdKey, TableEntry, KeyLess> table;
// Every process: the live mappings, so that one array is mapped once per process.
std::mutex reg_m;
std::map<FdKey, std::weak_ptr<SharedMapping>, KeyLess> registry;
std::atomic<std::uint64_t> next_seq{0};

std::string errno_text() { return std::strerror(errno); }

std::string mib(std::size_t b) { return std::to_string((b >> 20) + ((b & ((1u << 20) - 1)) != 0)) + " MiB"; }  // rounded up, no overflow

/// A /proc/self/status or /proc/meminfo field in bytes ("Key:  123 kB"); 0 when absent.
std::size_t proc_kb_field(const char* file, const std::string& want) {
  std::ifstream in(file);
  std::string key;
  std::size_t kb = 0;
  std::string rest;
  while (in >> key) {
    if (key == want && in >> kb) return kb * 1024;
    std::getline(in, rest);
  }
  return 0;
}

/// Bytes of memory-backed arrays that exist now (the master's; pages all reserved).
std::size_t live_array_bytes() {
  std::size_t sum = 0;
  std::vector<FdKey> seen;
  {
    std::lock_guard lk(reg_m);
    for (auto& [k, w] : registry)
      if (auto m = w.lock(); m && !m->file) {
        sum += m->bytes;
        seen.push_back(k);
      }
  }
  std::lock_guard lk(table_m);
  for (auto& [k, e] : table) {
    bool counted = false;
    for (const auto& s : seen) counted = counted || (s.a == k.a && s.b == k.b);
    if (!counted && e.fd >= 0) sum += e.bytes;  // held only by workers now
  }
  return sum;
}

struct Available {
  std::size_t bytes;
  std::string why;  // which limit it is, for the message
};

/// Memory this process may still use: MemAvailable, and under a cgroup memory limit (v1 or v2,
/// as placement.hpp reads it) the limit less what this job is known to use (its arrays and
/// the master's own anonymous memory: placement reads no usage counter, so this is an
/// estimate that leaves out the workers' private memory).
Available available_memory() {
  Available a{SIZE_MAX, ""};
  if (std::size_t avail = proc_kb_field("/proc/meminfo", "MemAvailable:")) a = {avail, "MemAvailable"};
  if (auto lim = machine().memory_limit) {
    const std::size_t used = live_array_bytes() + proc_kb_field("/proc/self/status", "RssAnon:");
    const std::size_t left = *lim > used ? static_cast<std::size_t>(*lim - used) : 0;
    if (left < a.bytes)
      a = {left, "the cgroup memory limit of " + mib(static_cast<std::size_t>(*lim)) + " (cgroup v" +
                     std::to_string(machine().cgroup_version) + "), less " + mib(used) +
                     " used by this job's SharedArrays and the master"};
  }
  return a;
}

/// Refuse a file or memfd size beyond this process's RLIMIT_FSIZE: growing one past it would
/// not fail but kill the process (SIGXFSZ).
void check_file_size_limit(std::size_t size, const std::string& what) {
  struct rlimit rl{};
  if (getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || size <= rl.rlim_cur) return;
  throw Error("vscale: " + what + " needs " + std::to_string(size) + " bytes, more than process " + std::to_string(myid()) +
              "'s file size limit (RLIMIT_FSIZE, `ulimit -f`): " + std::to_string(rl.rlim_cur) + " bytes (" +
              std::to_string(rl.rlim_cur / 1024) + " blocks of 1 KiB); raise it (ulimit -f unlimited) or make the "
              "array smaller");
}

void map_into(SharedMapping& m, int prot) {
  // mmap needs a page-aligned file offset: map from the page below and point past the gap.
  std::size_t lead = m.offset % kPage;
  m.map_len = std::max<std::size_t>(lead + m.bytes, 1);
  void* p = mmap(nullptr, m.map_len, prot, MAP_SHARED, m.fd, static_cast<off_t>(m.offset - lead));
  if (p == MAP_FAILED) {
    m.map_base = nullptr;
    throw Error("vscale: cannot map a SharedArray of " + mib(m.bytes) + " on process " + std::to_string(myid()) + ": " +
                errno_text());
  }
  m.map_base = p;
  m.data = static_cast<char*>(p) + lead;
}

// --- what workers ask of the master (remote calls)

bool master_push_fd(FdKey key, int to) {
  int fd = -1;
  {
    std::lock_guard lk(table_m);
    auto it = table.find(key);
    if (it == table.end()) return false;
    fd = it->second.fd;
    push_fd(to, key, fd);  // under the lock: the fd must stay open while it is sent
  }
  return true;
}

void master_add_weight(FdKey key, std::uint64_t w) {
  std::lock_guard lk(table_m);
  table[key].weight += static_cast<std::int64_t>(w);
}

void master_release_weight(FdKey key, std::uint64_t w) {
  std::lock_guard lk(table_m);
  auto it = table.find(key);
  if (it == table.end()) {
    // A weight came back before the master heard of it (impossible with the master as the
    // only creator; kept for robustness): remember the debt.
    table[key].weight -= static_cast<std::int64_t>(w);
    return;
  }
  it->second.weight -= static_cast<std::int64_t>(w);
  if (it->second.weight == 0) {
    if (it->second.fd >= 0) close(it->second.fd);
    table.erase(it);
  }
}

// Workers: mappings pinned while the master's array lives.
std::mutex pin_m;
std::map<FdKey, std::shared_ptr<SharedMapping>, KeyLess> pinned;

void worker_unpin(FdKey key) {
  std::shared_ptr<SharedMapping> m;  // released outside the lock
  std::lock_guard lk(pin_m);
  auto it = pinned.find(key);
  if (it == pinned.end()) return;
  m = std::move(it->second);
  pinned.erase(it);
}

/// Run `fn(args...)` on `pid` from a destructor: never blocks, never throws.
template <class... A>
void post(int pid, void (*fn)(A...), A... args) {
  try {
    Writer w;
    pack_call<void (*)(A...), A...>(w, fn, args...);
    call_do(pid, code_of<&invoke_call<void (*)(A...), A...>>(), w, false);
  } catch (...) {
  }
}

}  // namespace

void shm_pin(const std::shared_ptr<SharedMapping>& m) {
  Runtime* rt = Runtime::current();
  if (!rt || rt->master()) return;  // the master's own handles keep it
  std::lock_guard lk(pin_m);
  pinned[m->key] = m;
}

void shm_note_pinned(SharedMapping& m, const std::vector<int>& pids) {
  for (int p : pids)
    if (p != 1) m.pinned_on.push_back(p);
}

SharedMapping::~SharedMapping() {
  if (map_base) munmap(map_base, map_len);
  if (fd >= 0) close(fd);
  {
    std::lock_guard lk(reg_m);
    auto it = registry.find(key);
    if (it != registry.end() && it->second.expired()) registry.erase(it);
  }
  Runtime* rt = Runtime::current();
  if (!rt) return;
  // The master's array is gone: the participants may let go of theirs.
  for (int p : pinned_on)
    if (rt->alive(p)) post<FdKey>(p, &worker_unpin, key);
  if (file || rt->master() || weight == 0 || !rt->alive(1)) return;
  // Possibly on the polling thread (a value dropped there): never block.
  post<FdKey, std::uint64_t>(1, &master_release_weight, key, weight);
}

std::size_t checked_count(const std::size_t* dims, std::size_t n, std::size_t elem_size) {
  std::size_t count = 1;
  for (std::size_t k = 0; k < n; ++k) {
    if (dims[k] != 0 && count > std::numeric_limits<std::size_t>::max() / elem_size / dims[k]) {
      std::string d;
      for (std::size_t j = 0; j < n; ++j) d += (j ? " x " : "") + std::to_string(dims[j]);
      throw UsageError("vscale: SharedArray dimensions " + d + " overflow the address space");
    }
    count *= dims[k];
  }
  return count;
}

std::vector<int> checked_pids(std::vector<int> ids) {
  if (ids.empty()) ids = workers();  // Julia: all workers, or the master alone
  for (int p : ids)
    if (!Runtime::get("SharedArray").alive(p))
      throw UsageError("vscale: SharedArray pids: " + std::to_string(p) +
                       " is not a running process (procs() = " + [] {
                         std::string s;
                         for (int q : procs()) s += (s.empty() ? "" : ",") + std::to_string(q);
                         return s;
                       }() + ")");
  return ids;
}

std::shared_ptr<SharedMapping> shm_create(std::size_t bytes) {
  Runtime& rt = Runtime::get("SharedArray");
  if (!rt.master())
    throw UsageError("vscale: create SharedArrays on the master (process 1) and pass them to workers; "
                     "this was process " + std::to_string(rt.self()));
  const Available avail = available_memory();
  if (bytes > avail.bytes)
    throw Error("vscale: a SharedArray of " + mib(bytes) + " does not fit: only " + mib(avail.bytes) +
                " of memory is available (" + avail.why + ")");
  check_file_size_limit(bytes, "a SharedArray of " + mib(bytes) + " (a memfd of that size)");
  auto m = std::make_shared<SharedMapping>();
  m->key = FdKey{std::uint64_t(rt.self()), next_seq.fetch_add(1) + 1};
  m->bytes = bytes;
  m->fd = static_cast<int>(syscall(SYS_memfd_create, "vscale-shared-array", MFD_CLOEXEC));
  if (m->fd < 0) throw Error("vscale: memfd_create failed for a SharedArray: " + errno_text());
  if (ftruncate(m->fd, static_cast<off_t>(bytes)) != 0)
    throw Error("vscale: cannot size a SharedArray of " + mib(bytes) + ": " + errno_text());
  map_into(*m, PROT_READ | PROT_WRITE);
  std::lock_guard lk(reg_m);
  registry[m->key] = m;
  return m;
}

void shm_reserve(SharedMapping& m, std::size_t from, std::size_t to) {
  if (m.file || to <= from) return;
  std::size_t lo = from / kPage * kPage, hi = std::min((to + kPage - 1) / kPage * kPage, m.bytes);
  if (hi <= lo) return;
  if (fallocate(m.fd, 0, static_cast<off_t>(lo), static_cast<off_t>(hi - lo)) != 0)
    throw Error("vscale: process " + std::to_string(myid()) + " could not reserve " + mib(hi - lo) +
                " for its part of a SharedArray: " + errno_text() + " (too little memory?)");
}

std::shared_ptr<SharedMapping> shm_open_file(const std::string& path, std::size_t bytes, std::size_t offset,
                                              FileMode mode, bool creating) {
  struct stat st{};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (mode == FileMode::automatic) mode = exists ? FileMode::r_plus : FileMode::w_plus;
  if (!creating && (mode == FileMode::w_plus || mode == FileMode::a_plus)) mode = FileMode::r_plus;  // workers never truncate
  const std::size_t need = offset + bytes;
  int flags = mode == FileMode::r ? O_RDONLY : O_RDWR;
  if (mode == FileMode::w_plus) flags |= O_CREAT | O_TRUNC;
  if (mode == FileMode::a_plus) flags |= O_CREAT;
  if ((mode == FileMode::r || mode == FileMode::r_plus) && !exists)
    throw Error("vscale: SharedArray file \"" + path + "\" does not exist (mode " +
                (mode == FileMode::r ? "r" : "r+") + " needs it)");
  auto m = std::make_shared<SharedMapping>();
  m->file = true;
  if (creating) m->key = FdKey{std::uint64_t(myid()), next_seq.fetch_add(1) + 1};
  m->path = path;
  m->offset = offset;
  m->bytes = bytes;
  m->readonly = mode == FileMode::r;
  m->fd = ::open(path.c_str(), flags | O_CLOEXEC, 0600);
  if (m->fd < 0) throw Error("vscale: cannot open SharedArray file \"" + path + "\": " + errno_text());
  struct stat fs{};
  fstat(m->fd, &fs);
  const std::size_t have = static_cast<std::size_t>(fs.st_size);
  if (have < need) {
    if (creating && (mode == FileMode::w_plus || mode == FileMode::a_plus)) {
      check_file_size_limit(need, "SharedArray file \"" + path + "\" (offset " + std::to_string(offset) + " + " +
                                      std::to_string(bytes) + " bytes)");
      if (ftruncate(m->fd, static_cast<off_t>(need)) != 0)
        throw Error("vscale: cannot extend \"" + path + "\" to " + std::to_string(need) + " bytes: " + errno_text());
    } else {
      throw Error("vscale: SharedArray file \"" + path + "\" is too small: it has " + std::to_string(have) +
                  " bytes, the array needs offset " + std::to_string(offset) + " + " + std::to_string(bytes) + " = " +
                  std::to_string(need));
    }
  }
  if (creating && !m->readonly && bytes > 0) {
    // Reserve the array's blocks: on a full filesystem a sparse file would be an exception
    // nowhere, then SIGBUS in whichever process first writes a page that has no block.
    if (int err = posix_fallocate(m->fd, static_cast<off_t>(offset), static_cast<off_t>(bytes)); err != 0) {
      if (have < need) (void)ftruncate(m->fd, static_cast<off_t>(have));  // as it was
      throw Error("vscale: cannot reserve " + std::to_string(bytes) + " bytes for SharedArray file \"" + path +
                  "\" on process " + std::to_string(myid()) + ": " + std::strerror(err) +
                  (err == ENOSPC ? " (the filesystem is full: free space or put the file elsewhere)" : ""));
    }
  }
  map_into(*m, m->readonly ? PROT_READ : PROT_READ | PROT_WRITE);
  if (creating) {
    std::lock_guard lk(reg_m);
    registry[m->key] = m;
  }
  return m;
}

void shm_save(cereal::BinaryOutputArchive& ar, const std::shared_ptr<SharedMapping>& m) {
  std::uint8_t file = m->file;
  ar(file);
  if (m->file) {
    std::uint8_t ro = m->readonly;
    ar(m->key.a, m->key.b, m->path, std::uint64_t(m->offset), std::uint64_t(m->bytes), ro);
    return;
  }
  Runtime& rt = Runtime::get("sending a SharedArray");
  std::uint64_t give;
  if (rt.master()) {
    // Keep the fd for whoever asks, and mint the weight that travels.
    std::lock_guard lk(table_m);
    auto& e = table[m->key];
    if (e.fd < 0) {
      e.fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 3);
      e.bytes = m->bytes;
    }
    e.weight += static_cast<std::int64_t>(kShmWeight);
    give = kShmWeight;
  } else {
    std::unique_lock lk(m->m);
    if (m->weight < 2) {
      lk.unlock();
      remotecall_fetch(1, &master_add_weight, m->key, kShmWeight);
      lk.lock();
      m->weight += kShmWeight;
    }
    give = m->weight / 2;
    m->weight -= give;
  }
  ar(m->key.a, m->key.b, std::uint64_t(m->bytes), give);
}

std::shared_ptr<SharedMapping> shm_load(cereal::BinaryInputArchive& ar) {
  std::uint8_t file = 0;
  ar(file);
  if (file) {
    FdKey key;
    std::string path;
    std::uint64_t offset, bytes;
    std::uint8_t ro;
    ar(key.a, key.b, path, offset, bytes, ro);
    std::lock_guard lk(reg_m);
    if (auto m = registry[key].lock()) return m;  // mapped here already
    auto m = shm_open_file(path, bytes, offset, ro ? FileMode::r : FileMode::r_plus, false);
    m->key = key;
    registry[key] = m;
    return m;
  }
  FdKey key;
  std::uint64_t bytes, weight;
  ar(key.a, key.b, bytes, weight);
  Runtime& rt = Runtime::get("receiving a SharedArray");
  if (rt.master()) {
    // Back home: the weight returns to the table; the master's own handles hold none.
    std::shared_ptr<SharedMapping> m;
    {
      std::lock_guard lk(reg_m);
      m = registry[key].lock();
    }
    if (!m) {
      // Every master handle was dropped while others kept the array: map it again.
      std::lock_guard lk(table_m);
      auto it = table.find(key);
      if (it == table.end() || it->second.fd < 0)
        throw Error("vscale: the master received a SharedArray it no longer knows (internal error)");
      m = std::make_shared<SharedMapping>();
      m->key = key;
      m->bytes = bytes;
      m->fd = fcntl(it->second.fd, F_DUPFD_CLOEXEC, 3);
      map_into(*m, PROT_READ | PROT_WRITE);
      std::lock_guard rk(reg_m);
      registry[key] = m;
    }
    master_release_weight(key, weight);
    return m;
  }
  {
    std::lock_guard lk(reg_m);
    if (auto m = registry[key].lock()) {
      std::lock_guard mk(m->m);
      m->weight += weight;
      return m;
    }
  }
  // First handle here: get the memfd from the master and map it.
  auto m = std::make_shared<SharedMapping>();
  m->key = key;
  m->bytes = bytes;
  m->weight = weight;  // from here on the destructor returns it
  if (!remotecall_fetch(1, &master_push_fd, key, rt.self()))
    throw Error("vscale: process " + std::to_string(rt.self()) + " received a SharedArray the master no longer holds");
  m->fd = take_pushed_fd(key, std::chrono::seconds(60));
  if (m->fd < 0)
    throw Error("vscale: process " + std::to_string(rt.self()) + " did not receive a SharedArray's memory from the master");
  map_into(*m, PROT_READ | PROT_WRITE);
  std::lock_guard lk(reg_m);
  if (auto other = registry[key].lock()) {
    // Another thread mapped it meanwhile: keep one mapping, merge the weight.
    std::lock_guard mk(other->m);
    other->weight += m->weight;
    m->weight = 0;
    return other;
  }
  registry[key] = m;
  return m;
}

}  // namespace vscale::detail
