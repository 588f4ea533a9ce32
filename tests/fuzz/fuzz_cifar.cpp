/// @file fuzz_cifar.cpp
/// @brief Fuzz target: read_cifar_records (io/cifar.hpp) on one CIFAR binary file, gzip or plain.
/// Input: a selector byte (mod 3: 0 CIFAR-10, 1 CIFAR-100 fine labels, 2 CIFAR-100 coarse labels), then the file.
#include <fedmoe/io/cifar.hpp>

#include "fuzz_target.hpp"

FEDMOE_FUZZ_TARGET {
  static fedmoe::fuzz::ScratchFile file("cifar");
  if (size < 1) return 0;
  const unsigned format = data[0] % 3u;
  file.write({data + 1, size - 1});
  return fedmoe::fuzz::expect_clean_error([&] {
    if (format == 0) (void)fedmoe::read_cifar_records<float>(file.path(), 1, 0, 10);
    else (void)fedmoe::read_cifar_records<float>(file.path(), 2, format == 1 ? 1 : 0, format == 1 ? 100 : 20);
  });
}
