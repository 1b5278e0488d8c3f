// pmap's on_error is typed: its result must convert to the result type of pmap's function (a
// std::string for a long here is a compile error, not a PmapError at run time).
// EXPECT_ERROR: on_error must return the result type of pmap's function
#include <exception>
#include <string>
#include <vector>
#include <vscale/vscale.hpp>

auto f() {
  return vscale::pmap([](long x) { return x; }, std::vector<long>{1, 2, 3},
                      {.on_error = [](const std::exception& e) { return std::string(e.what()); }});
}
