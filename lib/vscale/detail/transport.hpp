// The shared-memory transport: one memfd control segment mapped by every process.
//
// Layout: [header][one slot per process id][a ring per ordered pair (to, from)][a bulk area
// per sender]. Process id `i` uses slot/ring/bulk index i-1; ids are never reused, so nothing
// in the segment is ever recycled while someone may still read it. The file is sparse: only
// the rings and bulk pages actually touched take memory.
//
// A ring is single-producer (the sender process, serialised by a per-destination mutex) and
// single-consumer (whichever thread of the receiver holds its poll lock). Head and tail are
// byte positions that only grow, each on its own cache line. Records are 16-byte aligned:
// a MsgHeader then the body. Bodies larger than kInlineMax travel in the sender's bulk area
// and the ring carries only {offset, length}.
//
// Waking: a receiver thread that polls counts itself in `awake`; a sender bumps the receiver's
// `doorbell` and FUTEX_WAKEs it only when nobody is awake there. Futexes are shared (no
// FUTEX_PRIVATE_FLAG) because the waiter and the waker are different processes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>

namespace vscale::detail {

inline constexpr std::uint64_t kSegMagic = 0x31656c6163737676ull;  // "vvscale1"

enum class SlotState : std::uint32_t { Unused = 0, Starting = 1, Alive = 2, Dead = 3 };

struct alignas(64) ProcSlot {
  std::atomic<std::uint32_t> state;
  std::atomic<std::int32_t> os_pid;
  std::atomic<std::uint32_t> interrupts;  // bumped by each vscale::interrupt of this process
  char reason[120];  // why it is dead, written by the master before state becomes Dead
  alignas(64) std::atomic<std::uint32_t> doorbell;
  std::atomic<std::uint32_t> awake;
};

struct alignas(64) SegHeader {
  std::uint64_t magic;
  std::uint32_t max_procs;
  std::uint32_t job_cpus;  // the master's usable CPUs: the job's spin budget (workers may be pinned to fewer)
  std::uint64_t ring_bytes;  // data bytes per ring
  std::uint64_t ring_stride;
  std::uint64_t bulk_bytes;  // per sender
  std::uint64_t slots_off, rings_off, bulk_off, total_bytes;
  alignas(64) std::atomic<std::uint32_t> epoch;  // bumped by the master on every membership change
  // Threads of the whole job spinning right now. Spinning only pays while there are idle
  // CPUs: a spinner that gets descheduled still counts as awake, and nobody wakes its
  // process until it runs again.
  alignas(64) std::atomic<std::int32_t> spinners;
};

struct RingHeader {
  alignas(64) std::atomic<std::uint64_t> head;  // written by the producer
  alignas(64) std::atomic<std::uint64_t> tail;  // written by the consumer
  alignas(64) std::atomic<std::uint32_t> space_seq;
  std::atomic<std::uint32_t> writer_waiting;
};

struct MsgHeader {
  std::uint32_t len;  // body bytes
  std::uint16_t kind;
  std::uint16_t flags;
  std::int32_t src;
  std::uint32_t reserved;
};
static_assert(sizeof(MsgHeader) == 16);

enum MsgKind : std::uint16_t {
  kCallFetch = 1,  // u64 req, CodeRef, args
  kCallRef = 2,    // RefId, CodeRef, args
  kCallDo = 3,     // CodeRef, args
  kResult = 4,     // u64 req, u32 ok, value bytes | ErrorInfo
  kFetch = 5,      // u64 req, RefId
  kWait = 6,       // u64 req, RefId
  kIsReady = 7,    // u64 req, RefId
  kAddRef = 8,     // u64 req, RefId, u64 weight (answered by kResult)
  kDelRef = 9,     // RefId, u64 weight
  kExit = 10,      // leave politely
  kInterrupt = 11, // cancel the calls in flight here (vscale::interrupt)
  kWrap = 0xffff,  // padding to the end of the ring
};
inline constexpr std::uint16_t kFlagBulk = 1;

/// Header of a block in a sender's bulk area; the receiver sets `consumed` when done.
struct alignas(64) BulkBlock {
  std::atomic<std::uint32_t> consumed;
  std::uint32_t reserved;
  std::uint64_t len;
};

/// A mapped control segment.
class Segment {
 public:
  Segment() = default;
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  /// Master: create the memfd and map it.
  void create(std::uint32_t max_procs, std::uint64_t ring_bytes, std::uint64_t bulk_bytes);
  /// Worker: map an inherited memfd.
  void attach(int fd);

  int fd() const noexcept { return fd_; }
  SegHeader& header() const noexcept { return *reinterpret_cast<SegHeader*>(base_); }
  std::uint32_t max_procs() const noexcept { return header().max_procs; }
  // Every access to a slot, ring or bulk area is checked against the session's id range: an
  // id past it would land on another process's rings (issue 13: `-p 100000` did).
  ProcSlot& slot(int id) const {
    check_id(id, "slot");
    return reinterpret_cast<ProcSlot*>(base_ + header().slots_off)[id - 1];
  }
  RingHeader& ring(int to, int from) const {
    check_id(to, "ring");
    check_id(from, "ring");
    auto& h = header();
    return *reinterpret_cast<RingHeader*>(base_ + h.rings_off +
                                          (std::uint64_t(to - 1) * h.max_procs + std::uint64_t(from - 1)) *
                                              h.ring_stride);
  }
  char* ring_data(RingHeader& r) const noexcept { return reinterpret_cast<char*>(&r) + 256; }
  char* bulk(int id) const {
    check_id(id, "bulk area");
    return base_ + header().bulk_off + std::uint64_t(id - 1) * header().bulk_bytes;
  }
  bool valid_id(int id) const noexcept { return id >= 1 && std::uint32_t(id) <= header().max_procs; }

  // --- membership: the only writers of slot states and of the epoch (the master's cluster
  // manager, and start_master for process 1). Readers poll the epoch and re-read the states.
  /// Id `id` is being started (as OS process `os_pid`, once known: call again).
  void set_starting(int id, int os_pid = 0) const;
  /// `id` is a member: it answers messages from now on. Bumps the epoch.
  void set_alive(int id, int os_pid = 0) const;
  /// `id` is gone for `reason` ("killed by SIGKILL"): the reason first, then the state, once
  /// (the first reason stays: other processes may be reading it). Bumps the epoch and rings
  /// every process's doorbell, so each fails what it waits for from `id`. False if already dead.
  bool set_dead(int id, const std::string& reason) const;

 private:
  void check_id(int id, const char* what) const {
    if (!valid_id(id)) [[unlikely]]
      bad_id(id, what);
  }
  [[noreturn]] void bad_id(int id, const char* what) const;
  void map(std::uint64_t bytes);
  int fd_ = -1;
  char* base_ = nullptr;
  std::uint64_t mapped_ = 0;
};

/// Append one record if it fits; false when the ring is full.
bool ring_try_write(const Segment& seg, RingHeader& r, const MsgHeader& h, const void* body1, std::size_t n1,
                    const void* body2, std::size_t n2);

// Futex on shared memory (no private flag: waiter and waker may be different processes).
int futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const timespec* timeout);
int futex_wake(std::atomic<std::uint32_t>& word, int count);
// The doorbell's sleepers say what they sleep for: idle executors (kBellExec: a call to run),
// threads waiting on an answer (kBellWait), and the progress thread (kBellProgress), which a
// sender wakes only when there was no executor or waiter to wake.
inline constexpr std::uint32_t kBellExec = 1, kBellProgress = 2, kBellWait = 4;
int futex_wait_bits(std::atomic<std::uint32_t>& word, std::uint32_t expected, std::uint32_t bits, long timeout_ns);
int futex_wake_bits(std::atomic<std::uint32_t>& word, int count, std::uint32_t bits);
/// Ring a process's doorbell: wake its threads sleeping for `bits`, or else its progress thread.
void ring_doorbell(std::atomic<std::uint32_t>& doorbell, std::uint32_t bits = kBellExec | kBellWait);
/// Who a message of this kind concerns at the receiver.
inline std::uint32_t bell_bits_for(std::uint16_t kind) {
  switch (kind) {
    case kCallFetch:
    case kCallRef:
    case kCallDo: return kBellExec;
    case kResult: return kBellWait;
    default: return kBellProgress;  // store queries, references, exit: any poller answers
  }
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace vscale::detail
