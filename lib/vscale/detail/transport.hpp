// The shared-memory transport: one memfd control segment mapped by every process.
//
// Layout: [header][one slot per process id][a ring per ordered pair (to, from)][a bulk area
// per sender]. Process id `i` uses slot/ring/bulk index i-1; ids are never reused, so nothing
// in the segment is ever recycled while someone may still read it. The file is sparse: only
// the rings and bulk pages actually touched take memory.
//
// A ring is single-producer (the sender process, serialised by a per-destination mutex) and
// single-consumer (whichever thread of the receiver holds its poll lock). Records are 16-byte
// aligned: a RecordHeader then the body. Bodies larger than kInlineMax travel in the sender's
// bulk area and the ring carries only {offset, length}. Positions are byte counts that only
// grow. A record says itself that it is complete: its header's stamp, written last, is a
// function of its position, so the consumer polls the record at its own position (one cache
// line, the record's own) instead of a head word and then the record (two lines, one after the
// other). The producer clears the stamp of the block after each record before publishing it,
// so the consumer never finds an old stamp where the next record will go. The consumer
// publishes its tail once per drain; the producer reads it only when its last look says the
// ring is full (RingHeader::tail_seen), and the sender's wake-up check reads the receiver's
// awake word first, the tail only when a wake-up is due: while both sides are busy neither
// pulls the other's position word to its core.
//
// Waking: a receiver thread that polls counts itself in `awake`; a sender bumps the receiver's
// `doorbell` and FUTEX_WAKEs it only when nobody is awake there (or when only busy calls are,
// and threads of it sleep: see ProcSlot::busy). Futexes are shared (no
// FUTEX_PRIVATE_FLAG) because the waiter and the waker are different processes.
#pragma once

#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
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
  std::atomic<std::uint32_t> node;  // the node it runs on (0 on one host; an MPI rank under mpirun)
  char reason[120];  // why it is dead, written by the master before state becomes Dead
  std::atomic<std::uint32_t> expected;  // its end was asked for (rmprocs): no one reports it as a death
  alignas(64) std::atomic<std::uint32_t> doorbell;
  std::atomic<std::uint32_t> awake;
  // The threads asleep on the doorbell (not the progress thread).
  std::atomic<std::uint32_t> dozing;
  // Of `awake`: calls running under a busy mark (runtime.cpp, enter_busy), which look at the
  // rings only when they are done or at the progress thread's next tick. A sender that finds
  // only busy marks awake wakes the sleepers, not the progress thread. On a line of its own:
  // it changes with every call, `awake` and `dozing`, which every send reads, need not.
  alignas(64) std::atomic<std::uint32_t> busy;
};

struct alignas(64) SegHeader {
  std::uint64_t magic;
  std::uint32_t max_procs;
  std::uint32_t job_cpus;  // the master's usable CPUs: the job's spin budget (workers may be pinned to fewer)
  std::uint64_t ring_bytes;  // data bytes per ring
  std::uint64_t ring_stride;
  std::uint64_t bulk_bytes;  // per sender
  std::uint64_t slots_off, rings_off, bulk_off, total_bytes;
  std::uint32_t node;  // the node this segment serves: processes whose slot says another are remote
  alignas(64) std::atomic<std::uint32_t> epoch;  // bumped by the master on every membership change
  // Threads of the whole job spinning right now. Spinning only pays while there are idle
  // CPUs: a spinner that gets descheduled still counts as awake, and nobody wakes its
  // process until it runs again.
  alignas(64) std::atomic<std::int32_t> spinners;
  // The node's MPI gateway (mpi_node.hpp) drains the rings to remote processes: senders
  // ring this instead of a remote process's own doorbell, unless the gateway is awake.
  alignas(64) std::atomic<std::uint32_t> gw_doorbell;
  std::atomic<std::uint32_t> gw_awake;
};

struct RingHeader {
  // The producer's own line: where its next record goes, and the tail it last read.
  alignas(64) std::atomic<std::uint64_t> head;
  std::uint64_t tail_seen;
  alignas(64) std::atomic<std::uint64_t> tail;  // written by the consumer: all before it is consumed
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

/// A record's header in a ring (the ring names the source). `stamp` is written last, with
/// release: record_stamp(position) once the header and the body are complete.
struct RecordHeader {
  std::uint32_t len;  // body bytes
  std::uint16_t kind;
  std::uint16_t flags;
  std::uint64_t stamp;
};
static_assert(sizeof(RecordHeader) == 16);
/// Never 0 (what an unwritten or cleared block holds) for a position a ring reaches, and
/// different for the same offset in different laps of the ring.
inline std::uint64_t record_stamp(std::uint64_t pos) noexcept { return pos ^ 0x9e3779b97f4a7c15ull; }
/// The record at position `pos` of a ring's data (`cap` bytes), or null while it is not complete.
inline RecordHeader* complete_record(char* data, std::uint64_t cap, std::uint64_t pos) noexcept {
  auto* h = reinterpret_cast<RecordHeader*>(data + pos % cap);
  return std::atomic_ref<std::uint64_t>(h->stamp).load(std::memory_order_acquire) == record_stamp(pos) ? h : nullptr;
}

// Message kinds are the protocol's (protocol.hpp); the transport only knows its own padding.
inline constexpr std::uint16_t kWrap = 0xffff;  // padding to the end of the ring
inline constexpr std::uint16_t kFlagBulk = 1;
/// Bodies up to this go inline in a ring (if they fit a quarter of it); larger ones go through
/// the sender's bulk area and the ring carries {offset, length}.
inline constexpr std::size_t kInlineMax = 8 * 1024;

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

  /// Master (or an MPI node leader, for node `node`): create the memfd and map it.
  void create(std::uint32_t max_procs, std::uint64_t ring_bytes, std::uint64_t bulk_bytes, std::uint32_t node = 0);
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
  char* ring_data(const RingHeader& r) const noexcept {
    return reinterpret_cast<char*>(const_cast<RingHeader*>(&r)) + 256;
  }
  /// The consumer's look: whether ring `r` holds a complete record it has not consumed.
  bool ring_ready(const RingHeader& r) const noexcept {
    return complete_record(ring_data(r), header().ring_bytes, r.tail.load(std::memory_order_relaxed)) != nullptr;
  }
  char* bulk(int id) const {
    check_id(id, "bulk area");
    return base_ + header().bulk_off + std::uint64_t(id - 1) * header().bulk_bytes;
  }
  bool valid_id(int id) const noexcept { return id >= 1 && std::uint32_t(id) <= header().max_procs; }
  /// Whether `id` runs on another node (its messages go through the node's MPI gateway).
  bool remote(int id) const { return slot(id).node.load(std::memory_order_relaxed) != header().node; }
  /// Why `id` cannot be reached ("killed by SIGKILL", "has not finished starting", ...).
  std::string dead_reason(int id) const;

  // --- membership: the only writers of slot states and of the epoch (the master's cluster
  // manager, and start_master for process 1). Readers poll the epoch and re-read the states.
  /// Id `id` is being started on node `node` (-1: this one) as OS process `os_pid` (once
  /// known: call again). A process on another node is reached through the gateway.
  void set_starting(int id, int os_pid = 0, int node = -1) const;
  /// `id` is a member: it answers messages from now on. Bumps the epoch.
  void set_alive(int id, int os_pid = 0) const;
  /// `id` is gone for `reason` ("killed by SIGKILL"): the reason first, then the state, once
  /// (the first reason stays: other processes may be reading it). Bumps the epoch and rings
  /// every process's doorbell, so each fails what it waits for from `id`. False if already dead.
  /// `expected`: its end was asked for (rmprocs), so no node reports it as a death.
  bool set_dead(int id, const std::string& reason, bool expected = false) const;

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

/// A received message. Small bodies are copied out of the ring (into the object itself up to
/// kSmall bytes, so that a short call costs no allocation); a bulk body stays in the sender's
/// bulk area until this object is destroyed or own() is called, which tells the sender it may
/// reuse it. Moving an Inbound may move its body: take pointers into it after the last move.
struct Inbound {
  static constexpr std::size_t kSmall = 96;
  int src = 0;
  std::uint16_t kind = 0;
  const char* body = nullptr;
  std::size_t len = 0;
  std::vector<char> heap;
  std::atomic<std::uint32_t>* consumed = nullptr;
  alignas(16) char small[kSmall];

  Inbound() = default;
  Inbound(Inbound&& o) noexcept { *this = std::move(o); }
  Inbound& operator=(Inbound&& o) noexcept;
  ~Inbound() { release(); }
  /// Copy `n` bytes at `p` in as the body.
  void assign(const char* p, std::size_t n);
  /// Copy a body that lives in the sender's bulk area into this object and release the block.
  void own();
  void release() noexcept;
};

/// One sender's bulk area: first-fit blocks, reclaimed once the receiver marks them consumed.
class BulkArea {
 public:
  void init(char* base, std::uint64_t size, int fd, std::uint64_t file_offset);
  /// Returns the offset of a block with room for `len` bytes, or -1 when there is none now.
  std::int64_t alloc(std::uint64_t len, int dest, const std::vector<std::atomic<std::uint8_t>>& dead);
  void cancel(std::int64_t off);
  char* at(std::int64_t off) const { return base_ + off; }
  std::uint64_t size() const { return size_; }

 private:
  struct Out {
    std::uint64_t off, len;
    int dest;
  };
  void sweep(const std::vector<std::atomic<std::uint8_t>>& dead);
  void release(std::uint64_t off, std::uint64_t len);
  std::mutex m_;
  char* base_ = nullptr;
  std::uint64_t size_ = 0;
  int fd_ = -1;
  std::uint64_t file_offset_ = 0;
  std::map<std::uint64_t, std::uint64_t> free_;  // offset -> length
  std::vector<Out> out_;
};

/// Append one record if it fits; false when the ring is full.
bool ring_try_write(const Segment& seg, RingHeader& r, const MsgHeader& h, const void* body1, std::size_t n1,
                    const void* body2, std::size_t n2);

/// Write one message from `src` into ring (dest, src): inline when it fits a quarter of the ring
/// and kInlineMax, otherwise through `bulk` (src's bulk area) with only {offset, length} in
/// the ring. False when the ring or the bulk area is full now. `before` (if given): the ring's
/// position before this record, for wake_after_record. Throws Error when the body can never
/// fit the bulk area.
bool emit_record(const Segment& seg, BulkArea& bulk, const std::vector<std::atomic<std::uint8_t>>& dead, int dest,
                 const MsgHeader& h, const void* a, std::size_t na, const void* b, std::size_t nb,
                 std::uint64_t* before = nullptr);

/// What drain_ring hands over for each record: its header, its body, and for a bulk body the
/// flag to set once the body is no longer needed (null for an inline one, which is gone when
/// the call returns).
using RecordSink = void (*)(void* ctx, const MsgHeader& h, const char* body, std::size_t len,
                            std::atomic<std::uint32_t>* consumed);
/// Consume everything in ring (to, from); wakes a writer waiting for room.
void drain_ring(const Segment& seg, int to, int from, RecordSink sink, void* ctx,
                std::size_t max_records = SIZE_MAX);

/// Wake `dest`'s threads sleeping for `bits` unless one of its threads polls; for a remote
/// dest, wake this node's gateway instead. Call after a seq_cst fence.
void wake_if_idle(const Segment& seg, int dest, std::uint32_t bits);
/// After emit_record put a record at `before` in ring (dest, src): wake_if_idle, unless what
/// src wrote before the record still waits unread there, for then the receiver is bound to find
/// this one with it (it looks again after publishing its tail: see ShmTransport::send). Fences
/// itself.
void wake_after_record(const Segment& seg, int dest, int src, std::uint64_t before, std::uint32_t bits);

// Futex on shared memory (no private flag: waiter and waker may be different processes).
int futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const timespec* timeout);
int futex_wake(std::atomic<std::uint32_t>& word, int count);
// The doorbell's sleepers say what they sleep for: idle executors (kBellExec: a call to run),
// threads waiting on an answer (kBellWait), and the progress thread (kBellProgress), which a
// sender wakes only when there was no executor or waiter to wake.
inline constexpr std::uint32_t kBellExec = 1, kBellProgress = 2, kBellWait = 4;
int futex_wait_bits(std::atomic<std::uint32_t>& word, std::uint32_t expected, std::uint32_t bits, long timeout_ns);
int futex_wake_bits(std::atomic<std::uint32_t>& word, int count, std::uint32_t bits);
/// Ring a process's doorbell: wake its threads sleeping for `bits`, or else (`or_progress`)
/// its progress thread.
void ring_doorbell(std::atomic<std::uint32_t>& doorbell, std::uint32_t bits = kBellExec | kBellWait,
                   bool or_progress = true);

// ================================================================= the transport port
//
// What the runtime needs of a transport, and what a second one (MPI between nodes) provides:
//
// - Framed messages: a MsgHeader (kind, flags, source) and a body of any length up to what
//   the transport can carry (here: the bulk area, VSCALE_BULK_MB; larger is an Error that
//   says so). The body arrives as one contiguous Inbound, which may point into the
//   transport's memory until the Inbound is released.
// - Order: per ordered pair (src, dest), messages arrive in the order sent, queued ones
//   included. Nothing is promised across pairs.
// - Progress: the receiver progresses its inbox: whichever of its threads holds the runtime's
//   poll lock calls poll(). A sender never waits for the receiver except when the way to it
//   is full (send returns false; the runtime then waits with wait_for_room while polling its
//   own inbox, so two processes sending to each other cannot deadlock). A thread that must not
//   block (the poller itself) queues instead (queue_if_full), and poll() moves queued
//   messages on. An MPI transport has one progress thread per node leader that makes every
//   MPI call: send hands it the message, poll takes what it received, wake rings the local
//   doorbell of the process the message is for.
// - Waking: send wakes dest itself, and only when dest might otherwise not look: not when one
//   of dest's threads is polling, nor when earlier messages of this pair still wait there
//   (whoever drains those finds this one too, so a pipelined sender pays no wake-up per
//   message). The receiver's side of that bargain: a thread that drained must look again
//   before it stops polling, or leave that to another (the runtime's PollingMark: the last one
//   out has the progress thread look). wake(dest) tells dest that messages wait, where no
//   thread of dest is polling.
// - Deaths: forget(id) once id is dead: what it wrote completely is still delivered, what is
//   queued for it is dropped.

/// Where poll() delivers each arrived message (the runtime's dispatch), on the polling thread.
using MessageSink = void (*)(void* ctx, Inbound&& m);

class Transport {
 public:
  virtual ~Transport() = default;
  /// Send to `dest` and wake it (its threads sleeping for `wake_bits`) if it might not look;
  /// false when the way is full now and `queue_if_full` is false (nothing was done). Throws
  /// Error when the body can never travel (too large).
  virtual bool send(int dest, const MsgHeader& h, const void* a, std::size_t na, const void* b, std::size_t nb,
                    bool queue_if_full, std::uint32_t wake_bits) = 0;
  /// Sleep until `dest` may have room again, at most `timeout_ns`.
  virtual void wait_for_room(int dest, long timeout_ns) = 0;
  /// Deliver what arrived from `peers` (at most `per_peer` messages from each), then move
  /// queued messages on; true if anything was delivered. One thread at a time.
  virtual bool poll(const std::vector<int>& peers, MessageSink sink, void* ctx, std::size_t per_peer) = 0;
  /// Whether anything from `peers` waits to be polled, or anything waits to be sent.
  virtual bool pending(const std::vector<int>& peers) = 0;
  /// `id` is dead: deliver what it wrote completely, drop what is queued for it.
  virtual void forget(int id, MessageSink sink, void* ctx) = 0;
  /// Tell `dest` that messages wait for it, unless one of its threads is polling.
  virtual void wake(int dest, std::uint32_t bits) = 0;
};

/// The shared-memory transport: one ring per ordered pair in the control segment, bodies over
/// the inline limit through the sender's bulk area, doorbell futexes. Used directly (final)
/// by the runtime for every process on this host; under mpirun, the rings to processes on
/// other nodes are drained by the node's MPI gateway (mpi_node.hpp), which also writes
/// what they send into this node's rings, so the runtime sees one transport.
class ShmTransport final : public Transport {
 public:

  Segment& segment() noexcept { return seg_; }
  const Segment& segment() const noexcept { return seg_; }
  /// Ready the per-destination state of process `self` (after create or attach).
  void start(int self);

  bool send(int dest, const MsgHeader& h, const void* a, std::size_t na, const void* b, std::size_t nb,
            bool queue_if_full, std::uint32_t wake_bits) override;
  void wait_for_room(int dest, long timeout_ns) override;
  bool poll(const std::vector<int>& peers, MessageSink sink, void* ctx, std::size_t per_peer) override;
  bool pending(const std::vector<int>& peers) override;
  void forget(int id, MessageSink sink, void* ctx) override;
  void wake(int dest, std::uint32_t bits) override;
  /// Whether messages wait in the queue for a full ring (the poller retries them soon).
  bool has_queued() const noexcept { return overflow_pending_.load(std::memory_order_relaxed) > 0; }
  /// Messages sent so far (for stats()).
  std::uint64_t messages_sent() const noexcept { return messages_sent_.load(std::memory_order_relaxed); }

 private:
  struct Out {
    std::mutex m;
    // MsgHeader + body, not yet written. A list: an empty one allocates nothing, and there
    // is an Out for every possible destination (VSCALE_MAX_PROCS), most never used.
    std::list<std::vector<char>> overflow;
  };
  bool flush_overflow(int dest, Out& o);  // with o.m held; true when empty afterwards
  void drain_from(int peer, MessageSink sink, void* ctx, std::size_t max_records = SIZE_MAX);

  Segment seg_;
  int self_ = 0;
  std::vector<std::unique_ptr<Out>> out_;
  std::atomic<int> overflow_pending_{0};
  BulkArea bulk_;
  std::vector<std::atomic<std::uint8_t>> dead_;
  std::atomic<std::uint64_t> messages_sent_{0};
};



}  // namespace vscale::detail
