// SharedArray elements live as raw bytes in shared memory: they must be trivially copyable.
// EXPECT_ERROR: SharedArray elements must be trivially copyable
#include <string>
#include <vscale/vscale.hpp>

vscale::SharedArray<std::string, 1> a;
