// Helpers shared by the test files.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

namespace test_util {

/// Poll `pred` until it holds or `seconds` have passed (loaded machines are slow, and much of
/// vscale's clean-up is asynchronous).
template <class Pred>
bool eventually(Pred pred, int seconds = 30) {
  for (int i = 0; i < seconds * 100; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

/// The first and second worker (the tests run with at least two).
inline int w1() { return vscale::workers().at(0); }
inline int w2() { return vscale::workers().at(1); }

/// Sends this process's stderr (fd 2, so the runtime's own messages too) to a temporary file
/// while it lives; contents() reads what was written so far.
class StderrCapture {
 public:
  StderrCapture() {
    std::fflush(stderr);
    char tmpl[] = "/tmp/vscale_test_stderr_XXXXXX";
    int tmp = ::mkstemp(tmpl);
    REQUIRE(tmp >= 0);
    path_ = tmpl;
    saved_ = ::dup(2);
    REQUIRE(saved_ >= 0);
    REQUIRE(::dup2(tmp, 2) >= 0);
    ::close(tmp);
  }
  ~StderrCapture() {
    restore();
    std::remove(path_.c_str());
  }
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::string contents() {
    std::fflush(stderr);
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

 private:
  std::string path_;
  int saved_ = -1;
};

}  // namespace test_util
