# Cross-compiling fedmoe for 32-bit ARM (armhf: ARMv7-A, hard float) with Debian's cross toolchain, tests
# run under qemu. A 32-bit target: Eigen's Index and size_t are 32 bits, which is what these builds test.
#   apt-get install g++-arm-linux-gnueabihf qemu-user        (compiler, emulator)
#   dpkg --add-architecture armhf && apt-get update
#   apt-get install zlib1g-dev:armhf   (zlib, the one compiled library fedmoe links, for armhf)
#   cmake -S . -B build/armhf --toolchain cmake/toolchains/arm-linux-gnueabihf.cmake -DCMAKE_BUILD_TYPE=Release
#   cmake --build build/armhf --target fedmoe_tests && ctest --test-dir build/armhf
# (or .ci/cross, which does all of it.)
#
# FPU: -mfpu=neon by default (FEDMOE_ARM_FPU). Debian's armhf baseline is VFPv3-D16 without NEON, with
# which Eigen does not vectorise at all on this target; with NEON it vectorises float, and its packet
# math differs from x86's in ways the tests must survive: float division is a reciprocal estimate plus
# one Newton step, and NEON flushes denormals to zero. Every ARMv7 board sold today (Cortex-A7/A9/A15,
# Raspberry Pi 2 and later) has NEON, so that is the build worth testing. Set FEDMOE_ARM_FPU to
# vfpv3-d16 for the Debian baseline, or to neon-vfpv4 for FMA too.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(FEDMOE_CROSS_TRIPLE arm-linux-gnueabihf)

set(CMAKE_C_COMPILER ${FEDMOE_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${FEDMOE_CROSS_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${FEDMOE_CROSS_TRIPLE})

set(FEDMOE_ARM_FPU neon CACHE STRING "The -mfpu of the armhf build: neon, vfpv3-d16 (Debian's baseline), neon-vfpv4")
set(CMAKE_C_FLAGS_INIT "-mfpu=${FEDMOE_ARM_FPU}")
# -Wno-psabi: GCC notes that the ABI of some std::pair parameters changed in GCC 7.1, on every Catch2 file.
set(CMAKE_CXX_FLAGS_INIT "-mfpu=${FEDMOE_ARM_FPU} -Wno-psabi")

set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L /usr/${FEDMOE_CROSS_TRIPLE})

# xtensor is header-only, but Debian installs its CMake package in the host's multiarch directory, and its
# arm64/armhf packages cannot be installed beside the host's (they need an xtl-dev of the same architecture,
# which is Architecture: all): use the host's.
set(xtensor_DIR /usr/lib/${CMAKE_HOST_SYSTEM_PROCESSOR}-linux-gnu/cmake/xtensor CACHE PATH "xtensor's CMake package (header-only)")

set(FEDMOE_NATIVE OFF CACHE BOOL "No -march=native when cross-compiling" FORCE)
# Optional dependencies are off for the cross build (see aarch64-linux-gnu.cmake).
set(CMAKE_DISABLE_FIND_PACKAGE_MPI ON)
set(CMAKE_DISABLE_FIND_PACKAGE_PkgConfig ON)
