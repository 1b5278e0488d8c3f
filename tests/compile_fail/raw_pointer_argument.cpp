// A raw pointer means nothing in another process.
// EXPECT_ERROR: raw pointer cannot be shipped
#include <vscale/vscale.hpp>

int deref(const int* p) { return *p; }

int f() {
  int x = 1;
  return vscale::remotecall_fetch(2, &deref, &x);
}
