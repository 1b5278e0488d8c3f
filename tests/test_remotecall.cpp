// Remote calls: every way to ship code and data, the call variants (remotecall, _fetch, _wait,
// remote_do, spawnat, everywhere), Futures as arguments and their distributed freeing, calls
// between workers and back to the master, threads, and messages larger than a ring.
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <dirent.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <vscale/ext.hpp>

// A heap meter for the tests of how many copies of a result vscale makes: every operator new
// and delete of this program (the library's included) counts the bytes in use, and the
// highest count since the last reset.
namespace heap_meter {
std::atomic<std::int64_t> g_now{0}, g_peak{0};
void note(std::int64_t d) noexcept {
  const std::int64_t v = g_now.fetch_add(d, std::memory_order_relaxed) + d;
  std::int64_t p = g_peak.load(std::memory_order_relaxed);
  while (v > p && !g_peak.compare_exchange_weak(p, v, std::memory_order_relaxed)) {
  }
}
void* take(void* p) {
  if (!p) throw std::bad_alloc();
  note(static_cast<std::int64_t>(::malloc_usable_size(p)));
  return p;
}
void give(void* p) noexcept {
  if (!p) return;
  note(-static_cast<std::int64_t>(::malloc_usable_size(p)));
  std::free(p);
}
std::int64_t now() { return g_now.load(); }
std::int64_t peak() { return g_peak.load(); }
void reset_peak() { g_peak.store(g_now.load()); }
}  // namespace heap_meter

void* operator new(std::size_t n) { return heap_meter::take(std::malloc(n ? n : 1)); }
void* operator new(std::size_t n, std::align_val_t a) {
  const auto al = static_cast<std::size_t>(a);
  return heap_meter::take(std::aligned_alloc(al, (std::max<std::size_t>(n, 1) + al - 1) / al * al));
}
void operator delete(void* p) noexcept { heap_meter::give(p); }
void operator delete(void* p, std::size_t) noexcept { heap_meter::give(p); }
void operator delete(void* p, std::align_val_t) noexcept { heap_meter::give(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { heap_meter::give(p); }

namespace {

using test_util::eventually;

using test_util::w1;
using test_util::w2;

}  // namespace

// ---- shipped code: free functions, function objects, user types ---------------------------

int square_plus_id(int x) { return x * x + vscale::myid(); }

struct Multiplier {
  int k;
  double offset;
  double operator()(double x) const { return k * x + offset; }
};

// A user type that goes through cereal (a std::string member: not trivially copyable).
struct Point {
  std::string label;
  std::vector<int> xs;
  double weight = 0;
  template <class A>
  void serialize(A& a) {
    a(label, xs, weight);
  }
  bool operator==(const Point&) const = default;
};

// Counts how often it is serialized or deserialized in this process.
std::atomic<int> g_counted_serializations{0};
struct Counted {
  std::string tag;
  int v = 0;
  template <class A>
  void serialize(A& a) {
    ++g_counted_serializations;
    a(tag, v);
  }
};

std::atomic<int> g_remote_do_value{0};

std::vector<char> pattern_bytes(std::size_t n) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 7 + (i >> 12)) & 0xff);
  return v;
}
std::atomic<int> g_everywhere_count{0};
std::optional<vscale::Future<int>> g_held_future;  // a handle kept alive by a worker
std::vector<vscale::Future<int>> g_kept_futures;   // many handles kept by a worker

// Ping-pong between two workers: each level calls the other one; returns the path of ids.
std::vector<int> bounce(int depth, int a, int b) {
  if (depth == 0) return {vscale::myid()};
  int other = vscale::myid() == a ? b : a;
  auto rest = vscale::remotecall_fetch(other, bounce, depth - 1, a, b);
  rest.insert(rest.begin(), vscale::myid());
  return rest;
}

TEST_CASE("remotecall.plain_function") {
  int w = w1();
  auto f = vscale::remotecall(w, square_plus_id, 5);
  CHECK(f.where() == w);
  CHECK(f.fetch() == 25 + w);
  CHECK(vscale::fetch(f) == 25 + w);
  CHECK(vscale::remotecall_fetch(w2(), &square_plus_id, 3) == 9 + w2());
}

TEST_CASE("remotecall.lambda_with_captures") {
  int i = 7;
  double d = 0.5;
  std::array<int, 4> arr{1, 2, 3, 4};
  auto f = vscale::remotecall(w1(), [i, d, arr] { return i * d + arr[0] + arr[1] + arr[2] + arr[3] + vscale::myid(); });
  CHECK(f.fetch() == doctest::Approx(3.5 + 10 + w1()));
}

TEST_CASE("remotecall.function_object") {
  Multiplier m{3, 0.25};
  CHECK(vscale::remotecall(w2(), m, 2.0).fetch() == doctest::Approx(6.25));
  CHECK(vscale::remotecall_fetch(w1(), Multiplier{-2, 1.0}, 4.0) == doctest::Approx(-7.0));
}

TEST_CASE("remotecall.closure") {
  std::vector<double> data{1.5, 2.5, 3.5};
  std::string name = "value";
  auto cl = vscale::closure(
      [](const std::vector<double>& v, const std::string& s, int idx) {
        return s + "=" + std::to_string(v.at(static_cast<std::size_t>(idx))) + "@" + std::to_string(vscale::myid());
      },
      data, name);
  auto f = vscale::remotecall(w1(), cl, 2);
  CHECK(f.fetch() == "value=" + std::to_string(3.5) + "@" + std::to_string(w1()));
  CHECK(vscale::remotecall_fetch(w2(), cl, 0) == "value=" + std::to_string(1.5) + "@" + std::to_string(w2()));
  // The captured data is still here, untouched.
  CHECK(data.size() == 3);
  CHECK(name == "value");
}

std::string g_worker_name = "unset";

TEST_CASE("remotecall.a_fresh_worker_runs_calls_on_one_arena_executor") {
  // Calls sent the moment workers join (-t 1): each worker runs them on one arena executor.
  // (A call queued by the progress thread before the first executor was counted once made
  // a second one, so that two calls ran at once on a -t 1 worker.)
  const auto fresh = vscale::addprocs(2);
  std::vector<vscale::Future<int>> calls;
  for (int k = 0; k < 20; ++k)
    for (int w : fresh) calls.push_back(vscale::remotecall(w, [](int x) { return x + 1; }, k));
  for (std::size_t i = 0; i < calls.size(); ++i) CHECK(calls[i].fetch() == static_cast<int>(i / fresh.size()) + 1);
  for (int w : fresh) CHECK(vscale::remotecall_fetch(w, [] { return vscale::detail::stats().arena_executors; }) == 1);
  vscale::rmprocs(fresh);
}

TEST_CASE("remotecall.callable_variants") {
  int w = w1();
  // A mutable lambda: each call gets its own copy of the state.
  auto counter = [n = 10]() mutable { return ++n; };
  CHECK(vscale::remotecall_fetch(w, counter) == 11);
  CHECK(vscale::remotecall(w, counter).fetch() == 11);
  CHECK(vscale::remotecall_fetch(1, counter) == 11);
  // A call to one's own id behaves like any call: the callable is copied, so the caller's
  // `counter` is untouched and the next call starts from 10 again.
  CHECK(vscale::remotecall_fetch(1, counter) == 11);
  CHECK(vscale::remotecall_fetch(w, counter) == 11);
  CHECK(counter() == 11);
  // A generic lambda.
  auto twice = [](auto x) { return x + x; };
  CHECK(vscale::remotecall_fetch(w, twice, 21) == 42);
  CHECK(vscale::remotecall_fetch(w, twice, std::string("ab")) == "abab");
  // A function returning a reference: the value travels.
  vscale::remotecall_fetch(w, [] { g_worker_name = "worker-side"; });
  std::string got = vscale::remotecall_fetch(w, []() -> const std::string& { return g_worker_name; });
  CHECK(got == "worker-side");
  CHECK(g_worker_name == "unset");
  // Arguments given as lvalues, const lvalues and rvalues; rvalue-reference parameters.
  std::vector<int> v{1, 2, 3};
  const std::vector<int> cv{4, 5};
  auto total = [](std::vector<int>&& a, const std::vector<int>& b) {
    int s = 0;
    for (int x : a) s += x;
    for (int x : b) s += x;
    return s;
  };
  CHECK(vscale::remotecall(w, total, v, cv).fetch() == 15);
  CHECK(vscale::remotecall(1, total, v, cv).fetch() == 15);
  // (remotecall_fetch(w, total, v, cv) with the lvalue `v` does not compile: its call-to-self
  // branch forwards the caller's lvalue to the `&&` parameter. Reported; rvalues work.)
  CHECK(vscale::remotecall_fetch(w, total, std::vector<int>(v), cv) == 15);
  CHECK(vscale::remotecall_fetch(w, total, std::move(v), cv) == 15);
  CHECK(vscale::remotecall_fetch(1, total, std::vector<int>{7}, cv) == 16);
}

TEST_CASE("remotecall.types.int_string") {
  int w = w1();
  CHECK(vscale::remotecall_fetch(w, [](int a) { return a + 1; }, 41) == 42);
  CHECK(vscale::remotecall(w, [](std::string s) { return s + " world"; }, std::string("hello")).fetch() ==
        "hello world");
  CHECK(vscale::remotecall_fetch(w, [](const std::string& s) { return s.size(); }, std::string(1000, 'x')) == 1000);
}

TEST_CASE("remotecall.types.vector_map") {
  int w = w2();
  std::vector<double> v{1.0, -2.0, 3.25};
  auto doubled = vscale::remotecall_fetch(w, [](std::vector<double> x) {
    for (auto& e : x) e *= 2;
    return x;
  }, v);
  CHECK(doubled == std::vector<double>{2.0, -4.0, 6.5});

  std::map<std::string, int> m{{"a", 1}, {"b", 2}};
  auto m2 = vscale::remotecall(w, [](std::map<std::string, int> x) {
    x["c"] = static_cast<int>(x.size()) + 1;
    return x;
  }, m).fetch();
  CHECK(m2 == std::map<std::string, int>{{"a", 1}, {"b", 2}, {"c", 3}});
}

TEST_CASE("remotecall.types.eigen") {
  int w = w1();
  Eigen::MatrixXd a(3, 2);
  a << 1, 2, 3, 4, 5, 6;
  Eigen::MatrixXd t = vscale::remotecall_fetch(w, [](const Eigen::MatrixXd& m) -> Eigen::MatrixXd { return m.transpose(); }, a);
  CHECK(t.rows() == 2);
  CHECK(t.cols() == 3);
  CHECK(t.isApprox(a.transpose()));

  Eigen::Matrix3d b;
  b << 1, 2, 3, 4, 5, 6, 7, 8, 10;
  Eigen::Matrix3d bb = vscale::remotecall(w, [](const Eigen::Matrix3d& m) -> Eigen::Matrix3d { return m * m; }, b).fetch();
  CHECK(bb.isApprox(b * b));

  // Arrays go through the same template as matrices.
  Eigen::ArrayXXf c(2, 3);
  c << 1, 2, 3, 4, 5, 6;
  Eigen::ArrayXXf cc = vscale::remotecall_fetch(w, [](const Eigen::ArrayXXf& x) -> Eigen::ArrayXXf { return x * x; }, c);
  REQUIRE(cc.rows() == 2);
  REQUIRE(cc.cols() == 3);
  CHECK((cc == c * c).all());
}

TEST_CASE("remotecall.types.user_struct") {
  Point p{"origin", {1, 2, 3}, 2.5};
  Point q = vscale::remotecall_fetch(w2(), [](Point x) {
    x.label += "!";
    x.xs.push_back(vscale::myid());
    x.weight *= 2;
    return x;
  }, p);
  CHECK(q == Point{"origin!", {1, 2, 3, w2()}, 5.0});
}

TEST_CASE("remotecall.types.tuple_pair") {
  auto t = vscale::remotecall_fetch(w1(), [](std::tuple<int, std::string, double> x, std::pair<int, double> y) {
    return std::make_tuple(std::get<0>(x) + y.first, std::get<1>(x) + "?", std::get<2>(x) * y.second);
  }, std::make_tuple(1, std::string("why"), 1.5), std::make_pair(2, 4.0));
  CHECK(std::get<0>(t) == 3);
  CHECK(std::get<1>(t) == "why?");
  CHECK(std::get<2>(t) == doctest::Approx(6.0));

  auto p = vscale::remotecall(w2(), [](int a) { return std::make_pair(a, std::string(static_cast<std::size_t>(a), 'z')); }, 3).fetch();
  CHECK(p.first == 3);
  CHECK(p.second == "zzz");
}

TEST_CASE("remotecall.types.empty_vector_and_string") {
  auto v = vscale::remotecall_fetch(w1(), [](std::vector<double> x) {
    x.push_back(static_cast<double>(x.size()));
    return x;
  }, std::vector<double>{});
  CHECK(v == std::vector<double>{0.0});
  CHECK(vscale::remotecall_fetch(w1(), [](std::vector<int> x) { return x; }, std::vector<int>{}).empty());
  CHECK(vscale::remotecall_fetch(w2(), [](std::string s) { return s; }, std::string()).empty());
  CHECK(vscale::remotecall(w2(), [] { return std::string(); }).fetch().empty());
}

namespace {
struct Sample {  // trivially copyable, no cereal member
  int id;
  double x, y;
  bool operator==(const Sample&) const = default;
};
}  // namespace

TEST_CASE("remotecall.types.byte_blocks") {
  // std::string and std::vector of trivially copyable elements ship as a length and their
  // bytes (no cereal archive); everything around them still goes through cereal.
  std::vector<Sample> pts{{1, 0.5, -1.0}, {2, 2.0, 3.0}};
  auto moved = vscale::remotecall_fetch(w1(), [](std::vector<Sample> v) {
    for (auto& p : v) p.x += 1;
    return v;
  }, pts);
  CHECK(moved == std::vector<Sample>{{1, 1.5, -1.0}, {2, 3.0, 3.0}});

  const std::string with_nuls("a\0b\0\0c", 6);
  CHECK(vscale::remotecall_fetch(w2(), [](const std::string& s) { return s + s; }, with_nuls) == with_nuls + with_nuls);

  std::vector<bool> bits{true, false, true, true};  // packed: through cereal
  CHECK(vscale::remotecall_fetch(w1(), [](std::vector<bool> b) { b.flip(); return b; }, bits) ==
        std::vector<bool>{false, true, false, false});

  std::vector<std::vector<long>> nested{{1, 2}, {}, {3}};  // the inner vectors through cereal
  CHECK(vscale::remotecall_fetch(w2(), [](std::vector<std::vector<long>> v) { v.push_back({4}); return v; }, nested) ==
        std::vector<std::vector<long>>{{1, 2}, {}, {3}, {4}});

  auto c = vscale::closure([](const std::vector<long>& v, const std::string& tag, long k) {
    return tag + std::to_string(v.at(static_cast<std::size_t>(k)));
  }, std::vector<long>{10, 20, 30}, std::string("v="));
  CHECK(vscale::remotecall_fetch(w1(), c, 2L) == "v=30");
}

TEST_CASE("remotecall.types.byte_block_length_is_checked") {
  // A length that claims more bytes than the message holds is an error, not a huge allocation.
  vscale::detail::Writer w;
  const std::uint64_t n = std::uint64_t(1) << 60;
  w.write_raw(&n, sizeof n);
  w.write_raw("12345678", 8);
  vscale::detail::Reader r(w.bytes().data(), w.bytes().size());
  CHECK_THROWS_AS(vscale::detail::read<std::vector<long>>(r), vscale::Error);
  vscale::detail::Reader r2(w.bytes().data(), w.bytes().size());
  CHECK_THROWS_AS(vscale::detail::read<std::string>(r2), vscale::Error);
}

TEST_CASE("remotecall.a_busy_worker_still_answers_at_once") {
  // While a worker's one executor (-t 1) runs a long call, senders do not ring its doorbell
  // (the call counts as polling, Runtime::enter_busy); its progress thread still reads what
  // arrives within about a millisecond. A fetch of a Future the worker holds is answered then,
  // not after the call, nor at the progress thread's 100 ms timeout.
  const int w = w1();
  std::vector<vscale::Future<int>> fs;
  for (int k = 0; k < 11; ++k) fs.push_back(vscale::remotecall(w, [](int x) { return x; }, k));
  for (auto& f : fs) f.wait();
  auto long_call = vscale::remotecall(w, [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    return 1;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // it is running
  std::vector<double> ms;
  for (int k = 0; k < 11; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(fs[static_cast<std::size_t>(k)].fetch() == k);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  CHECK_FALSE(long_call.isready());  // (the fetches were answered while it ran)
  std::sort(ms.begin(), ms.end());
  INFO("median fetch " << ms[5] << " ms");
  CHECK(ms[5] < 25.0);
  CHECK(long_call.fetch() == 1);
}

TEST_CASE("remotecall.remotecall_wait") {
  auto f = vscale::remotecall_wait(w1(), [](int x) { return x * 3; }, 14);
  CHECK(f.isready());
  CHECK(vscale::isready(f));
  CHECK(f.fetch() == 42);
  // void result
  auto g = vscale::remotecall_wait(w2(), [] {});
  CHECK(g.isready());
  g.fetch();
}

TEST_CASE("remotecall.wait_then_isready") {
  auto f = vscale::remotecall(w2(), [] { return vscale::myid(); });
  f.wait();
  CHECK(f.isready());
  vscale::wait(f);
  CHECK(f.fetch() == w2());
}

std::atomic<bool> g_gate{false};

TEST_CASE("remotecall.isready_false_while_running") {
  // The call waits (at most ~30 s) for a gate that a second call opens: until then the
  // Future cannot be ready. Also checks that a worker runs a call while another one blocks.
  int w = w2();
  vscale::remotecall_fetch(w, [] { g_gate = false; });
  auto f = vscale::remotecall(w, [] {
    for (int i = 0; i < 3000 && !g_gate.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return g_gate.load();
  });
  CHECK_FALSE(f.isready());
  CHECK_FALSE(f.isready());
  vscale::remote_do(w, [] { g_gate = true; });
  CHECK(f.fetch());  // the gate was opened while the first call ran
  CHECK(f.isready());
}

TEST_CASE("remotecall.remote_do_side_effect") {
  int w = w1();
  vscale::remote_do(w, [](int v) { g_remote_do_value = v; }, 1234);
  CHECK(eventually([&] { return vscale::remotecall_fetch(w, [] { return g_remote_do_value.load(); }) == 1234; }));
  // It ran there, not here.
  CHECK(g_remote_do_value.load() == 0);
}

namespace {
std::mutex g_burst_m;
std::vector<long> g_burst;  // on the worker
}  // namespace

TEST_CASE("remotecall.a_burst_of_remote_do_arrives_whole_and_in_order") {
  // 20,000 remote_do sent without waiting fill the ring many times over; one poll takes at
  // most 256 messages from a ring and leaves the rest there (runtime.hpp, kPollBatch): every
  // call runs once, and with one thread in the order sent.
  const int w = w1();
  constexpr long kCalls = 20'000;
  vscale::remotecall_fetch(w, [] {
    std::lock_guard lk(g_burst_m);
    g_burst.clear();
  });
  for (long i = 0; i < kCalls; ++i)
    vscale::remote_do(w, [](long v) {
      std::lock_guard lk(g_burst_m);
      g_burst.push_back(v);
    }, i);
  // Calls from one sender arrive in order: once this one has run, so have all before it.
  const auto got = vscale::remotecall_fetch(w, [] {
    std::lock_guard lk(g_burst_m);
    return std::make_pair(g_burst, vscale::nthreads());
  });
  std::vector<long> seen = got.first;
  REQUIRE(seen.size() == static_cast<std::size_t>(kCalls));
  if (got.second == 1) {
    bool in_order = true;
    for (long i = 0; i < kCalls; ++i) in_order = in_order && seen[static_cast<std::size_t>(i)] == i;
    CHECK(in_order);
  }
  std::sort(seen.begin(), seen.end());
  bool each_once = true;
  for (long i = 0; i < kCalls; ++i) each_once = each_once && seen[static_cast<std::size_t>(i)] == i;
  CHECK(each_once);
}

TEST_CASE("remotecall.spawnat") {
  int w = w2();
  auto f = vscale::spawnat(w, [] { return vscale::myid() * 10; });
  CHECK(f.fetch() == w * 10);
}

TEST_CASE("remotecall.spawnat_any") {
  auto a = vscale::spawnat(vscale::any, [] { return vscale::myid(); });
  auto b = vscale::spawnat(vscale::any, [] { return vscale::myid(); });
  int ia = a.fetch(), ib = b.fetch();
  auto w = vscale::workers();
  CHECK(std::find(w.begin(), w.end(), ia) != w.end());
  CHECK(std::find(w.begin(), w.end(), ib) != w.end());
  CHECK(ia != ib);
}

TEST_CASE("remotecall.everywhere") {
  auto before_master = g_everywhere_count.load();
  std::vector<int> before;
  for (int w : vscale::workers()) before.push_back(vscale::remotecall_fetch(w, [] { return g_everywhere_count.load(); }));

  vscale::everywhere([] { ++g_everywhere_count; });

  CHECK(g_everywhere_count.load() == before_master + 1);
  auto ws = vscale::workers();
  for (std::size_t i = 0; i < ws.size(); ++i) {
    CAPTURE(ws[i]);
    CHECK(vscale::remotecall_fetch(ws[i], [] { return g_everywhere_count.load(); }) == before[i] + 1);
  }
}

TEST_CASE("remotecall.fetch_is_cached") {
  auto f = vscale::remotecall(w1(), [] { return std::vector<double>(100, 1.5); });
  CHECK(f.fetch().size() == 100);
  auto sent = vscale::detail::stats().messages_sent;
  CHECK(f.fetch().size() == 100);
  auto copy = f;  // copies share the cache
  CHECK(copy.fetch()[99] == 1.5);
  CHECK(vscale::detail::stats().messages_sent == sent);
}

TEST_CASE("remotecall.fetch_same_future_from_threads") {
  auto f = vscale::remotecall(w2(), [] { return std::vector<int>(1000, 9); });
  std::atomic<int> wrong{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&] {
      try {
        const auto& v = f.fetch();
        if (v.size() != 1000 || v[999] != 9) ++wrong;
      } catch (...) {
        ++wrong;
      }
    });
  for (auto& th : ts) th.join();
  CHECK(wrong.load() == 0);
  // Every thread saw the one cached object.
  CHECK(&f.fetch() == &f.fetch());
}

TEST_CASE("remotecall.void_future_as_argument") {
  int a = w1(), b = w2();
  auto f = vscale::remotecall(a, [] { g_remote_do_value = 99; });
  // b waits on a's void Future, then reads a's global through a call of its own.
  int seen = vscale::remotecall_fetch(b, [](const vscale::Future<void>& fu, int owner) {
    fu.wait();
    fu.fetch();
    return vscale::remotecall_fetch(owner, [] { return g_remote_do_value.load(); });
  }, f, a);
  CHECK(seen == 99);
  vscale::remotecall_fetch(a, [] { g_remote_do_value = 0; });
}

TEST_CASE("remotecall.large_result_between_workers") {
  // A 64 MiB value owned by one worker, fetched by the other.
  const std::size_t n = std::size_t(64) << 20;
  auto f = vscale::remotecall(w1(), [](std::size_t len) { return pattern_bytes(len); }, n);
  bool ok = vscale::remotecall_fetch(w2(), [](const vscale::Future<std::vector<char>>& fu, std::size_t len) {
    return fu.fetch() == pattern_bytes(len);
  }, f, n);
  CHECK(ok);
}

TEST_CASE("remotecall.self_call_does_not_serialize") {
  // Positive control: a call to a worker does serialize Counted.
  int before = g_counted_serializations.load();
  auto r0 = vscale::remotecall_fetch(w1(), [](Counted c) {
    c.v += 1;
    return c;
  }, Counted{"x", 1});
  CHECK(r0.v == 2);
  CHECK(g_counted_serializations.load() > before);

  // On the master, to itself.
  before = g_counted_serializations.load();
  auto r1 = vscale::remotecall_fetch(1, [](Counted c) {
    c.v += vscale::myid();
    return c;
  }, Counted{"self", 10});
  CHECK(r1.v == 11);
  CHECK(r1.tag == "self");
  auto f = vscale::remotecall(vscale::myid(), [](Counted c) {
    c.v *= 2;
    return c;
  }, Counted{"self", 21});
  CHECK(f.where() == 1);
  CHECK(f.fetch().v == 42);
  CHECK(g_counted_serializations.load() == before);

  // In a worker, to itself.
  auto moved = vscale::remotecall_fetch(w2(), [] {
    int b = g_counted_serializations.load();
    auto fu = vscale::remotecall(vscale::myid(), [](Counted c) {
      c.v += 1;
      return c;
    }, Counted{"w", 1});
    int v = fu.fetch().v;
    int v2 = vscale::remotecall_fetch(vscale::myid(), [](Counted c) { return c.v * 3; }, Counted{"w", 5});
    return std::make_tuple(g_counted_serializations.load() - b, v, v2);
  });
  CHECK(std::get<0>(moved) == 0);
  CHECK(std::get<1>(moved) == 2);
  CHECK(std::get<2>(moved) == 15);
}

TEST_CASE("remotecall.manual_walkthrough") {
  // r = remotecall(rand, 2, 2, 2); s = @spawnat 2 1 .+ fetch(r); remotecall_fetch(getindex, 2, r, 1, 1)
  int w = w1();
  auto r = vscale::remotecall(w, []() -> Eigen::MatrixXd { return Eigen::MatrixXd::Random(2, 2); });
  auto s = vscale::remotecall(w, [](const vscale::Future<Eigen::MatrixXd>& rr) {
    return (rr.fetch().array() + 1).matrix().eval();
  }, r);
  const Eigen::MatrixXd& rv = r.fetch();
  REQUIRE(rv.rows() == 2);
  REQUIRE(rv.cols() == 2);
  Eigen::MatrixXd expect = (rv.array() + 1).matrix();
  CHECK(s.fetch().isApprox(expect));
  double x = vscale::remotecall_fetch(w, [](const vscale::Future<Eigen::MatrixXd>& rr, int i, int j) {
    return rr.fetch()(i, j);
  }, r, 0, 0);
  CHECK(x == rv(0, 0));
}

TEST_CASE("remotecall.future_to_non_owner") {
  int owner = w1(), other = w2();
  auto r = vscale::remotecall(owner, []() -> Eigen::MatrixXd {
    Eigen::MatrixXd m(3, 3);
    for (int i = 0; i < 9; ++i) m(i) = i * 1.5;
    return m;
  });
  auto got = vscale::remotecall_fetch(other, [](const vscale::Future<Eigen::MatrixXd>& rr) {
    return std::make_tuple(rr.where(), vscale::myid(), rr.fetch());
  }, r);
  CHECK(std::get<0>(got) == owner);
  CHECK(std::get<1>(got) == other);
  CHECK(std::get<2>(got).isApprox(r.fetch()));
  // A Future made on a worker, owned by another worker, fetched on the master.
  auto nested = vscale::remotecall_fetch(other, [](int o) {
    return vscale::remotecall(o, [] { return vscale::myid() + 100; });
  }, owner);
  CHECK(nested.where() == owner);
  CHECK(nested.fetch() == owner + 100);
}

TEST_CASE("remotecall.future_made_by_worker_used_at_once_by_master") {
  // Worker `maker` asks `owner` for a value and hands the Future straight to the master,
  // which asks `owner` about it at once: the owner may hear from the master before it has
  // read `maker`'s call (they travel on different rings); the Future must still work.
  int owner = w1(), maker = w2();
  int failures = 0;
  std::string first_error;
  for (int i = 0; i < 200; ++i) {
    auto f = vscale::remotecall_fetch(maker, [](int o, int k) {
      return vscale::remotecall(o, [](int x) { return x * 2; }, k);
    }, owner, i);
    try {
      if (f.fetch() != 2 * i) ++failures;
    } catch (const std::exception& e) {
      if (first_error.empty()) first_error = e.what();
      ++failures;
    }
  }
  CAPTURE(first_error);
  CHECK(failures == 0);
  // The same with wait() and isready() as the first question.
  failures = 0;
  for (int i = 0; i < 200; ++i) {
    auto f = vscale::remotecall_fetch(maker, [](int o) { return vscale::remotecall(o, [] { return 1; }); }, owner);
    try {
      if (i % 2) {
        f.wait();
      } else {
        (void)f.isready();
      }
      if (f.fetch() != 1) ++failures;
    } catch (const std::exception& e) {
      if (first_error.empty()) first_error = e.what();
      ++failures;
    }
  }
  CHECK(failures == 0);
}

TEST_CASE("remotecall.future_passed_on_at_once") {
  // The master's call to `owner` and the master's Future sent at once to `other`, which asks
  // `owner` for it: the same race as above, with the master as the creator.
  int owner = w1(), other = w2();
  int failures = 0;
  std::string first_error;
  for (int i = 0; i < 200; ++i) {
    auto f = vscale::remotecall(owner, [](int x) { return x + 1; }, i);
    try {
      int v = vscale::remotecall_fetch(other, [](const vscale::Future<int>& fu) { return fu.fetch(); }, f);
      if (v != i + 1) ++failures;
    } catch (const std::exception& e) {
      if (first_error.empty()) first_error = e.what();
      ++failures;
    }
  }
  CAPTURE(first_error);
  CHECK(failures == 0);
}

TEST_CASE("remotecall.future_freed_when_last_handle_gone") {
  int owner = w1(), holder = w2();
  auto stored = [owner] { return vscale::remotecall_fetch(owner, [] { return vscale::detail::stats().stored_values; }); };
  // Let earlier tests' releases arrive, then take the baseline.
  std::uint64_t base = stored();
  eventually([&] {
    std::uint64_t now = stored();
    bool stable = now == base;
    base = now;
    return stable;
  });

  std::optional<vscale::Future<int>> f = vscale::remotecall(owner, [] { return 777; });
  f->wait();
  CHECK(stored() >= base + 1);

  // Another worker keeps a copy.
  vscale::remotecall_fetch(holder, [](const vscale::Future<int>& fu) { g_held_future = fu; }, *f);
  auto copy = *f;  // and a second handle here
  f.reset();
  CHECK(stored() >= base + 1);
  copy = vscale::Future<int>();  // last handle on the master gone
  // The holder's copy still works: the owner must not have freed the value.
  CHECK(vscale::remotecall_fetch(holder, [] { return g_held_future->fetch(); }) == 777);
  CHECK(stored() >= base + 1);

  vscale::remotecall_fetch(holder, [] { g_held_future.reset(); });
  CHECK(eventually([&] { return stored() <= base; }));
}

TEST_CASE("remotecall.future_freed_without_fetch") {
  int owner = w2();
  auto stored = [owner] { return vscale::remotecall_fetch(owner, [] { return vscale::detail::stats().stored_values; }); };
  std::uint64_t base = stored();
  {
    auto f = vscale::remotecall_wait(owner, [] { return std::vector<int>(10, 3); });
    CHECK(stored() >= base + 1);
  }
  CHECK(eventually([&] { return stored() <= base; }));
}

TEST_CASE("remotecall.master_owned_future_fetched_by_worker") {
  auto master_stored = [] { return vscale::detail::stats().stored_values; };
  std::uint64_t base = master_stored();
  {
    // Owned by the master itself (a call to one's own id), still running when it is sent.
    auto f = vscale::remotecall(1, [] {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      return 55;
    });
    CHECK(f.where() == 1);
    CHECK(vscale::remotecall_fetch(w1(), [](const vscale::Future<int>& fu) { return fu.fetch() + vscale::myid(); }, f) ==
          55 + w1());
    CHECK(f.fetch() == 55);
  }
  CHECK(eventually([&] { return master_stored() <= base; }));
}

TEST_CASE("remotecall.worker_local_future_returned_to_master") {
  // A worker calls itself and hands that Future to the master.
  auto f = vscale::remotecall_fetch(w2(), [] { return vscale::remotecall(vscale::myid(), [] { return vscale::myid() * 3; }); });
  CHECK(f.where() == w2());
  CHECK(f.fetch() == w2() * 3);
}

TEST_CASE("remotecall.future_sent_many_times") {
  // Every send splits the sender's weight; after many sends it must ask the owner for more.
  int owner = w1(), holder = w2();
  auto stored = [owner] { return vscale::remotecall_fetch(owner, [] { return vscale::detail::stats().stored_values; }); };
  std::uint64_t base = stored();
  {
    auto f = vscale::remotecall(owner, [] { return 31; });
    for (int i = 0; i < 70; ++i) {
      int v = vscale::remotecall_fetch(holder, [](const vscale::Future<int>& fu) {
        g_kept_futures.push_back(fu);
        return fu.fetch();
      }, f);
      if (v != 31) {
        FAIL_CHECK("round " << i << " got " << v);
        break;
      }
    }
    CHECK(vscale::remotecall_fetch(holder, [] { return static_cast<int>(g_kept_futures.size()); }) == 70);
    // And back: the holder sends its copy to the master 70 times.
    auto back = vscale::remotecall_fetch(holder, [] {
      std::vector<vscale::Future<int>> out;
      for (int i = 0; i < 70; ++i) out.push_back(g_kept_futures.front());
      return out;
    });
    REQUIRE(back.size() == 70);
    for (auto& b : back) CHECK(b.fetch() == 31);
    vscale::remotecall_fetch(holder, [] { g_kept_futures.clear(); });
    CHECK(stored() >= base + 1);
    CHECK(f.fetch() == 31);
  }
  CHECK(eventually([&] { return stored() <= base; }));
}

TEST_CASE("remotecall.worker_calls_worker") {
  int a = w1(), b = w2();
  CHECK(vscale::remotecall_fetch(a, [](int to) { return vscale::remotecall_fetch(to, [] { return vscale::myid(); }); }, b) == b);
  auto f = vscale::remotecall(b, [](int to) { return vscale::remotecall(to, [](int x) { return x + vscale::myid(); }, 1).fetch(); }, a);
  CHECK(f.fetch() == a + 1);
}

TEST_CASE("remotecall.worker_calls_master_while_master_waits") {
  int w = w1();
  CHECK(vscale::remotecall_fetch(w, [] { return vscale::remotecall_fetch(1, [] { return vscale::myid() + 10; }); }) == 11);
  auto f = vscale::remotecall(w, [] { return vscale::remotecall(1, [] { return vscale::nprocs(); }).fetch(); });
  CHECK(f.fetch() == vscale::nprocs());
}

TEST_CASE("remotecall.from_worker_side_thread") {
  // A thread that a worker starts itself may use the API too.
  int a = w1(), b = w2();
  auto got = vscale::remotecall_fetch(a, [](int other) {
    std::vector<int> out(3, 0);
    std::thread t([&out, other] {
      out[0] = vscale::remotecall_fetch(other, [] { return vscale::myid(); });
      out[1] = vscale::remotecall_fetch(1, [] { return vscale::myid(); });
      out[2] = vscale::remotecall(other, [](int x) { return x * 2; }, 21).fetch();
    });
    t.join();
    return out;
  }, b);
  CHECK(got == std::vector<int>{b, 1, 42});
}

TEST_CASE("remotecall.recursion_across_workers_depth_30") {
  int a = w1(), b = w2();
  auto path = vscale::remotecall_fetch(a, bounce, 30, a, b);
  REQUIRE(path.size() == 31);
  for (std::size_t i = 0; i < path.size(); ++i) {
    CAPTURE(i);
    CHECK(path[i] == (i % 2 == 0 ? a : b));
  }
}

TEST_CASE("remotecall.threads_8x300") {
  auto ws = vscale::workers();
  std::atomic<int> wrong{0}, errors{0}, done{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        int w = ws[static_cast<std::size_t>(i + t) % ws.size()];
        try {
          int got = vscale::remotecall_fetch(w, [](int a, int b) { return a * 1000 + b + vscale::myid() * 1000000; }, t, i);
          if (got != t * 1000 + i + w * 1000000) ++wrong;
          ++done;
        } catch (...) {
          ++errors;
        }
      }
    });
  for (auto& th : ts) th.join();
  CHECK(errors.load() == 0);
  CHECK(wrong.load() == 0);
  CHECK(done.load() == 2400);
}

namespace {
std::vector<char> pattern(std::size_t n) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 7 + (i >> 12)) & 0xff);
  return v;
}
// The worker checks what it got and sends it back reversed.
std::vector<char> check_and_reverse(const std::vector<char>& v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<char>((i * 7 + (i >> 12)) & 0xff)) throw std::runtime_error("corrupt at " + std::to_string(i));
  return std::vector<char>(v.rbegin(), v.rend());
}
bool is_reversed_pattern(const std::vector<char>& r, std::size_t n) {
  if (r.size() != n) return false;
  for (std::size_t i = 0; i < n; ++i)
    if (r[n - 1 - i] != static_cast<char>((i * 7 + (i >> 12)) & 0xff)) return false;
  return true;
}
}  // namespace

TEST_CASE("remotecall.large.1MiB") {
  const std::size_t n = std::size_t(1) << 20;
  auto v = pattern(n);
  CHECK(is_reversed_pattern(vscale::remotecall_fetch(w1(), check_and_reverse, v), n));
  CHECK(is_reversed_pattern(vscale::remotecall(w2(), check_and_reverse, v).fetch(), n));
}

TEST_CASE("remotecall.large.64MiB") {
  const std::size_t n = std::size_t(64) << 20;
  auto v = pattern(n);
  CHECK(is_reversed_pattern(vscale::remotecall_fetch(w2(), check_and_reverse, v), n));
  // A large result stored on the owner, fetched by the master.
  auto f = vscale::remotecall(w1(), [](std::size_t len) {
    std::vector<char> out(len);
    for (std::size_t i = 0; i < len; ++i) out[i] = static_cast<char>((i * 7 + (i >> 12)) & 0xff);
    return out;
  }, n);
  CHECK(f.fetch() == v);
}

TEST_CASE("remotecall.large.concurrent") {
  // Several threads move 16 MiB messages at once, to both workers.
  const std::size_t n = std::size_t(16) << 20;
  auto v = pattern(n);
  auto ws = vscale::workers();
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      try {
        int w = ws[static_cast<std::size_t>(t) % ws.size()];
        if (!is_reversed_pattern(vscale::remotecall_fetch(w, check_and_reverse, v), n)) ++bad;
      } catch (...) {
        ++bad;
      }
    });
  for (auto& th : ts) th.join();
  CHECK(bad.load() == 0);
}

TEST_CASE("remotecall.large.eigen_20MiB") {
  Eigen::MatrixXd m(1600, 1640);  // 2,624,000 doubles = 20.0 MiB
  for (Eigen::Index i = 0; i < m.size(); ++i) m(i) = static_cast<double>(i) * 0.5;
  Eigen::MatrixXd r = vscale::remotecall_fetch(w1(), [](const Eigen::MatrixXd& x) -> Eigen::MatrixXd { return x * 2.0; }, m);
  REQUIRE(r.rows() == 1600);
  REQUIRE(r.cols() == 1640);
  bool same = true;
  for (Eigen::Index i = 0; i < r.size(); ++i) same = same && r(i) == static_cast<double>(i);
  CHECK(same);
  double sum = vscale::remotecall_fetch(w2(), [](const Eigen::MatrixXd& x) { return x.sum(); }, m);
  CHECK(sum == doctest::Approx(m.sum()));
}

// ---- issue 13: copies of a large result, rvalue fetch, timeouts ----------------------------

namespace {
constexpr std::size_t kBig = std::size_t(64) << 20;

std::vector<char> big_pattern(std::size_t n) { return pattern(n); }
bool is_pattern(const std::vector<char>& v, std::size_t n) {
  if (v.size() != n) return false;
  for (std::size_t i = 0; i < n; ++i)
    if (v[i] != static_cast<char>((i * 7 + (i >> 12)) & 0xff)) return false;
  return true;
}
// Heap growth allowed for one copy of `n` bytes: well under two copies.
constexpr std::int64_t one_copy(std::size_t n) { return static_cast<std::int64_t>(n) * 3 / 2; }
}  // namespace

TEST_CASE("remotecall.fetched_future_holds_one_copy_of_a_large_result") {
  // A fetched Future kept the answer's bytes and the decoded value: 64 MiB cost 128 MiB.
  auto f = vscale::remotecall(w1(), big_pattern, kBig);
  f.wait();  // the value exists on w1; only the fetch is measured
  const std::int64_t base = heap_meter::now();
  heap_meter::reset_peak();
  const auto& v = f.fetch();
  const std::int64_t held = heap_meter::now() - base, peak = heap_meter::peak() - base;
  CAPTURE(held);
  CAPTURE(peak);
  CHECK(held >= static_cast<std::int64_t>(kBig));  // (the meter sees the value itself)
  CHECK(held < one_copy(kBig));
  CHECK(peak < one_copy(kBig));  // decoded straight from the answer: no copy of its bytes
  CHECK(is_pattern(v, kBig));
  // A second fetch is served here, with nothing more.
  CHECK(&f.fetch() == &v);
  CHECK(heap_meter::now() - base < one_copy(kBig));

  // A result pushed back with the call's answer (pmap, distributed_for) keeps one copy too
  // once fetched (its bytes are copied out of the answer on arrival, then dropped).
  auto g = vscale::detail::remotecall_push(w2(), big_pattern, kBig);
  g.wait();
  const std::int64_t base2 = heap_meter::now();
  const auto& v2 = g.fetch();
  const std::int64_t held2 = heap_meter::now() - base2;
  CAPTURE(held2);
  CHECK(held2 < one_copy(kBig) - static_cast<std::int64_t>(kBig));  // the bytes went, the value came
  CHECK(is_pattern(v2, kBig));
}

TEST_CASE("remotecall.remotecall_fetch_decodes_large_result_from_the_answer") {
  // remotecall_fetch copied the answer into a vector, then decoded that: two copies at once.
  const std::size_t n = kBig / sizeof(double);
  const std::int64_t base = heap_meter::now();
  heap_meter::reset_peak();
  auto v = vscale::remotecall_fetch(w2(), [](std::size_t k) { return std::vector<double>(k, 1.5); }, n);
  const std::int64_t peak = heap_meter::peak() - base;
  CAPTURE(peak);
  CHECK(peak < one_copy(kBig));
  REQUIRE(v.size() == n);
  CHECK(std::all_of(v.begin(), v.end(), [](double x) { return x == 1.5; }));
}

TEST_CASE("remotecall.fetch_on_a_temporary_future_returns_the_value") {
  // `const auto& v = remotecall(2, f).fetch();` bound a reference into the temporary Future:
  // dangling at the end of the statement. An rvalue Future's fetch returns the value.
  using FI = vscale::Future<int>;
  static_assert(std::is_same_v<decltype(std::declval<FI>().fetch()), int>);
  static_assert(std::is_same_v<decltype(std::declval<FI&>().fetch()), const int&>);
  static_assert(std::is_same_v<decltype(std::declval<const FI&>().fetch()), const int&>);
  static_assert(std::is_same_v<decltype(vscale::fetch(std::declval<FI>())), int>);
  static_assert(std::is_same_v<decltype(vscale::fetch(std::declval<FI&>())), const int&>);
  static_assert(std::is_same_v<decltype(std::declval<vscale::Future<void>>().fetch()), void>);

  // 40 MiB: freed, it is unmapped at once, so reading the old dangling reference crashed.
  const std::size_t n = std::size_t(40) << 20;
  const auto& v = vscale::remotecall(w1(), big_pattern, n).fetch();
  CHECK(is_pattern(v, n));
  const auto& s = vscale::fetch(vscale::remotecall(w2(), [] { return std::string(5000, 's'); }));
  CHECK(s == std::string(5000, 's'));
  vscale::remotecall(w1(), [] {}).fetch();  // void: waits, returns nothing

  // The last handle here: the value is moved out, not copied.
  auto f = vscale::remotecall(w2(), big_pattern, n);
  f.wait();
  const std::int64_t base = heap_meter::now();
  heap_meter::reset_peak();
  auto moved = std::move(f).fetch();
  const std::int64_t peak = heap_meter::peak() - base;
  CAPTURE(peak);
  CHECK(peak < one_copy(n));
  CHECK_FALSE(f.valid());  // NOLINT(bugprone-use-after-move): an rvalue fetch lets the handle go
  CHECK(is_pattern(moved, n));

  // Another handle shares the value: it is copied, and that handle still has it.
  auto g = vscale::remotecall(w1(), [] { return std::vector<int>{4, 5, 6}; });
  auto h = g;
  auto copied = std::move(g).fetch();
  CHECK(copied == std::vector<int>{4, 5, 6});
  CHECK(h.fetch() == std::vector<int>{4, 5, 6});

  // A Future received from another process (it may arrive here again while fetched).
  auto made = vscale::remotecall_fetch(w2(), [](int o) { return vscale::remotecall(o, [] { return 77; }); }, w1());
  CHECK(std::move(made).fetch() == 77);
}

namespace {
// SIGSTOPs a worker while it lives; SIGCONTs it at the end in any case (teardown needs it).
// Every thread of process `pid` is stopped (kill returns before the signal has reached them).
bool all_threads_stopped(int pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return false;
  bool all = true;
  int n = 0;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream st(dir + "/" + e->d_name + "/stat");
    std::string line;
    if (!std::getline(st, line)) continue;  // just exited
    const auto rp = line.rfind(')');
    const char state = rp != std::string::npos && rp + 2 < line.size() ? line[rp + 2] : '?';
    all = all && (state == 'T' || state == 't');
    ++n;
  }
  ::closedir(d);
  return all && n > 0;
}
struct Stopped {
  explicit Stopped(int os_pid) : pid(os_pid) {
    REQUIRE(::kill(pid, SIGSTOP) == 0);
    REQUIRE(eventually([&] { return all_threads_stopped(pid); }));
  }
  ~Stopped() { resume(); }
  void resume() {
    if (pid > 0) ::kill(pid, SIGCONT);
    pid = 0;
  }
  int pid;
};
std::atomic<bool> g_wait_for_gate{false};
std::size_t pending_to(int w) { return vscale::ext::pending_requests_to(w); }
}  // namespace

TEST_CASE("remotecall.wait_for_gives_up_on_a_stopped_worker") {
  // With a worker SIGSTOPped, fetch waited without end; wait_for and fetch_for bound the wait
  // (the owner never answers), a late answer is taken by the next wait, and no question leaks.
  using namespace std::chrono_literals;
  const int w = w1();
  const int os_pid = vscale::remotecall_fetch(w, [] { return static_cast<int>(::getpid()); });
  REQUIRE(pending_to(w) == 0);
  auto g = vscale::remotecall(w, [] { return 41; });
  auto v = vscale::remotecall(w, [] {});
  Stopped stop(os_pid);

  auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(g.wait_for(300ms));
  CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);
  CHECK(std::chrono::steady_clock::now() - t0 < 60s);
  CHECK_FALSE(g.fetch_for(200ms).has_value());
  CHECK_FALSE(v.fetch_for(100ms));  // Future<void>: false, not done
  // Asking again joins the question in flight: no new one.
  CHECK_FALSE(g.wait_for(50ms));
  CHECK_FALSE(g.fetch_for(0ms).has_value());
  CHECK(pending_to(w) == 3);  // g: wait and fetch; v: fetch

  // A thread blocked in fetch() without a timeout does not hold up a timed wait.
  std::atomic<int> fetched{0};
  std::thread blocked([&] { fetched = g.fetch(); });
  std::this_thread::sleep_for(50ms);
  t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(g.fetch_for(200ms).has_value());
  CHECK(std::chrono::steady_clock::now() - t0 < 60s);
  CHECK(fetched.load() == 0);

  // remotecall_fetch with a timeout: its question is withdrawn when it gives up.
  t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(vscale::remotecall_fetch_for(w, 200ms, [] { return 1; }).has_value());
  CHECK_FALSE(vscale::remotecall_fetch_for(w, 100ms, [] {}));
  CHECK(std::chrono::steady_clock::now() - t0 < 60s);
  CHECK(pending_to(w) == 3);

  // A Future dropped while its question waits withdraws it.
  {
    auto h = vscale::remotecall(w, [] { return 2; });
    CHECK_FALSE(h.fetch_for(50ms).has_value());
    CHECK(pending_to(w) == 4);
  }
  CHECK(pending_to(w) == 3);

  stop.resume();
  // The late answers are taken: by the blocked fetch, and by the next timed waits.
  blocked.join();
  CHECK(fetched.load() == 41);
  auto got = g.fetch_for(60s);
  REQUIRE(got.has_value());
  CHECK(*got == 41);
  CHECK(g.wait_for(0s));
  CHECK(v.wait_for(60s));
  CHECK(v.fetch_for(60s));
  CHECK(vscale::remotecall_fetch_for(w, 60s, [] { return vscale::myid(); }) == std::optional<int>(w));
  CHECK(eventually([&] { return pending_to(w) == 0; }));
  CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
}

TEST_CASE("remotecall.wait_for_from_many_threads_shares_the_questions") {
  // Threads polling one Future with short timeouts, others waiting without one: one question
  // of each kind in flight at most, every thread gets the value, nothing stays registered.
  using namespace std::chrono_literals;
  const int w = w2();
  for (int round = 0; round < 3; ++round) {
    auto f = vscale::remotecall(w, [](int r) {
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      return std::vector<int>(1000, r);
    }, round);
    std::atomic<int> good{0}, max_pending{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 6; ++t)
      ts.emplace_back([&, t] {
        try {
          if (t == 0) {
            if (f.fetch() == std::vector<int>(1000, round)) ++good;
            return;
          }
          for (;;) {
            const int p = static_cast<int>(pending_to(w));
            if (p > max_pending.load()) max_pending = p;
            if (t % 2 ? !f.wait_for(1ms) : false) continue;
            if (auto v = f.fetch_for(t % 3 == 0 ? 0ms : 2ms)) {
              if (*v == std::vector<int>(1000, round)) ++good;
              return;
            }
          }
        } catch (const std::exception& e) {
          MESSAGE("thread failed: " << e.what());
        }
      });
    for (auto& th : ts) th.join();
    CHECK(good.load() == 6);
    CHECK(max_pending.load() <= 2);  // one kWait, one kFetch
    CHECK(eventually([&] { return pending_to(w) == 0; }));
  }
}

TEST_CASE("remotecall.wait_for_on_ready_failed_and_local_futures") {
  using namespace std::chrono_literals;
  auto ready = vscale::remotecall(w2(), [] { return 5; });
  CHECK(ready.wait_for(60s));
  CHECK(ready.fetch_for(60s) == std::optional<int>(5));
  auto failed = vscale::remotecall(w2(), []() -> int { throw std::runtime_error("wait_for boom"); });
  CHECK_THROWS_AS((void)failed.wait_for(60s), vscale::RemoteException);
  CHECK_THROWS_AS((void)failed.fetch_for(60s), vscale::RemoteException);
  CHECK_THROWS_AS((void)vscale::remotecall_fetch_for(w2(), 60s, []() -> int { throw std::runtime_error("x"); }),
                  vscale::RemoteException);
  // A call to this process: its Future is owned here.
  g_wait_for_gate = false;
  auto local = vscale::remotecall(1, [] {
    while (!g_wait_for_gate.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return 9;
  });
  CHECK_FALSE(local.wait_for(50ms));
  CHECK_FALSE(local.fetch_for(10ms).has_value());
  g_wait_for_gate = true;
  CHECK(local.fetch_for(60s) == std::optional<int>(9));
  vscale::Future<int> empty;
  CHECK_THROWS_AS((void)empty.wait_for(1s), vscale::UsageError);
  CHECK_THROWS_AS((void)empty.fetch_for(1s), vscale::UsageError);
}

TEST_CASE("remotecall.zz_nothing_left_stored") {
  // Runs last: every Future of this file is gone, so no process keeps a value for others.
  for (int p : vscale::procs()) {
    CAPTURE(p);
    CHECK(eventually([p] {
      return vscale::remotecall_fetch(p, [] { return vscale::detail::stats().stored_values; }) == 0;
    }));
  }
}

// Regression: a call to one's own id passed the caller's lvalue straight to a parameter taking
// `T&&`, which did not compile; it now gets a copy, as a remote call does.
int take_rvalue_vector(std::vector<int>&& v) {
  std::vector<int> mine = std::move(v);
  return static_cast<int>(mine.size());
}

TEST_CASE("remotecall.own_id_rvalue_parameter_gets_a_copy") {
  std::vector<int> v{1, 2, 3};
  CHECK(vscale::remotecall_fetch(1, take_rvalue_vector, v) == 3);
  CHECK(vscale::remotecall_fetch(vscale::workers().front(), take_rvalue_vector, v) == 3);
  CHECK(v.size() == 3);  // the caller's vector is untouched either way
}

TEST_CASE("remotecall.wait_all_waits_for_every_call_then_rethrows_the_first_failure") {
  std::vector<vscale::Future<void>> calls;
  const int w = vscale::workers().front();
  static std::atomic<int> finished_here{0};
  finished_here = 0;
  calls.push_back(vscale::remotecall(w, [] { throw std::runtime_error("first"); }));
  calls.push_back(vscale::remotecall(1, [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    finished_here.fetch_add(1);
  }));
  calls.push_back(vscale::remotecall(w, [] { throw std::logic_error("second"); }));
  try {
    vscale::wait_all(calls);
    FAIL("wait_all did not rethrow");
  } catch (const vscale::RemoteException& e) {
    CHECK(e.message() == "first");
  }
  CHECK(finished_here.load() == 1);  // the slow call had finished before the error came out
  std::vector<vscale::Future<int>> fine;
  for (int i = 0; i < 4; ++i) fine.push_back(vscale::remotecall(w, [](int x) { return x; }, i));
  vscale::wait_all(fine);
  for (int i = 0; i < 4; ++i) CHECK(fine[static_cast<std::size_t>(i)].fetch() == i);
}
