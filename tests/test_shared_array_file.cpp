// File-backed SharedArrays (Julia's SharedArray{T}(filename, dims, offset; mode)): the modes
// r, r+, w+, a+ and the default, offsets (page-aligned or not), values written by workers
// landing in the file, clear errors for missing or short files and for init with mode r, and
// no file descriptors left behind; a full filesystem or `ulimit -f` is an exception at
// construction (never SIGBUS or SIGXFSZ).
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include "test_util.hpp"

#include <sys/mount.h>
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using test_util::eventually;

namespace fs = std::filesystem;
using vscale::FileMode;
using Doubles = vscale::SharedArray<double, 1>;
using Ints = vscale::SharedArray<int, 1>;

// A fresh directory under /tmp (mkdtemp), removed with everything in it at the end.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/vscale-test-sa-file-XXXXXX";
    const char* p = mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

std::vector<char> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

template <class T>
T value_at(const std::vector<char>& bytes, std::size_t byte_offset) {
  T v;
  std::memcpy(&v, bytes.data() + byte_offset, sizeof(T));
  return v;
}

template <class T>
void put_at(std::vector<char>& bytes, std::size_t byte_offset, T v) {
  std::memcpy(bytes.data() + byte_offset, &v, sizeof(T));
}

std::vector<char> pattern(std::size_t n) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 31 + 7) & 0xff);
  return v;
}

// Open fds of this process whose target lies under `dir`.
int fds_under(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/self/fd"); it != fs::directory_iterator(); ++it) {
    auto target = fs::read_symlink(it->path(), ec);
    if (!ec && target.string().rfind(dir, 0) == 0) ++n;
  }
  return n;
}

// Same, on process `pid`.
int fds_under_on(int pid, const std::string& dir) {
  return vscale::remotecall_fetch(pid, [](const std::string& d) { return fds_under(d); }, dir);
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

TEST_CASE("shared_array_file.w_plus_creates_and_sizes") {
  TempDir dir;
  const std::string path = dir.file("a.bin");
  REQUIRE(!fs::exists(path));
  {
    Doubles a(path, 1000, 0, FileMode::w_plus);
    CHECK(fs::exists(path));
    CHECK(fs::file_size(path) == 1000 * sizeof(double));
    CHECK(a.size() == 1000);
    for (std::size_t i = 0; i < 1000; ++i) REQUIRE(a[i] == 0.0);
    // Workers write; the values are in the file.
    vscale::distributed_for({0, 1000}, vscale::closure([](const Doubles& s, long i) {
                              s[static_cast<std::size_t>(i)] = 1.5 * static_cast<double>(i) + vscale::myid();
                            }, a))
        .wait();
    auto bytes = read_all(path);
    REQUIRE(bytes.size() == 1000 * sizeof(double));
    // Which worker wrote index i: splitrange over the workers.
    auto ws = vscale::workers();
    auto chunks = vscale::detail::splitrange(0, 1000, static_cast<long>(ws.size()));
    for (std::size_t k = 0; k < chunks.size(); ++k)
      for (long i = chunks[k].first; i < chunks[k].second; ++i)
        REQUIRE(value_at<double>(bytes, static_cast<std::size_t>(i) * sizeof(double)) ==
                1.5 * static_cast<double>(i) + ws[k]);
    CHECK(a[999] == 1.5 * 999 + ws.back());
  }
  // The data stays in the file after the array is gone.
  auto bytes = read_all(path);
  CHECK(value_at<double>(bytes, 10 * sizeof(double)) == 15.0 + vscale::workers().front());
}

TEST_CASE("shared_array_file.w_plus_with_offset_sizes_offset_plus_bytes") {
  TempDir dir;
  const std::string path = dir.file("b.bin");
  {
    vscale::SharedArray<int, 2> a(path, {3, 5}, 100, FileMode::w_plus);
    CHECK(fs::file_size(path) == 100 + 15 * sizeof(int));
    a(2, 4) = 77;
  }
  auto bytes = read_all(path);
  CHECK(value_at<int>(bytes, 100 + 14 * sizeof(int)) == 77);
}

TEST_CASE("shared_array_file.w_plus_truncates") {
  TempDir dir;
  const std::string path = dir.file("c.bin");
  write_all(path, pattern(10000));
  Ints a(path, 10, 0, FileMode::w_plus);
  CHECK(fs::file_size(path) == 10 * sizeof(int));
  for (std::size_t i = 0; i < 10; ++i) CHECK(a[i] == 0);
}

TEST_CASE("shared_array_file.init_writes_file") {
  TempDir dir;
  const std::string path = dir.file("init.bin");
  auto ws = vscale::workers();
  {
    Ints a(path, 12, 0, FileMode::w_plus, vscale::init([](const Ints& s) {
             for (auto i : vscale::localindices(s)) s[i] = vscale::myid();
           }));
    CHECK(vscale::procs(a) == ws);
  }
  auto bytes = read_all(path);
  REQUIRE(bytes.size() == 12 * sizeof(int));
  for (std::size_t i = 0; i < 12; ++i) {
    // Owner of i under Julia's split.
    std::size_t owner = 0;
    for (std::size_t k = 0; k < ws.size(); ++k) {
      auto part = vscale::detail::split_1dim(12, ws.size(), k);
      if (i >= part.first && i < part.last) owner = k;
    }
    CHECK(value_at<int>(bytes, i * sizeof(int)) == ws[owner]);
  }
}

TEST_CASE("shared_array_file.workers_never_truncate") {
  // A process that first sees the array after the master wrote to it opens the file without
  // truncating or re-creating it, whatever the creation mode was.
  TempDir dir;
  auto ws = vscale::workers();
  for (FileMode mode : {FileMode::w_plus, FileMode::a_plus, FileMode::automatic}) {
    CAPTURE(static_cast<int>(mode));
    const std::string path = dir.file("keep" + std::to_string(static_cast<int>(mode)) + ".bin");
    Ints a(path, 100, 16, mode, vscale::pids({ws.front()}));
    a[0] = 42;
    a[99] = 99;
    // ws.back() takes no part: it opens the file when the handle arrives.
    CHECK(vscale::remotecall_fetch(ws.back(), [](const Ints& s) { return s[0] + s[99]; }, a) == 141);
    CHECK(a[0] == 42);
    CHECK(fs::file_size(path) == 16 + 100 * sizeof(int));
    CHECK(value_at<int>(read_all(path), 16) == 42);
  }
}

TEST_CASE("shared_array_file.handle_returned_to_master") {
  TempDir dir;
  const std::string path = dir.file("back.bin");
  Doubles a(path, 10, 24, FileMode::w_plus);
  Doubles back = vscale::remotecall_fetch(vscale::workers().front(), [](Doubles s) {
    s[2] = 2.5;
    return s;
  }, a);
  CHECK(back[2] == 2.5);
  CHECK(back.data() == a.data());  // mapped once on the master
  CHECK(back.size() == 10);
}

TEST_CASE("shared_array_file.r_missing_file") {
  TempDir dir;
  const std::string path = dir.file("missing.bin");
  std::string m = what_of([&] { Doubles a(path, 10, 0, FileMode::r); });
  CHECK(m.find(path) != std::string::npos);
  CHECK_THROWS_AS(Doubles(path, 10, 0, FileMode::r), vscale::Error);
  m = what_of([&] { Doubles a(path, 10, 0, FileMode::r_plus); });
  CHECK(m.find(path) != std::string::npos);
  CHECK_THROWS_AS(Doubles(path, 10, 0, FileMode::r_plus), vscale::Error);
  CHECK(!fs::exists(path));  // nothing created
}

TEST_CASE("shared_array_file.too_small") {
  TempDir dir;
  const std::string path = dir.file("short.bin");
  write_all(path, pattern(123));
  for (FileMode mode : {FileMode::r, FileMode::r_plus, FileMode::automatic}) {
    CAPTURE(static_cast<int>(mode));
    // 50 ints = 200 bytes; the file has 123.
    std::string m = what_of([&] { Ints a(path, 50, 0, mode); });
    CHECK(m.find("123") != std::string::npos);
    CHECK(m.find("200") != std::string::npos);
    CHECK(m.find(path) != std::string::npos);
    CHECK_THROWS_AS(Ints(path, 50, 0, mode), vscale::Error);
    // With an offset: 100 + 10 ints = 140 > 123.
    m = what_of([&] { Ints a(path, 10, 100, mode); });
    CHECK(m.find("123") != std::string::npos);
    CHECK(m.find("140") != std::string::npos);
  }
  // Not truncated or extended by the failed attempts.
  CHECK(fs::file_size(path) == 123);
  CHECK(read_all(path) == pattern(123));
}

TEST_CASE("shared_array_file.init_with_mode_r_is_usage_error") {
  TempDir dir;
  const std::string path = dir.file("ro.bin");
  write_all(path, std::vector<char>(400, 0));
  auto f = vscale::init([](const Ints& s) {
    for (auto i : vscale::localindices(s)) s[i] = 1;
  });
  CHECK_THROWS_AS(Ints(path, 100, 0, FileMode::r, f), vscale::UsageError);
  std::string m = what_of([&] { Ints a(path, 100, 0, FileMode::r, f); });
  CHECK(m.find(path) != std::string::npos);
  CHECK(read_all(path) == std::vector<char>(400, 0));
}

TEST_CASE("shared_array_file.mode_r_reads_everywhere") {
  TempDir dir;
  const std::string path = dir.file("data.bin");
  std::vector<char> bytes(64 * sizeof(double));
  for (std::size_t i = 0; i < 64; ++i) put_at<double>(bytes, i * sizeof(double), 0.25 * static_cast<double>(i));
  write_all(path, bytes);
  Doubles a(path, 64, 0, FileMode::r);
  CHECK(a[63] == 0.25 * 63);
  double want = 0;
  for (std::size_t i = 0; i < 64; ++i) want += 0.25 * static_cast<double>(i);
  for (int w : vscale::workers())
    CHECK(vscale::remotecall_fetch(w, [](const Doubles& s) {
      double sum = 0;
      for (double x : vscale::sdata(s)) sum += x;
      return sum;
    }, a) == want);
  CHECK(vscale::distributed_for({0, 64}, vscale::closure([](const Doubles& s, long i) {
                                  return s[static_cast<std::size_t>(i)];
                                }, a), std::plus<>{}) == want);
}

TEST_CASE("shared_array_file.offset_4096_leaves_prefix") {
  TempDir dir;
  const std::string path = dir.file("off.bin");
  const std::size_t off = 4096, n = 1000;
  auto bytes = pattern(off);
  bytes.resize(off + n * sizeof(int));
  for (std::size_t i = 0; i < n; ++i) put_at<int>(bytes, off + i * sizeof(int), -static_cast<int>(i));
  write_all(path, bytes);
  {
    Ints a(path, static_cast<long>(n), off, FileMode::r_plus);
    // The array sees what was at the offset.
    CHECK(a[0] == 0);
    CHECK(a[5] == -5);
    CHECK(a[999] == -999);
    vscale::distributed_for({0, static_cast<long>(n)}, vscale::closure([](const Ints& s, long i) {
                              s[static_cast<std::size_t>(i)] = static_cast<int>(i) * 3;
                            }, a))
        .wait();
  }
  auto after = read_all(path);
  REQUIRE(after.size() == off + n * sizeof(int));
  CHECK(std::vector<char>(after.begin(), after.begin() + off) == pattern(off));
  for (std::size_t i = 0; i < n; ++i) REQUIRE(value_at<int>(after, off + i * sizeof(int)) == static_cast<int>(i) * 3);
}

TEST_CASE("shared_array_file.offset_8_not_page_aligned") {
  TempDir dir;
  const std::string path = dir.file("off8.bin");
  const std::size_t off = 8, n = 3000;  // spans several pages
  std::vector<char> bytes(off + n * sizeof(double));
  std::memcpy(bytes.data(), "HEADER!!", 8);
  for (std::size_t i = 0; i < n; ++i) put_at<double>(bytes, off + i * sizeof(double), static_cast<double>(i) + 0.5);
  write_all(path, bytes);
  {
    Doubles a(path, static_cast<long>(n), off, FileMode::r_plus);
    CHECK(a[0] == 0.5);
    CHECK(a[n - 1] == static_cast<double>(n - 1) + 0.5);
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % alignof(double) == 0);
    // Workers see the same elements at the same offset.
    for (int w : vscale::workers())
      CHECK(vscale::remotecall_fetch(w, [](const Doubles& s) { return s[1234]; }, a) == 1234.5);
    vscale::distributed_for({0, static_cast<long>(n)}, vscale::closure([](const Doubles& s, long i) {
                              s[static_cast<std::size_t>(i)] *= -2;
                            }, a))
        .wait();
  }
  auto after = read_all(path);
  REQUIRE(after.size() == bytes.size());
  CHECK(std::string(after.data(), 8) == "HEADER!!");
  for (std::size_t i = 0; i < n; ++i)
    REQUIRE(value_at<double>(after, off + i * sizeof(double)) == -2 * (static_cast<double>(i) + 0.5));
}

TEST_CASE("shared_array_file.automatic_existing_is_r_plus") {
  TempDir dir;
  const std::string path = dir.file("auto.bin");
  // Twice as large as the array needs: automatic mode must not truncate.
  std::vector<char> bytes(200 * sizeof(int));
  for (std::size_t i = 0; i < 200; ++i) put_at<int>(bytes, i * sizeof(int), static_cast<int>(i) + 1000);
  write_all(path, bytes);
  {
    Ints a(path, 100);  // default offset 0, default mode
    CHECK(fs::file_size(path) == 200 * sizeof(int));
    CHECK(a[0] == 1000);
    CHECK(a[99] == 1099);
    vscale::remotecall_fetch(vscale::workers().front(), [](const Ints& s) { s[1] = -1; }, a);
  }
  auto after = read_all(path);
  CHECK(after.size() == 200 * sizeof(int));
  CHECK(value_at<int>(after, 0) == 1000);
  CHECK(value_at<int>(after, sizeof(int)) == -1);
  CHECK(value_at<int>(after, 150 * sizeof(int)) == 1150);  // beyond the array: untouched
}

TEST_CASE("shared_array_file.automatic_missing_is_w_plus") {
  TempDir dir;
  const std::string path = dir.file("new.bin");
  {
    Ints a(path, 25);
    CHECK(fs::file_size(path) == 25 * sizeof(int));
    a[24] = 24;
  }
  CHECK(value_at<int>(read_all(path), 24 * sizeof(int)) == 24);
}

TEST_CASE("shared_array_file.a_plus_extends_short_file") {
  TempDir dir;
  const std::string path = dir.file("append.bin");
  write_all(path, {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9'});
  {
    vscale::SharedArray<char, 1> a(path, 400, 0, FileMode::a_plus);
    CHECK(fs::file_size(path) == 400);
    CHECK(a[0] == '0');
    CHECK(a[9] == '9');
    CHECK(a[10] == 0);
    CHECK(a[399] == 0);
    vscale::remotecall_fetch(vscale::workers().back(), [](const vscale::SharedArray<char, 1>& s) { s[399] = 'z'; }, a);
  }
  auto after = read_all(path);
  REQUIRE(after.size() == 400);
  CHECK(std::string(after.data(), 10) == "0123456789");
  CHECK(after[399] == 'z');
  // A long enough file is left as it is (neither truncated nor extended).
  {
    vscale::SharedArray<char, 1> b(path, 5, 0, FileMode::a_plus);
    CHECK(b[4] == '4');
  }
  CHECK(fs::file_size(path) == 400);
  // a+ on a missing file creates it.
  const std::string fresh = dir.file("fresh.bin");
  {
    vscale::SharedArray<char, 1> c(fresh, 16, 0, FileMode::a_plus);
    CHECK(fs::file_size(fresh) == 16);
  }
}

TEST_CASE("shared_array_file.no_fds_left") {
  TempDir dir;
  auto ws = vscale::workers();
  for (int i = 0; i < 200; ++i) {
    std::string name = "f";  // (built stepwise: GCC 12 warns falsely on "literal" + std::string&&)
    name += std::to_string(i % 7);
    name += ".bin";
    const std::string path = dir.file(name);
    Ints a(path, 64, static_cast<std::size_t>(i % 3) * 8, FileMode::w_plus, vscale::init([](const Ints& s) {
             for (auto k : vscale::localindices(s)) s[k] = 1;
           }));
    CHECK(vscale::distributed_for({0, 64}, vscale::closure([](const Ints& s, long k) {
                                    return s[static_cast<std::size_t>(k)];
                                  }, a), std::plus<>{}) == 64);
  }
  CHECK(eventually([&] { return fds_under(dir.path) == 0; }));
  for (int w : ws) CHECK_MESSAGE(eventually([&] { return fds_under_on(w, dir.path) == 0; }), "worker " << w);
}

namespace {
// A 1 MiB tmpfs mounted on a fresh directory while it lives (we are root); `ok` false when
// mounting is not allowed here.
struct SmallTmpfs {
  TempDir dir;
  bool ok = false;
  SmallTmpfs() { ok = ::mount("tmpfs", dir.path.c_str(), "tmpfs", 0, "size=1m") == 0; }
  ~SmallTmpfs() {
    if (ok) ::umount2(dir.path.c_str(), MNT_DETACH);
  }
};

// Every worker still answers (none was killed).
void workers_alive(const std::vector<int>& ws) {
  for (int w : ws) CHECK(vscale::remotecall_fetch(w, [] { return vscale::myid(); }) == w);
  CHECK(vscale::workers() == ws);
}
}  // namespace

TEST_CASE("shared_array_file.full_filesystem_is_an_exception_not_sigbus") {
  // Issue 13: a file-backed array of 10 MB on a full 1 MB filesystem killed the workers with
  // SIGBUS in init (the file was only extended sparsely). Its blocks are reserved now, so the
  // constructor throws and no worker touches a page without a block.
  SmallTmpfs fs1;
  if (!fs1.ok) {
    MESSAGE("skipped: cannot mount a tmpfs here (" << std::strerror(errno) << "; needs root)");
    return;
  }
  const auto ws = vscale::workers();
  const std::string path = fs1.dir.file("big.bin");
  try {
    vscale::SharedArray<char, 1> a(path, std::size_t(10) << 20, 0, FileMode::w_plus,
                                   vscale::init([](const vscale::SharedArray<char, 1>& s) {
                                     for (auto k : vscale::localindices(s)) s[k] = 1;
                                   }));
    FAIL("a 10 MiB file-backed array on a full 1 MiB filesystem did not throw");
  } catch (const vscale::Error& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(m.find("cannot reserve") != std::string::npos);
    CHECK(m.find(path) != std::string::npos);
    CHECK(m.find("full") != std::string::npos);
  }
  CHECK(fs::file_size(path) == 0);  // as w+ left it: not a 10 MiB sparse file
  workers_alive(ws);
  // What fits works, on the same filesystem.
  vscale::SharedArray<char, 1> fits(fs1.dir.file("small.bin"), std::size_t(256) << 10, 0, FileMode::w_plus,
                                    vscale::init([](const vscale::SharedArray<char, 1>& s) {
                                      for (auto k : vscale::localindices(s)) s[k] = 2;
                                    }));
  CHECK(fits[(std::size_t(256) << 10) - 1] == 2);
}

TEST_CASE("shared_array_file.file_size_limit_is_an_exception_not_sigxfsz") {
  // Issue 13: growing a file past RLIMIT_FSIZE (`ulimit -f`) kills the process with SIGXFSZ;
  // a file-backed array that would is refused, naming the limit.
  TempDir dir;
  rlimit saved{};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  rlimit r = saved;
  r.rlim_cur = 1000 * 1024;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &r) == 0);
  std::string what;
  try {
    Doubles a(dir.file("limited.bin"), std::size_t(25) << 20, 0, FileMode::w_plus);  // 200 MiB
  } catch (const vscale::Error& e) {
    what = e.what();
  }
  // Within the limit, a+ extending a short file.
  bool small_ok = false;
  try {
    Doubles b(dir.file("small.bin"), 1000, 0, FileMode::a_plus);
    small_ok = b.size() == 1000;
  } catch (...) {
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  CAPTURE(what);
  CHECK(what.find("ulimit -f") != std::string::npos);
  CHECK(what.find("limited.bin") != std::string::npos);
  CHECK(small_ok);
}
