// The extension tier (see vscale/ext.hpp): thin doors into the runtime.
#include "vscale/ext.hpp"

#include "vscale/detail/runtime.hpp"
#include "vscale/detail/transport.hpp"

namespace vscale::ext {

bool session_running() noexcept { return detail::Runtime::current() != nullptr; }
bool is_master() { return detail::Runtime::get("is_master").master(); }
bool alive(int id) { return detail::Runtime::get("alive").alive(id); }
std::string dead_reason(int id) { return detail::Runtime::get("dead_reason").dead_reason(id); }
std::size_t pending_requests_to(int id) { return detail::Runtime::get("pending_requests_to").requests().pending_to(id); }

SpinPlace::SpinPlace() : held_(detail::Runtime::get("spinning").try_spin()) {}
SpinPlace::~SpinPlace() {
  if (!held_) return;
  if (detail::Runtime* rt = detail::Runtime::current()) rt->leave_spin();
}

int futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, long timeout_ns) {
  detail::leave_busy();  // a call that sleeps here must be woken by what is sent to its process
  if (timeout_ns < 0) return detail::futex_wait(word, expected, nullptr);
  timespec ts{timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  return detail::futex_wait(word, expected, &ts);
}

int futex_wake(std::atomic<std::uint32_t>& word, int count) { return detail::futex_wake(word, count); }

// std::atomic<uint32_t> and a uint32_t under atomic_ref have the same size and layout.
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) && std::atomic_ref<std::uint32_t>::is_always_lock_free);

int futex_wait(std::uint32_t* word, std::uint32_t expected, long timeout_ns) {
  return futex_wait(*reinterpret_cast<std::atomic<std::uint32_t>*>(word), expected, timeout_ns);
}
int futex_wake(std::uint32_t* word, int count) {
  return futex_wake(*reinterpret_cast<std::atomic<std::uint32_t>*>(word), count);
}

}  // namespace vscale::ext
