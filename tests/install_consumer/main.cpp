// Builds against an installed vscale (find_package(vscale), vscale::vscale) and runs one
// remote call on worker 2.
#include <vscale/vscale.hpp>

int main(int argc, char** argv) {
    vscale::Session s(argc, argv);
    return vscale::remotecall_fetch(2, [](int x) { return x + 1; }, 41) == 42 ? 0 : 1;
}
