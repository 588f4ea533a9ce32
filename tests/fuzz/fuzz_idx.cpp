/// @file fuzz_idx.cpp
/// @brief Fuzz target: load_idx (io/idx.hpp) on an images file and a labels file, gzip or plain.
/// Input: two files joined as in fuzz_target.hpp (images first).
#include <fedmoe/io/idx.hpp>

#include "fuzz_target.hpp"

FEDMOE_FUZZ_TARGET {
  static fedmoe::fuzz::ScratchFile images("idx-images"), labels("idx-labels");
  const auto parts = fedmoe::fuzz::two_parts(data, size);
  if (!parts.ok) return 0;
  images.write(parts.first);
  labels.write(parts.second);
  return fedmoe::fuzz::expect_clean_error([&] { (void)fedmoe::load_idx<float>(images.path(), labels.path(), 10); });
}
