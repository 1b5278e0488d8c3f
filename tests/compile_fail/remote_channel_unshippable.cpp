// The values of a RemoteChannel travel between processes: a type that cannot be shipped (here
// a std::unique_ptr) cannot be one.
// EXPECT_ERROR: values of a RemoteChannel must be shippable
#include <memory>
#include <vscale/vscale.hpp>

vscale::RemoteChannel<std::unique_ptr<int>> ch;
