// dict_channel: the Julia manual's DictChannel, a channel over a user type ("Remote References
// and AbstractChannels"):
//
//   mutable struct DictChannel <: AbstractChannel
//       d::Dict
//       cond_take::Threads.Condition
//       DictChannel() = new(Dict(), Threads.Condition())
//   end
//   put!(D::DictChannel, k, v)   # store v under k, wake the waiters
//   take!(D::DictChannel, k)     # wait for k, remove it, return its value
//   fetch(D::DictChannel, k)     # wait for k, return its value (left there)
//   isready(D::DictChannel, k)   # is k there now?
//   RemoteChannel(()->DictChannel(), pid)
//
// In C++ the DictChannel is an ordinary class (std::map + mutex + condition variable), built
// on its owner as vscale::RemoteValue<DictChannel>(pid); the RemoteValue handle
// runs `f(DictChannel&, args...)` there with call(f, args...), from any process. The small
// RemoteDict wrapper gives it the manual's put/take/fetch/isready. A take or fetch for a key
// that is not there yet blocks on the owner until some process puts it. Like every vscale handle,
// a RemoteDict travels as an argument of a remote call (a shipped lambda cannot capture it),
// and the DictChannel lives until its last handle anywhere is gone (or until free()).
// Run: ./dict_channel -p 2. It checks its own answers and exits non-zero on a wrong one.
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <vscale/remote_channel.hpp>
#include <vscale/vscale.hpp>

namespace {

// The user's channel type: lives on one process, never shipped.
class DictChannel {
 public:
  void put(int k, std::string v) {
    {
      std::lock_guard lk(m_);
      d_[k] = std::move(v);
    }
    cond_take_.notify_all();
  }
  std::string take(int k) {
    std::unique_lock lk(m_);
    cond_take_.wait(lk, [&] { return d_.count(k) != 0; });
    std::string v = std::move(d_[k]);
    d_.erase(k);
    return v;
  }
  std::string fetch(int k) {
    std::unique_lock lk(m_);
    cond_take_.wait(lk, [&] { return d_.count(k) != 0; });
    return d_[k];
  }
  bool isready(int k) {
    std::lock_guard lk(m_);
    return d_.count(k) != 0;
  }
  std::size_t size() {
    std::lock_guard lk(m_);
    return d_.size();
  }

 private:
  std::mutex m_;
  std::condition_variable cond_take_;
  std::map<int, std::string> d_;
};

// The remote side: a handle that remote calls take as an argument (its serialize member ships
// the RemoteValue inside). Every method is one remote call to the owner.
struct RemoteDict {
  vscale::RemoteValue<DictChannel> h;

  template <class A>
  void serialize(A& a) {
    a(h);
  }

  void put(int k, const std::string& v) const {
    h.call([](DictChannel& d, int key, std::string val) { d.put(key, std::move(val)); }, k, v);
  }
  std::string take(int k) const { return h.call([](DictChannel& d, int key) { return d.take(key); }, k); }
  std::string fetch(int k) const { return h.call([](DictChannel& d, int key) { return d.fetch(key); }, k); }
  bool isready(int k) const { return h.call([](DictChannel& d, int key) { return d.isready(key); }, k); }
  std::size_t size() const { return h.call([](DictChannel& d) { return d.size(); }); }
};

std::string value_of(int k) { return "value " + std::to_string(k * k); }

}  // namespace

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  if (vscale::nworkers() < 2) vscale::addprocs(2 - vscale::nworkers());
  const int owner = vscale::workers().at(0);
  const int reader = vscale::workers().at(1);

  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    std::cout << (ok ? "  ok: " : "  WRONG: ") << what << '\n';
    if (!ok) ++failures;
  };

  // RemoteChannel(()->DictChannel(), owner)
  RemoteDict dict{vscale::RemoteValue<DictChannel>(owner)};
  std::cout << "DictChannel on process " << dict.h.owner() << '\n';
  check(!dict.isready(3), "isready(3) is false on an empty DictChannel");

  // A reader on another worker takes keys 9, 8, ..., 0: each take blocks until its key is there.
  auto taken = vscale::remotecall(reader, [](const RemoteDict& d) {
    std::vector<std::string> got;
    for (int k = 9; k >= 0; --k) got.push_back(d.take(k));
    return got;
  }, dict);
  // Keys 0..4 come from the master, 5..9 from the owner itself (no message there).
  for (int k = 0; k < 5; ++k) {
    dict.put(k, value_of(k));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  vscale::remotecall_fetch(owner, [](const RemoteDict& d) {
    for (int k = 5; k < 10; ++k) d.put(k, value_of(k));
  }, dict);
  const auto& got = taken.fetch();
  bool in_order = got.size() == 10;
  for (std::size_t i = 0; in_order && i < got.size(); ++i) in_order = got[i] == value_of(9 - int(i));
  for (const auto& v : got) std::cout << "taken on process " << reader << ": " << v << '\n';
  check(in_order, "take(k) returned each key's value, waiting for keys not yet put");
  check(dict.size() == 0, "every taken key was removed");

  // fetch leaves the value; isready(k) sees it from every process.
  dict.put(100, "hundred");
  std::string fetched = vscale::remotecall_fetch(reader, [](const RemoteDict& d) { return d.fetch(100); }, dict);
  check(fetched == "hundred", "fetch(100) on another worker");
  check(vscale::remotecall_fetch(reader, [](const RemoteDict& d) { return d.isready(100); }, dict),
        "isready(100) after fetch (not removed)");
  check(dict.take(100) == "hundred", "take(100) on the master");
  check(!dict.isready(100), "isready(100) is false after take");

  // fetch blocks until a key arrives, from another process.
  auto waiter = vscale::remotecall(reader, [](const RemoteDict& d) { return d.fetch(7); }, dict);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  check(!waiter.isready(), "fetch(7) waits while key 7 is missing");
  dict.put(7, "seven");
  check(waiter.fetch() == "seven", "fetch(7) woke when 7 was put");
  check(dict.take(7) == "seven", "take(7)");

  check(dict.h.free(), "the DictChannel was freed on its owner");
  check(vscale::remotecall_fetch(owner, [] { return vscale::detail::live_remote_objects(); }) == 0,
        "no remote objects left on the owner");

  if (failures) {
    std::cout << failures << " check(s) FAILED\n";
    return EXIT_FAILURE;
  }
  std::cout << "all checks passed\n";
  return EXIT_SUCCESS;
}
