// A lambda that captures a std::string is not trivially copyable: the error points to
// vscale::closure.
// EXPECT_ERROR: vscale::closure
#include <string>
#include <vscale/vscale.hpp>

int f() {
  std::string s = "hello";
  return vscale::remotecall_fetch(2, [s] { return static_cast<int>(s.size()); });
}
