// A raw pointer returned by a remote call would point into the other process's memory.
// EXPECT_ERROR: return type cannot be shipped back
#include <vscale/vscale.hpp>

int g_value = 3;
int* where() { return &g_value; }

int f() { return *vscale::remotecall_fetch(2, &where); }
