/// @file fuzz_idx.cpp
/// @brief Fuzz target: load_idx (io/idx.hpp) on an images file and a labels file, gzip or plain.
/// Input: two files joined as in fuzz_target.hpp (images first).
#include <fedmoe/io/idx.hpp>

#include "fuzz_target.hpp"

FEDMOE_FUZZ_TARGET {
  static fedmoe::fuzz::ScratchFile images("idx-images"), labels("idx-labels");
  return fedmoe::fuzz::two_files(data, size, images, labels, [](const std::string& x, const std::string& y) {
    (void)fedmoe::load_idx<float>(x, y, 10);
  });
}
