// Control segment and rings (see vscale/detail/transport.hpp for the layout and protocol).
#include "vscale/detail/transport.hpp"

#include "vscale/cluster.hpp"

#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <cstring>
#include <new>
#include <string>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"

namespace vscale::detail {

namespace {
constexpr std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }
constexpr std::uint64_t kRingHeaderBytes = 256;
std::string errno_text() { return std::strerror(errno); }
}  // namespace

Segment::~Segment() {
  if (base_) munmap(base_, mapped_);
  if (fd_ >= 0) close(fd_);
}

void Segment::map(std::uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_, 0);
  if (p == MAP_FAILED)
    throw Error("vscale: cannot map the control segment (" + std::to_string(bytes >> 20) +
                " MiB of address space): " + errno_text() +
                ". Lower VSCALE_MAX_PROCS or VSCALE_BULK_MB, or raise the address-space limit (ulimit -v).");
  base_ = static_cast<char*>(p);
  mapped_ = bytes;
}

void Segment::create(std::uint32_t max_procs, std::uint64_t ring_bytes, std::uint64_t bulk_bytes) {
  fd_ = static_cast<int>(syscall(SYS_memfd_create, "vscale-control", MFD_CLOEXEC));
  if (fd_ < 0) throw Error("vscale: memfd_create failed for the control segment: " + errno_text());
  SegHeader h{};
  h.magic = kSegMagic;
  h.max_procs = max_procs;
  h.job_cpus = static_cast<std::uint32_t>(usable_cpus());
  h.ring_bytes = ring_bytes;
  h.ring_stride = round_up(kRingHeaderBytes + ring_bytes, 4096);
  h.bulk_bytes = round_up(bulk_bytes, 1 << 21);
  h.slots_off = 4096;
  h.rings_off = round_up(h.slots_off + sizeof(ProcSlot) * max_procs, 1 << 21);
  h.bulk_off = round_up(h.rings_off + h.ring_stride * max_procs * max_procs, 1 << 21);
  h.total_bytes = h.bulk_off + h.bulk_bytes * max_procs;
  // A file larger than RLIMIT_FSIZE kills us with SIGXFSZ at ftruncate (memfds count too):
  // refuse with the limit named instead. The file is sparse: only touched pages take memory.
  rlimit fsize{};
  if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY && h.total_bytes > fsize.rlim_cur)
    throw Error("vscale: the control segment is a sparse file of " + std::to_string(h.total_bytes >> 20) +
                " MiB (VSCALE_MAX_PROCS=" + std::to_string(max_procs) + " processes, rings of " +
                std::to_string(ring_bytes >> 10) + " KiB per pair, " + std::to_string(h.bulk_bytes >> 20) +
                " MiB of bulk area per process; little of it is ever touched) and the file-size limit is " +
                std::to_string(fsize.rlim_cur >> 10) + " KiB (ulimit -f " + std::to_string(fsize.rlim_cur >> 10) +
                "). Raise it (ulimit -f unlimited) or lower VSCALE_MAX_PROCS, VSCALE_RING_KB or VSCALE_BULK_MB");
  if (ftruncate(fd_, static_cast<off_t>(h.total_bytes)) != 0)
    throw Error("vscale: cannot size the control segment: " + errno_text());
  map(h.total_bytes);
  // The memfd is zero-filled, which is the initial state of every atomic in it.
  std::memcpy(base_, &h, offsetof(SegHeader, epoch));
}

void Segment::attach(int fd) {
  fd_ = fd;
  SegHeader h;
  if (pread(fd_, &h, offsetof(SegHeader, epoch), 0) != static_cast<ssize_t>(offsetof(SegHeader, epoch)) ||
      h.magic != kSegMagic)
    throw Error("vscale worker: the inherited control segment is not a vscale segment");
  map(h.total_bytes);
}

void Segment::bad_id(int id, const char* what) const {
  throw Error("vscale: internal error: process id " + std::to_string(id) + " is outside this session's ids 1.." +
              std::to_string(max_procs()) + " (" + what + " of the control segment)");
}

void Segment::set_starting(int id, int os_pid) const {
  auto& s = slot(id);
  if (os_pid > 0) s.os_pid.store(os_pid);
  s.state.store(std::uint32_t(SlotState::Starting));
}

void Segment::set_alive(int id, int os_pid) const {
  auto& s = slot(id);
  if (os_pid > 0) s.os_pid.store(os_pid);
  s.state.store(std::uint32_t(SlotState::Alive));
  header().epoch.fetch_add(1);
}

bool Segment::set_dead(int id, const std::string& reason) const {
  auto& s = slot(id);
  if (s.state.load() == std::uint32_t(SlotState::Dead)) return false;
  const std::size_t n = std::min(sizeof s.reason - 1, reason.size());
  std::memcpy(s.reason, reason.data(), n);
  s.reason[n] = 0;
  s.state.store(std::uint32_t(SlotState::Dead));
  header().epoch.fetch_add(1);
  for (int other = 1; valid_id(other); ++other) {
    auto& o = slot(other);
    if (o.state.load() == std::uint32_t(SlotState::Unused)) break;  // ids are handed out in order
    ring_doorbell(o.doorbell);
  }
  return true;
}

bool ring_try_write(const Segment& seg, RingHeader& r, const MsgHeader& h, const void* body1, std::size_t n1,
                    const void* body2, std::size_t n2) {
  const std::uint64_t cap = seg.header().ring_bytes;
  const std::uint64_t rec = round_up(sizeof(MsgHeader) + n1 + n2, 16);
  const std::uint64_t head = r.head.load(std::memory_order_relaxed);
  const std::uint64_t tail = r.tail.load(std::memory_order_acquire);
  const std::uint64_t off = head % cap;
  const std::uint64_t pad = (off + rec > cap) ? cap - off : 0;  // skip to the start when it would wrap
  if (head + pad + rec - tail > cap) return false;
  char* data = seg.ring_data(r);
  std::uint64_t pos = head;
  if (pad) {
    MsgHeader w{};
    w.kind = kWrap;
    std::memcpy(data + off, &w, sizeof w);
    pos += pad;
  }
  char* p = data + pos % cap;
  std::memcpy(p, &h, sizeof h);
  if (n1) std::memcpy(p + sizeof h, body1, n1);
  if (n2) std::memcpy(p + sizeof h + n1, body2, n2);
  r.head.store(pos + rec, std::memory_order_release);
  return true;
}

int futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const timespec* timeout) {
  return static_cast<int>(
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, timeout, nullptr, 0));
}

int futex_wait_bits(std::atomic<std::uint32_t>& word, std::uint32_t expected, std::uint32_t bits, long timeout_ns) {
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline.
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ns / 1000000000L;
  ts.tv_nsec += timeout_ns % 1000000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  return static_cast<int>(syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_BITSET, expected, &ts,
                                  nullptr, bits));
}

int futex_wake_bits(std::atomic<std::uint32_t>& word, int count, std::uint32_t bits) {
  return static_cast<int>(
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_BITSET, count, nullptr, nullptr, bits));
}

void ring_doorbell(std::atomic<std::uint32_t>& doorbell, std::uint32_t bits) {
  doorbell.fetch_add(1, std::memory_order_seq_cst);
  if (bits == kBellProgress || futex_wake_bits(doorbell, bits == kBellExec ? 1 : INT_MAX, bits) <= 0)
    futex_wake_bits(doorbell, 1, kBellProgress);
}

int futex_wake(std::atomic<std::uint32_t>& word, int count) {
  return static_cast<int>(
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr, 0));
}

}  // namespace vscale::detail
