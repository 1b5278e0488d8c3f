// Test driver shared by every tests/test_*.cpp: the Session must exist before doctest runs,
// because workers are this same binary re-executed and never reach doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <vscale/vscale.hpp>

int main(int argc, char** argv) {
  vscale::Session session(argc, argv);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
