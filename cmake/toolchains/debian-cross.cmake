# What both Debian cross toolchain files share (aarch64-linux-gnu.cmake, arm-linux-gnueabihf.cmake): they set
# CMAKE_SYSTEM_PROCESSOR, FEDMOE_CROSS_TRIPLE and FEDMOE_CROSS_QEMU, then include this.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER ${FEDMOE_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${FEDMOE_CROSS_TRIPLE}-g++)
set(CMAKE_LIBRARY_ARCHITECTURE ${FEDMOE_CROSS_TRIPLE})

# ctest and catch_discover_tests run every test program through this (qemu-user; -L: the target's
# dynamic loader and libraries, installed by Debian's cross packages under /usr/<triple>).
# -E LD_LIBRARY_PATH: the loader -L gives (libc6-<arch>-cross's) must load the libc of the same glibc
# build. Without it, it reads the host's /etc/ld.so.cache (qemu falls back to host paths), which lists
# the multiarch libc6:<arch> that zlib1g-dev:<arch> pulls in (/lib/<triple>, another Debian revision of
# glibc 2.36), and a mismatched ld.so/libc.so.6 pair breaks in pthread_create: every std::thread
# segfaults on armhf and spins forever on aarch64 (a plain C pthread_create program is enough). .ci/cross
# runs its programs the same way.
set(CMAKE_CROSSCOMPILING_EMULATOR ${FEDMOE_CROSS_QEMU} -L /usr/${FEDMOE_CROSS_TRIPLE}
    -E LD_LIBRARY_PATH=/usr/${FEDMOE_CROSS_TRIPLE}/lib)

# xtensor is header-only, but Debian installs its CMake package in the host's multiarch directory, and its
# arm64/armhf packages cannot be installed beside the host's (they need an xtl-dev of the same architecture,
# which is Architecture: all): use the host's.
set(xtensor_DIR /usr/lib/${CMAKE_HOST_SYSTEM_PROCESSOR}-linux-gnu/cmake/xtensor CACHE PATH "xtensor's CMake package (header-only)")

set(FEDMOE_NATIVE OFF CACHE BOOL "No -march=native when cross-compiling" FORCE)
# Optional dependencies are off for the cross build: MPI and libsodium would need the target's -dev
# packages, and their code is the same on every target (the secure-aggregation and MPI tests run natively).
set(CMAKE_DISABLE_FIND_PACKAGE_MPI ON)
set(CMAKE_DISABLE_FIND_PACKAGE_PkgConfig ON)
