// A type that is neither trivially copyable nor cereal-serializable cannot be an argument of a
// remote call: the compile error must say what to add.
// EXPECT_ERROR: cannot be shipped to another process
#include <memory>
#include <vscale/vscale.hpp>

struct Handle {
  std::unique_ptr<int> p;  // not trivially copyable, no serialize member
};

int use(const Handle&) { return 0; }

int f() { return vscale::remotecall_fetch(2, &use, Handle{}); }
