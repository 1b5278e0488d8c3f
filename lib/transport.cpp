// Control segment and rings (see vscale/detail/transport.hpp for the layout and protocol).
#include "vscale/detail/transport.hpp"

#include "vscale/cluster.hpp"

#include <linux/futex.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "vscale/cluster.hpp"
#include "vscale/errors.hpp"

namespace vscale::detail {

namespace {
constexpr std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }
constexpr std::uint64_t round16(std::uint64_t v) { return (v + 15) & ~std::uint64_t(15); }
constexpr std::uint64_t round64(std::uint64_t v) { return (v + 63) & ~std::uint64_t(63); }
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

void Segment::create(std::uint32_t max_procs, std::uint64_t ring_bytes, std::uint64_t bulk_bytes, std::uint32_t node) {
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
  h.node = node;
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

std::string Segment::dead_reason(int id) const {
  if (!valid_id(id)) return "does not exist (no such process id)";
  auto& s = slot(id);
  auto st = s.state.load(std::memory_order_acquire);
  if (st == std::uint32_t(SlotState::Dead))
    // The reason alone ("killed by SIGKILL"): ProcessExitedException's what() adds "is gone".
    return s.reason[0] ? std::string(s.reason, strnlen(s.reason, sizeof s.reason)) : std::string("exited");
  if (st == std::uint32_t(SlotState::Starting)) return "has not finished starting";
  return "does not exist (no such process id)";
}

void Segment::set_starting(int id, int os_pid, int node) const {
  auto& s = slot(id);
  s.node.store(node < 0 ? header().node : std::uint32_t(node));
  if (os_pid > 0) s.os_pid.store(os_pid);
  s.state.store(std::uint32_t(SlotState::Starting));
}

void Segment::set_alive(int id, int os_pid) const {
  auto& s = slot(id);
  if (os_pid > 0) s.os_pid.store(os_pid);
  s.state.store(std::uint32_t(SlotState::Alive));
  header().epoch.fetch_add(1);
}

bool Segment::set_dead(int id, const std::string& reason, bool expected) const {
  auto& s = slot(id);
  if (s.state.load() == std::uint32_t(SlotState::Dead)) return false;
  s.expected.store(expected ? 1 : 0);
  const std::size_t n = std::min(sizeof s.reason - 1, reason.size());
  std::memcpy(s.reason, reason.data(), n);
  s.reason[n] = 0;
  s.state.store(std::uint32_t(SlotState::Dead));
  header().epoch.fetch_add(1);
  futex_wake(header().epoch, INT_MAX);  // who waits for a death (MpiManager::remove)
  for (int other = 1; valid_id(other); ++other) {
    auto& o = slot(other);
    if (o.state.load() == std::uint32_t(SlotState::Unused)) break;  // ids are handed out in order
    ring_doorbell(o.doorbell);
  }
  return true;
}

// ---------------------------------------------------------------- Inbound

Inbound& Inbound::operator=(Inbound&& o) noexcept {
  if (this != &o) {
    release();
    src = o.src;
    kind = o.kind;
    len = o.len;
    consumed = o.consumed;
    o.consumed = nullptr;
    if (o.body == o.small) {
      std::memcpy(small, o.small, len);
      body = small;
      heap.clear();
    } else if (o.body == o.heap.data() && !o.heap.empty()) {
      heap = std::move(o.heap);
      body = heap.data();
    } else {
      heap = std::move(o.heap);
      body = o.body;
    }
    o.body = nullptr;
    o.len = 0;
  }
  return *this;
}

void Inbound::assign(const char* p, std::size_t n) {
  if (n <= kSmall) {
    if (n) std::memcpy(small, p, n);
    body = small;
  } else {
    heap.assign(p, p + n);
    body = heap.data();
  }
  len = n;
}

void Inbound::own() {
  if (!consumed) return;
  heap.assign(body, body + len);  // not `small`: callers keep pointers into a big body
  body = heap.data();
  release();
}

void Inbound::release() noexcept {
  if (consumed) {
    consumed->store(1, std::memory_order_release);
    consumed = nullptr;
  }
}

// ---------------------------------------------------------------- BulkArea

void BulkArea::init(char* base, std::uint64_t size, int fd, std::uint64_t file_offset) {
  base_ = base;
  size_ = size;
  fd_ = fd;
  file_offset_ = file_offset;
  free_.clear();
  free_[0] = size;
}

void BulkArea::release(std::uint64_t off, std::uint64_t len) {
  // Give big blocks' memory back to the system; small ones stay warm for reuse.
  if (len >= (std::uint64_t(64) << 20) && fd_ >= 0) {
    std::uint64_t lo = (off + 4095) & ~std::uint64_t(4095), hi = (off + len) & ~std::uint64_t(4095);
    if (hi > lo)
      (void)fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(file_offset_ + lo),
                      static_cast<off_t>(hi - lo));
  }
  auto it = free_.emplace(off, len).first;
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == it->first) {
      prev->second += it->second;
      free_.erase(it);
      it = prev;
    }
  }
  auto next = std::next(it);
  if (next != free_.end() && it->first + it->second == next->first) {
    it->second += next->second;
    free_.erase(next);
  }
}

void BulkArea::sweep(const std::vector<std::atomic<std::uint8_t>>& dead) {
  for (std::size_t i = 0; i < out_.size();) {
    auto* blk = reinterpret_cast<BulkBlock*>(base_ + out_[i].off);
    if (blk->consumed.load(std::memory_order_acquire) || dead[out_[i].dest - 1].load()) {
      release(out_[i].off, out_[i].len);
      out_[i] = out_.back();
      out_.pop_back();
    } else {
      ++i;
    }
  }
}

std::int64_t BulkArea::alloc(std::uint64_t len, int dest, const std::vector<std::atomic<std::uint8_t>>& dead) {
  const std::uint64_t need = round64(sizeof(BulkBlock) + len);
  std::lock_guard lk(m_);
  sweep(dead);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    std::uint64_t off = it->first, rest = it->second - need;
    free_.erase(it);
    if (rest) free_[off + need] = rest;
    out_.push_back({off, need, dest});
    auto* blk = new (base_ + off) BulkBlock;
    blk->consumed.store(0, std::memory_order_relaxed);
    blk->len = len;
    return static_cast<std::int64_t>(off);
  }
  return -1;
}

void BulkArea::cancel(std::int64_t off) {
  std::lock_guard lk(m_);
  for (std::size_t i = 0; i < out_.size(); ++i)
    if (out_[i].off == std::uint64_t(off)) {
      release(out_[i].off, out_[i].len);
      out_[i] = out_.back();
      out_.pop_back();
      return;
    }
}


// ---------------------------------------------------------------- ShmTransport

void ShmTransport::start(int self) {
  self_ = self;
  const std::uint32_t n = seg_.max_procs();
  out_.clear();
  for (std::uint32_t i = 0; i < n; ++i) out_.push_back(std::make_unique<Out>());
  dead_ = std::vector<std::atomic<std::uint8_t>>(n);
  auto& h = seg_.header();
  bulk_.init(seg_.bulk(self_), h.bulk_bytes, seg_.fd(), h.bulk_off + std::uint64_t(self_ - 1) * h.bulk_bytes);
}

bool ShmTransport::send(int dest, const MsgHeader& h, const void* a, std::size_t na, const void* b, std::size_t nb,
                        bool queue_if_full, std::uint32_t wake_bits) {
  Out& o = *out_[dest - 1];
  std::uint64_t before = 0;
  {
    std::lock_guard lk(o.m);
    if (!flush_overflow(dest, o) || !emit_record(seg_, bulk_, dead_, dest, h, a, na, b, nb, &before)) {
      if (!queue_if_full) return false;
      // Whoever polls here sends it later (flush_overflow), and wakes dest then.
      std::vector<char> rec(sizeof h + na + nb);
      std::memcpy(rec.data(), &h, sizeof h);
      if (na) std::memcpy(rec.data() + sizeof h, a, na);
      if (nb) std::memcpy(rec.data() + sizeof h + na, b, nb);
      o.overflow.push_back(std::move(rec));
      overflow_pending_.fetch_add(1);
      messages_sent_.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  messages_sent_.fetch_add(1, std::memory_order_relaxed);
  // Earlier messages of ours still unread there: the receiver is bound to find this one with
  // them. wake_after_record's fence orders our record before its reads of the receiver's
  // awake word and tail, and the receiver fences between storing its tail and looking at the
  // ring again (drain_ring; it always looks again, see the port's comment), so one of the two
  // sees the other: either we see the ring drained and wake, or the receiver sees our record.
  wake_after_record(seg_, dest, self_, before, wake_bits);
  return true;
}

void ShmTransport::wait_for_room(int dest, long timeout_ns) {
  RingHeader& ring = seg_.ring(dest, self_);
  std::uint32_t seq = ring.space_seq.load(std::memory_order_acquire);
  ring.writer_waiting.fetch_add(1, std::memory_order_seq_cst);
  // The receiver bumps space_seq when it frees room and sees a writer waiting; the timeout
  // covers a bulk area that fills up (its blocks are released without a wake-up).
  timespec ts{timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  futex_wait(ring.space_seq, seq, &ts);
  ring.writer_waiting.fetch_sub(1);
}

bool ShmTransport::poll(const std::vector<int>& peers, MessageSink sink, void* ctx, std::size_t per_peer) {
  bool did = false;
  for (int peer : peers) {
    if (!seg_.ring_ready(seg_.ring(self_, peer))) continue;
    drain_from(peer, sink, ctx, per_peer);
    did = true;
  }
  if (overflow_pending_.load() > 0) {
    for (int p : peers) {
      Out& o = *out_[p - 1];
      std::unique_lock olk(o.m, std::try_to_lock);
      if (olk && !o.overflow.empty()) flush_overflow(p, o);
    }
  }
  return did;
}

bool ShmTransport::pending(const std::vector<int>& peers) {
  if (overflow_pending_.load() > 0) return true;
  for (int p : peers)
    if (seg_.ring_ready(seg_.ring(self_, p))) return true;
  return false;
}

void ShmTransport::forget(int id, MessageSink sink, void* ctx) {
  if (dead_[id - 1].exchange(1)) return;
  // What a dead process wrote completely before dying is still valid (a kCallRef whose
  // Future it already handed on, say): read it once.
  drain_from(id, sink, ctx);
  Out& o = *out_[id - 1];
  std::lock_guard lk(o.m);
  overflow_pending_.fetch_sub(static_cast<int>(o.overflow.size()));
  o.overflow.clear();
}

bool emit_record(const Segment& seg, BulkArea& bulk, const std::vector<std::atomic<std::uint8_t>>& dead, int dest,
                 const MsgHeader& h0, const void* a, std::size_t na, const void* b, std::size_t nb,
                 std::uint64_t* before) {
  RingHeader& ring = seg.ring(dest, h0.src);
  if (before) *before = ring.head.load(std::memory_order_relaxed);  // we are the only producer
  MsgHeader h = h0;
  const std::size_t body = na + nb;
  bool ok;
  // Inline only what fits a quarter of the ring: a record of more than half the ring may
  // never fit however long we wait (the wrap padding before it takes the rest), and a small
  // VSCALE_RING_KB must still carry every message. A bulk descriptor (32 bytes) always fits.
  if (body <= kInlineMax && round16(sizeof(MsgHeader) + body) <= seg.header().ring_bytes / 4) {
    h.len = static_cast<std::uint32_t>(body);
    ok = ring_try_write(seg, ring, h, a, na, b, nb);
  } else {
    if (body + sizeof(BulkBlock) > bulk.size())
      throw Error("vscale: a message of " + std::to_string(body >> 20) + " MiB is larger than the bulk area (" +
                  std::to_string(bulk.size() >> 20) + " MiB); raise VSCALE_BULK_MB");
    std::int64_t off = bulk.alloc(body, dest, dead);
    if (off < 0) return false;
    char* p = bulk.at(off) + sizeof(BulkBlock);
    if (na) std::memcpy(p, a, na);
    if (nb) std::memcpy(p + na, b, nb);
    std::uint64_t desc[2] = {std::uint64_t(off), body};
    h.flags |= kFlagBulk;
    h.len = sizeof desc;
    ok = ring_try_write(seg, ring, h, desc, sizeof desc, nullptr, 0);
    if (!ok) bulk.cancel(off);
  }
  return ok;
}

bool ShmTransport::flush_overflow(int dest, Out& o) {
  bool wrote = false;
  while (!o.overflow.empty()) {
    auto& rec = o.overflow.front();
    MsgHeader h;
    std::memcpy(&h, rec.data(), sizeof h);
    if (!emit_record(seg_, bulk_, dead_, dest, h, rec.data() + sizeof h, rec.size() - sizeof h, nullptr, 0, nullptr))
      break;
    o.overflow.pop_front();
    overflow_pending_.fetch_sub(1);
    wrote = true;
  }
  if (wrote) wake(dest, kBellExec | kBellWait);
  return o.overflow.empty();
}

void ShmTransport::wake(int dest, std::uint32_t bits) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  wake_if_idle(seg_, dest, bits);
}

namespace {
// What a sender owes `dest` (after a seq_cst fence): nothing while one of its threads polls.
enum class WakeDue { None, Gateway, Doorbell, Sleepers };
WakeDue wake_due(const Segment& seg, int dest) {
  if (seg.remote(dest)) [[unlikely]]
    return seg.header().gw_awake.load(std::memory_order_seq_cst) == 0 ? WakeDue::Gateway : WakeDue::None;
  auto& slot = seg.slot(dest);
  const std::uint32_t awake = slot.awake.load(std::memory_order_seq_cst);
  if (awake == 0) return WakeDue::Doorbell;
  // Only calls under a busy mark will look, at their end: wake who sleeps for this (the
  // progress thread ticks meanwhile).
  if (slot.dozing.load(std::memory_order_seq_cst) > 0 && awake == slot.busy.load(std::memory_order_seq_cst))
    return WakeDue::Sleepers;
  return WakeDue::None;
}
void pay(const Segment& seg, int dest, WakeDue due, std::uint32_t bits) {
  switch (due) {
    case WakeDue::None: break;
    case WakeDue::Gateway: {
      auto& h = seg.header();
      h.gw_doorbell.fetch_add(1, std::memory_order_seq_cst);
      futex_wake(h.gw_doorbell, 1);
      break;
    }
    case WakeDue::Doorbell: ring_doorbell(seg.slot(dest).doorbell, bits); break;
    case WakeDue::Sleepers: ring_doorbell(seg.slot(dest).doorbell, bits, false); break;
  }
}
}  // namespace

void wake_if_idle(const Segment& seg, int dest, std::uint32_t bits) { pay(seg, dest, wake_due(seg, dest), bits); }

void wake_after_record(const Segment& seg, int dest, int src, std::uint64_t before, std::uint32_t bits) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const WakeDue due = wake_due(seg, dest);
  // The tail only now: a receiver that polls has it on its own core, and keeps it there.
  if (due == WakeDue::None || seg.ring(dest, src).tail.load(std::memory_order_relaxed) != before) return;
  pay(seg, dest, due, bits);
}

namespace {
struct InboundSink {
  int peer;
  MessageSink sink;
  void* ctx;
};
}  // namespace

void ShmTransport::drain_from(int peer, MessageSink sink, void* ctx, std::size_t max_records) {
  InboundSink is{peer, sink, ctx};
  drain_ring(seg_, self_, peer, [](void* c, const MsgHeader& h, const char* body, std::size_t len,
                                   std::atomic<std::uint32_t>* consumed) {
    auto& s = *static_cast<InboundSink*>(c);
    Inbound m;
    m.src = s.peer;
    m.kind = h.kind;
    if (consumed) {
      m.consumed = consumed;
      m.body = body;
      m.len = len;
    } else {
      m.assign(body, len);
    }
    s.sink(s.ctx, std::move(m));  // the sink lets no exception out
  }, &is, max_records);
}

void drain_ring(const Segment& seg, int to, int from, RecordSink sink, void* ctx, std::size_t max_records) {
  RingHeader& r = seg.ring(to, from);
  const std::uint64_t cap = seg.header().ring_bytes;
  const std::uint64_t start = r.tail.load(std::memory_order_relaxed);
  std::uint64_t pos = start;
  char* data = seg.ring_data(r);
  // Until the first record not yet complete; at most one ring's worth, since the producer
  // gets no room back before the tail below.
  for (std::size_t n = 0; n < max_records;) {
    RecordHeader* rh = complete_record(data, cap, pos);
    if (!rh) break;
    if (rh->kind == kWrap) {
      pos += cap - pos % cap;
      continue;
    }
    MsgHeader h{};
    h.len = rh->len;
    h.kind = rh->kind;
    h.flags = rh->flags;
    h.src = from;
    const char* body = reinterpret_cast<const char*>(rh + 1);
    if (h.flags & kFlagBulk) {
      std::uint64_t desc[2];
      std::memcpy(desc, body, sizeof desc);
      char* blk = seg.bulk(from) + desc[0];
      sink(ctx, h, blk + sizeof(BulkBlock), desc[1], &reinterpret_cast<BulkBlock*>(blk)->consumed);
    } else {
      sink(ctx, h, body, h.len, nullptr);
    }
    pos += round16(sizeof(RecordHeader) + h.len);
    ++n;
  }
  if (pos == start) return;
  r.tail.store(pos, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (r.writer_waiting.load(std::memory_order_relaxed)) {
    r.space_seq.fetch_add(1);
    futex_wake(r.space_seq, INT_MAX);
  }
}


bool ring_try_write(const Segment& seg, RingHeader& r, const MsgHeader& h, const void* body1, std::size_t n1,
                    const void* body2, std::size_t n2) {
  const std::uint64_t cap = seg.header().ring_bytes;
  const std::uint64_t rec = round_up(sizeof(RecordHeader) + n1 + n2, 16);
  const std::uint64_t head = r.head.load(std::memory_order_relaxed);
  const std::uint64_t off = head % cap;
  const std::uint64_t pad = (off + rec > cap) ? cap - off : 0;  // skip to the start when it would wrap
  // The record, and the block after it that we clear: all of it must be consumed space.
  const std::uint64_t end = head + pad + rec + sizeof(RecordHeader);
  if (end - r.tail_seen > cap) {
    r.tail_seen = r.tail.load(std::memory_order_acquire);
    if (end - r.tail_seen > cap) return false;
  }
  char* data = seg.ring_data(r);
  auto clear = [](char* at) { std::atomic_ref<std::uint64_t>(reinterpret_cast<RecordHeader*>(at)->stamp).store(0, std::memory_order_relaxed); };
  auto publish = [](char* at, std::uint64_t pos) {
    std::atomic_ref<std::uint64_t>(reinterpret_cast<RecordHeader*>(at)->stamp).store(record_stamp(pos), std::memory_order_release);
  };
  std::uint64_t pos = head;
  if (pad) {
    auto* w = reinterpret_cast<RecordHeader*>(data + off);
    w->len = 0;
    w->kind = kWrap;
    w->flags = 0;
    clear(data);  // where the record goes: the consumer will look there once it sees the wrap
    publish(data + off, pos);
    pos += pad;
  }
  char* p = data + pos % cap;
  auto* rh = reinterpret_cast<RecordHeader*>(p);
  rh->len = static_cast<std::uint32_t>(n1 + n2);
  rh->kind = h.kind;
  rh->flags = h.flags;
  if (n1) std::memcpy(p + sizeof(RecordHeader), body1, n1);
  if (n2) std::memcpy(p + sizeof(RecordHeader) + n1, body2, n2);
  clear(data + (pos + rec) % cap);  // the next record's place: no stamp of an earlier lap there
  publish(p, pos);
  r.head.store(pos + rec, std::memory_order_relaxed);
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

void ring_doorbell(std::atomic<std::uint32_t>& doorbell, std::uint32_t bits, bool or_progress) {
  doorbell.fetch_add(1, std::memory_order_seq_cst);
  if (bits == kBellProgress || (futex_wake_bits(doorbell, bits == kBellExec ? 1 : INT_MAX, bits) <= 0 && or_progress))
    futex_wake_bits(doorbell, 1, kBellProgress);
}

int futex_wake(std::atomic<std::uint32_t>& word, int count) {
  return static_cast<int>(
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr, 0));
}

}  // namespace vscale::detail
