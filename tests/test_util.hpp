// Helpers shared by the test files.
#pragma once

#include <chrono>
#include <thread>

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

}  // namespace test_util
