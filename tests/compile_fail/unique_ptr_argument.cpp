// A std::unique_ptr owns memory of this process only: it cannot be an argument of a remote
// call (pass the value it points to).
// EXPECT_ERROR: argument type cannot be shipped to another process
#include <memory>
#include <vscale/vscale.hpp>

int use(std::unique_ptr<int> p) { return *p; }

int f() { return vscale::remotecall_fetch(2, &use, std::make_unique<int>(1)); }
