# Cross-compiling fedmoe for 64-bit ARM (aarch64) with Debian's cross toolchain, tests run under qemu.
#   apt-get install g++-aarch64-linux-gnu qemu-user        (compiler, emulator)
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install zlib1g-dev:arm64   (zlib, the one compiled library fedmoe links, for arm64)
#   cmake -S . -B build/aarch64 --toolchain cmake/toolchains/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release
#   cmake --build build/aarch64 --target fedmoe_tests && ctest --test-dir build/aarch64
# (or .ci/cross, which does all of it.) Eigen, Catch2, CLI11 and nlohmann-json are header-only and found
# where the host installed them. The build is for the aarch64 baseline (NEON, which aarch64 always has):
# FEDMOE_NATIVE is forced OFF, since -march=native would name the build machine's CPU.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(FEDMOE_CROSS_TRIPLE aarch64-linux-gnu)

set(CMAKE_C_COMPILER ${FEDMOE_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${FEDMOE_CROSS_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${FEDMOE_CROSS_TRIPLE})

# ctest and catch_discover_tests run every test program through this (qemu-user; -L: the target's
# dynamic loader and libraries, installed by Debian's cross packages under /usr/<triple>).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${FEDMOE_CROSS_TRIPLE})

# xtensor is header-only, but Debian installs its CMake package in the host's multiarch directory, and its
# arm64/armhf packages cannot be installed beside the host's (they need an xtl-dev of the same architecture,
# which is Architecture: all): use the host's.
set(xtensor_DIR /usr/lib/${CMAKE_HOST_SYSTEM_PROCESSOR}-linux-gnu/cmake/xtensor CACHE PATH "xtensor's CMake package (header-only)")

set(FEDMOE_NATIVE OFF CACHE BOOL "No -march=native when cross-compiling" FORCE)
# Optional dependencies are off for the cross build: MPI and libsodium would need their arm64 -dev
# packages, and their code is the same on every target (the secure-aggregation and MPI tests run natively).
set(CMAKE_DISABLE_FIND_PACKAGE_MPI ON)
set(CMAKE_DISABLE_FIND_PACKAGE_PkgConfig ON)
