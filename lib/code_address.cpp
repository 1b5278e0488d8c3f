// Code addresses that mean the same in every process of the job.
//
// All processes run the same binary with the same libraries, but each is loaded at its own
// random base (ASLR, PIE). An address is therefore sent as (which object, offset in it); the
// object is named by a hash of its path as the dynamic linker reports it ("" for the program).
#include <link.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "vscale/detail/hash.hpp"
#include "vscale/serialize.hpp"

namespace vscale::detail {

namespace {

struct Object {
  std::uintptr_t lo, hi, base;
  std::uint64_t key;
};

std::uint64_t fnv1a(const char* s) {
  Fnv1a h;
  h.add_cstr(s);
  return h.value;
}

std::mutex table_mutex;
std::vector<Object> table;  // guarded by table_mutex

// Bumped by every rebuild: each thread's remembered object (encode_code) is then stale.
std::atomic<std::uint64_t> generation{1};

void rebuild() {
  generation.fetch_add(1, std::memory_order_release);  // every thread's remembered object
  table.clear();
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) -> int {
        std::uint64_t key = fnv1a(info->dlpi_name ? info->dlpi_name : "");
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD) continue;
          std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          table.push_back({lo, lo + ph.p_memsz, info->dlpi_addr, key});
        }
        return 0;
      },
      nullptr);
}

const Object* find_by_address(std::uintptr_t a) {
  for (const auto& o : table)
    if (a >= o.lo && a < o.hi) return &o;
  return nullptr;
}

const Object* find_by_key(std::uint64_t k) {
  for (const auto& o : table)
    if (o.key == k) return &o;
  return nullptr;
}

}  // namespace

// Each thread remembers the last object it named or found (a stream of calls names one
// function again and again): no lock and no search then. `generation` tells it that the
// table was rebuilt since.
CodeRef encode_code(const void* address) {
  auto a = reinterpret_cast<std::uintptr_t>(address);
  thread_local Object last{};
  thread_local std::uint64_t last_gen = 0;
  if (last_gen == generation.load(std::memory_order_acquire) && a >= last.lo && a < last.hi)
    return {last.key, a - last.base};
  std::lock_guard lk(table_mutex);
  const Object* o = find_by_address(a);
  if (!o) {
    rebuild();  // a library may have been loaded since
    o = find_by_address(a);
  }
  if (!o) throw Error("vscale: cannot ship a function that is not in any loaded object");
  last = *o;
  last_gen = generation.load(std::memory_order_relaxed);
  return {o->key, a - o->base};
}

const void* decode_code(CodeRef ref) {
  thread_local Object last{};
  thread_local std::uint64_t last_gen = 0;
  if (last_gen == generation.load(std::memory_order_acquire) && ref.object == last.key)
    return reinterpret_cast<const void*>(last.base + ref.offset);
  std::lock_guard lk(table_mutex);
  const Object* o = find_by_key(ref.object);
  if (!o) {
    rebuild();
    o = find_by_key(ref.object);
  }
  if (!o)
    throw Error("vscale: a remote call names code in a library this process has not loaded "
                "(load the same libraries in every process, e.g. with everywhere)");
  last = *o;
  last_gen = generation.load(std::memory_order_relaxed);
  return reinterpret_cast<const void*>(o->base + ref.offset);
}

}  // namespace vscale::detail
