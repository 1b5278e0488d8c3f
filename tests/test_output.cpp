// Output forwarding: what a worker writes to stdout or stderr reaches the master's stdout or
// stderr, line by line, as "From worker N: ..." (like Julia).
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// Redirects this process's file descriptor `fd` into a temporary file for one scope.
class FdCapture {
 public:
  explicit FdCapture(int fd) : fd_(fd) {
    flush();
    char tmpl[] = "/tmp/vscale_test_output_XXXXXX";
    int tmp = ::mkstemp(tmpl);
    REQUIRE(tmp >= 0);
    path_ = tmpl;
    saved_ = ::dup(fd_);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(tmp, fd_) >= 0);
    ::close(tmp);
  }
  ~FdCapture() { restore(); }

  void restore() {
    if (saved_ < 0) return;
    flush();
    ::dup2(saved_, fd_);
    ::close(saved_);
    saved_ = -1;
    ::unlink(path_.c_str());
  }

  std::string contents() {
    flush();
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Poll until a line that starts with `prefix` (after leading blanks) and contains `needle`
  // appears, or about 30 s have passed. Returns the matching line or "".
  std::string wait_for_line(const std::string& prefix, const std::string& needle) {
    for (int i = 0; i < 3000; ++i) {
      if (auto l = find_line(contents(), prefix, needle); !l.empty()) return l;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return find_line(contents(), prefix, needle);
  }

  static std::string find_line(const std::string& text, const std::string& prefix, const std::string& needle) {
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      auto start = line.find_first_not_of(" \t");
      if (start == std::string::npos) continue;
      if (line.compare(start, prefix.size(), prefix) == 0 && line.find(needle) != std::string::npos) return line;
    }
    return "";
  }

 private:
  static void flush() {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(stdout);
    std::fflush(stderr);
  }
  int fd_;
  int saved_ = -1;
  std::string path_;
};

}  // namespace

TEST_CASE("output.stdout_printf") {
  for (int w : vscale::workers()) {
    CAPTURE(w);
    std::string line, all;
    {
      FdCapture cap(STDOUT_FILENO);
      vscale::remotecall_fetch(w, [] {
        std::printf("hello %d\n", 7);
        std::fflush(stdout);
      });
      line = cap.wait_for_line("From worker " + std::to_string(w) + ":", "hello 7");
      all = cap.contents();
    }
    CAPTURE(all);
    CHECK(line != "");
    // Nothing from this worker arrives without its prefix.
    CHECK(FdCapture::find_line(all, "hello 7", "hello 7") == "");
  }
}

TEST_CASE("output.stdout_cout_several_lines") {
  int w = vscale::workers().front();
  std::string l1, l2, all;
  {
    FdCapture cap(STDOUT_FILENO);
    vscale::remotecall_fetch(w, [] {
      std::cout << "line one" << std::endl;
      std::cout << "line two" << std::endl;
    });
    l1 = cap.wait_for_line("From worker " + std::to_string(w) + ":", "line one");
    l2 = cap.wait_for_line("From worker " + std::to_string(w) + ":", "line two");
    all = cap.contents();
  }
  CAPTURE(all);
  CHECK(l1 != "");
  CHECK(l2 != "");
  CHECK(all.find("line one") < all.find("line two"));
}

TEST_CASE("output.stderr_cerr") {
  for (int w : vscale::workers()) {
    CAPTURE(w);
    std::string line, all;
    {
      FdCapture cap(STDERR_FILENO);
      vscale::remotecall_fetch(w, [] { std::cerr << "oops " << 8 << std::endl; });
      line = cap.wait_for_line("From worker " + std::to_string(w) + ":", "oops 8");
      all = cap.contents();
    }
    CAPTURE(all);
    CHECK(line != "");
  }
}

TEST_CASE("output.long_line") {
  int w = vscale::workers().back();
  std::string line, all;
  {
    FdCapture cap(STDOUT_FILENO);
    vscale::remotecall_fetch(w, [] {
      std::string big(100000, 'q');
      std::printf("long:%s:end\n", big.c_str());
      std::fflush(stdout);
    });
    line = cap.wait_for_line("From worker " + std::to_string(w) + ":", ":end");
    all = cap.contents();
  }
  CHECK(line != "");
  // The whole line arrived (possibly split into several prefixed pieces, but not truncated).
  std::size_t qs = 0;
  for (char c : all) qs += c == 'q';
  CHECK(qs == 100000);
}

TEST_CASE("output.new_worker") {
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  int w = added[0];
  std::string line;
  {
    FdCapture cap(STDOUT_FILENO);
    vscale::remotecall_fetch(w, [] {
      std::printf("fresh %d\n", vscale::myid());
      std::fflush(stdout);
    });
    line = cap.wait_for_line("From worker " + std::to_string(w) + ":", "fresh " + std::to_string(w));
  }
  CHECK(line != "");
  vscale::rmprocs(added);
  CHECK(vscale::nworkers() == 2);
}

TEST_CASE("output.last_line_without_newline_at_exit") {
  // What a worker wrote without a final newline still arrives when it goes away.
  auto added = vscale::addprocs(1);
  REQUIRE(added.size() == 1);
  int w = added[0];
  std::string line;
  {
    FdCapture cap(STDOUT_FILENO);
    vscale::remotecall_fetch(w, [] {
      std::printf("goodbye without newline");
      std::fflush(stdout);
    });
    vscale::rmprocs(added);
    line = cap.wait_for_line("From worker " + std::to_string(w) + ":", "goodbye without newline");
  }
  CHECK(line != "");
  CHECK(vscale::nworkers() == 2);
}

TEST_CASE("output.partial_writes_make_one_line") {
  int w = vscale::workers().front();
  std::string line;
  {
    FdCapture cap(STDOUT_FILENO);
    vscale::remotecall_fetch(w, [] {
      std::printf("part-one ");
      std::fflush(stdout);
      std::printf("part-two\n");
      std::fflush(stdout);
    });
    line = cap.wait_for_line("From worker " + std::to_string(w) + ":", "part-two");
  }
  CAPTURE(line);
  CHECK(line.find("part-one part-two") != std::string::npos);
}

TEST_CASE("output.lines_from_two_workers_stay_whole") {
  auto ws = vscale::workers();
  std::string all;
  {
    FdCapture cap(STDOUT_FILENO);
    std::vector<vscale::Future<void>> fs;
    for (int w : ws)
      fs.push_back(vscale::remotecall(w, [] {
        for (int i = 0; i < 200; ++i) {
          std::printf("tag-%d-%d-%s\n", vscale::myid(), i, std::string(static_cast<std::size_t>(50 + i), 'x').c_str());
          if (i % 7 == 0) std::fflush(stdout);
        }
        std::fflush(stdout);
      }));
    for (auto& f : fs) f.wait();
    for (int w : ws) cap.wait_for_line("From worker " + std::to_string(w) + ":", "tag-" + std::to_string(w) + "-199-");
    all = cap.contents();
  }
  // Every line is one whole line of one worker, with that worker's prefix.
  std::istringstream lines(all);
  std::string line;
  int good = 0, bad = 0;
  std::string first_bad;
  while (std::getline(lines, line)) {
    auto t = line.find("tag-");
    if (t == std::string::npos) continue;
    int id = 0, i = 0;
    if (std::sscanf(line.c_str() + t, "tag-%d-%d-", &id, &i) != 2) {
      ++bad;
      continue;
    }
    std::string expect_prefix = "From worker " + std::to_string(id) + ":";
    std::string tail = "tag-" + std::to_string(id) + "-" + std::to_string(i) + "-" + std::string(static_cast<std::size_t>(50 + i), 'x');
    auto start = line.find_first_not_of(" \t");
    bool ok = line.compare(start, expect_prefix.size(), expect_prefix) == 0 && line.size() >= tail.size() &&
              line.compare(line.size() - tail.size(), tail.size(), tail) == 0 && line.find("tag-", t + 1) == std::string::npos;
    if (ok) {
      ++good;
    } else {
      ++bad;
      if (first_bad.empty()) first_bad = line;
    }
  }
  CAPTURE(first_bad);
  CHECK(bad == 0);
  CHECK(good == 200 * static_cast<int>(ws.size()));
}
