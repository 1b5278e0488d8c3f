// SharedArray's memory: memfd creation and reservation, file-backed mappings, and the
// handle protocol (how a process that receives a SharedArray gets and maps its memory, and
// when the memory is freed).
//
// Memory-backed arrays are created on the master, which keeps each one's memfd as a remote
// object (detail/remote_object.hpp) while any handle lives. Handles hold a RemoteRef to it,
// with weights exactly like Futures and channels (the reference store, ref_store.hpp): the
// memfd is closed when the master's handles are gone and all weight has come back. A worker
// that receives a handle asks the master for the fd (push_fd, over the control socket), maps
// it, and keeps the mapping while it has local handles.
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

#include "vscale/detail/fd_passing.hpp"
#include "vscale/ext.hpp"
#include "vscale/placement.hpp"
#include "vscale/shared_array.hpp"

namespace vscale::detail {

namespace {

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

// Master: what a memory-backed array is while any process holds a handle to it: its memfd.
// Its bytes count as used memory for as long (live_bytes).
std::atomic<std::size_t> live_bytes{0};
struct ShmOwner {
  ShmOwner(int f, std::size_t b) : fd(f), bytes(b) { live_bytes.fetch_add(b); }
  ~ShmOwner() {
    close(fd);
    live_bytes.fetch_sub(bytes);
  }
  ShmOwner(const ShmOwner&) = delete;
  ShmOwner& operator=(const ShmOwner&) = delete;
  int fd;
  std::size_t bytes;
};

// Every process: the live mappings, so that one array is mapped once per process.
std::mutex reg_m;
std::map<RefId, std::weak_ptr<SharedMapping>> registry;

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
    const std::size_t used = live_bytes.load() + proc_kb_field("/proc/self/status", "RssAnon:");
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

bool master_push_fd(RefId key, int to) {
  auto owner = find_remote_object<ShmOwner>(key);
  if (!owner) return false;
  push_fd(to, key, owner->fd);  // `owner` keeps the fd open while it is sent
  return true;
}

// Workers: mappings pinned while the master's array lives.
std::mutex pin_m;
std::map<RefId, std::shared_ptr<SharedMapping>> pinned;

void worker_unpin(RefId key) {
  std::shared_ptr<SharedMapping> m;  // released outside the lock
  std::lock_guard lk(pin_m);
  auto it = pinned.find(key);
  if (it == pinned.end()) return;
  m = std::move(it->second);
  pinned.erase(it);
}

}  // namespace

void shm_pin(const std::shared_ptr<SharedMapping>& m) {
  if (!ext::session_running() || ext::is_master()) return;  // the master's own handles keep it
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
  if (!ext::session_running()) return;
  // The master's array is gone: the participants may let go of theirs. (Possibly on the
  // polling thread, a value dropped there: never block.) The weight `ref` holds goes back
  // to the master when ref goes, as a Future's does.
  for (int p : pinned_on)
    if (ext::alive(p)) ext::post(p, &worker_unpin, key);
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
  const int here = host_of(myid());
  if (ids.empty()) {
    // Julia: all workers, or the master alone; under mpirun, those of this host (the memory
    // is this host's).
    for (int p : workers())
      if (host_of(p) == here) ids.push_back(p);
    if (ids.empty()) ids.push_back(myid());
  }
  for (int p : ids) {
    if (ext::alive(p) && host_of(p) != here)
      throw UsageError("vscale: a SharedArray needs all its processes on one host: " + std::to_string(p) + " is on host " +
                       std::to_string(host_of(p)) + ", this array on host " + std::to_string(here) +
                       " (pass pids of one host: vscale::procs_on(host))");
    if (!ext::alive(p))
      throw UsageError("vscale: SharedArray pids: " + std::to_string(p) +
                       " is not a running process (procs() = " + [] {
                         std::string s;
                         for (int q : procs()) s += (s.empty() ? "" : ",") + std::to_string(q);
                         return s;
                       }() + ")");
  }
  return ids;
}

std::shared_ptr<SharedMapping> shm_create(std::size_t bytes) {
  if (!ext::is_master())
    throw UsageError("vscale: create SharedArrays on the master (process 1) and pass them to workers; "
                     "this was process " + std::to_string(myid()));
  const Available avail = available_memory();
  if (bytes > avail.bytes)
    throw Error("vscale: a SharedArray of " + mib(bytes) + " does not fit: only " + mib(avail.bytes) +
                " of memory is available (" + avail.why + ")");
  check_file_size_limit(bytes, "a SharedArray of " + mib(bytes) + " (a memfd of that size)");
  auto m = std::make_shared<SharedMapping>();
  m->bytes = bytes;
  m->fd = static_cast<int>(syscall(SYS_memfd_create, "vscale-shared-array", MFD_CLOEXEC));
  if (m->fd < 0) throw Error("vscale: memfd_create failed for a SharedArray: " + errno_text());
  if (ftruncate(m->fd, static_cast<off_t>(bytes)) != 0)
    throw Error("vscale: cannot size a SharedArray of " + mib(bytes) + ": " + errno_text());
  map_into(*m, PROT_READ | PROT_WRITE);
  const int keep = fcntl(m->fd, F_DUPFD_CLOEXEC, 3);
  if (keep < 0) throw Error("vscale: cannot keep a SharedArray's memfd: " + errno_text());
  m->ref = RemoteRef(new_remote_object(std::make_shared<ShmOwner>(keep, bytes)));
  m->key = m->ref.id();
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
  if (creating) m->key = new_ref_id();
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
    ar(cereal::binary_data(&m->key, sizeof m->key), m->path, std::uint64_t(m->offset), std::uint64_t(m->bytes), ro);
    return;
  }
  ar(m->ref, std::uint64_t(m->bytes));  // the reference takes its share of weight along
}

namespace {
/// A new mapping of the memory-backed array `ref` (bytes long) from `fd`.
std::shared_ptr<SharedMapping> mapping_of(RemoteRef ref, std::size_t bytes, int fd) {
  auto m = std::make_shared<SharedMapping>();
  m->ref = std::move(ref);
  m->key = m->ref.id();
  m->bytes = bytes;
  m->fd = fd;
  map_into(*m, PROT_READ | PROT_WRITE);
  return m;
}
}  // namespace

std::shared_ptr<SharedMapping> shm_load(cereal::BinaryInputArchive& ar) {
  std::uint8_t file = 0;
  ar(file);
  if (file) {
    RefId key;
    std::string path;
    std::uint64_t offset, bytes;
    std::uint8_t ro;
    ar(cereal::binary_data(&key, sizeof key), path, offset, bytes, ro);
    std::lock_guard lk(reg_m);
    if (auto m = registry[key].lock()) return m;  // mapped here already
    auto m = shm_open_file(path, bytes, offset, ro ? FileMode::r : FileMode::r_plus, false);
    m->key = key;
    registry[key] = m;
    return m;
  }
  RemoteRef ref;
  std::uint64_t bytes;
  ar(ref, bytes);  // its weight joins this process's reference (or, on the master, goes home)
  const RefId key = ref.id();
  {
    std::lock_guard lk(reg_m);
    if (auto m = registry[key].lock()) return m;  // mapped here already
  }
  std::shared_ptr<SharedMapping> m;
  if (ext::is_master()) {
    // Every master handle was dropped while others kept the array: map it again.
    auto owner = find_remote_object<ShmOwner>(key);
    if (!owner) throw Error("vscale: the master received a SharedArray it no longer knows (internal error)");
    m = mapping_of(std::move(ref), bytes, fcntl(owner->fd, F_DUPFD_CLOEXEC, 3));
  } else {
    // First handle here: get the memfd from the master and map it.
    if (!remotecall_fetch(1, &master_push_fd, key, myid()))
      throw Error("vscale: process " + std::to_string(myid()) + " received a SharedArray the master no longer holds");
    const int fd = take_pushed_fd(key, std::chrono::seconds(60));
    if (fd < 0)
      throw Error("vscale: process " + std::to_string(myid()) + " did not receive a SharedArray's memory from the master");
    m = mapping_of(std::move(ref), bytes, fd);
  }
  std::lock_guard lk(reg_m);
  if (auto other = registry[key].lock()) return other;  // another thread mapped it meanwhile
  registry[key] = m;
  return m;
}

}  // namespace vscale::detail
