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
set(CMAKE_SYSTEM_PROCESSOR arm)
set(FEDMOE_CROSS_TRIPLE arm-linux-gnueabihf)
set(FEDMOE_CROSS_QEMU qemu-arm)
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)

set(FEDMOE_ARM_FPU neon CACHE STRING "The -mfpu of the armhf build: neon, vfpv3-d16 (Debian's baseline), neon-vfpv4")
set(CMAKE_C_FLAGS_INIT "-mfpu=${FEDMOE_ARM_FPU}")
# -Wno-psabi: GCC notes that the ABI of some std::pair parameters changed in GCC 7.1, on every Catch2 file.
set(CMAKE_CXX_FLAGS_INIT "-mfpu=${FEDMOE_ARM_FPU} -Wno-psabi")
