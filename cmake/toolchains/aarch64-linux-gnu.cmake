# Cross-compiling fedmoe for 64-bit ARM (aarch64) with Debian's cross toolchain, tests run under qemu.
#   apt-get install g++-aarch64-linux-gnu qemu-user        (compiler, emulator)
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install zlib1g-dev:arm64   (zlib, the one compiled library fedmoe links, for arm64)
#   cmake -S . -B build/aarch64 --toolchain cmake/toolchains/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release
#   cmake --build build/aarch64 --target fedmoe_tests && ctest --test-dir build/aarch64
# (or .ci/cross, which does all of it.) Eigen, Catch2, CLI11 and nlohmann-json are header-only and found
# where the host installed them. The build is for the aarch64 baseline (NEON, which aarch64 always has):
# FEDMOE_NATIVE is forced OFF, since -march=native would name the build machine's CPU.
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(FEDMOE_CROSS_TRIPLE aarch64-linux-gnu)
set(FEDMOE_CROSS_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)
