/// @file fuzz_npy.cpp
/// @brief Fuzz target: load_npy_dataset (io/npy.hpp) on an inputs .npy and a labels .npy, samples of
/// shape {2, 3}, 10 classes. Input: two files joined as in fuzz_target.hpp (inputs first).
#include <fedmoe/io/npy.hpp>

#include "fuzz_target.hpp"

FEDMOE_FUZZ_TARGET {
  static fedmoe::fuzz::ScratchFile inputs("npy-inputs.npy"), labels("npy-labels.npy");
  return fedmoe::fuzz::two_files(data, size, inputs, labels, [](const std::string& x, const std::string& y) {
    (void)fedmoe::load_npy_dataset<float>(x, y, fedmoe::Shape{2, 3}, 10);
  });
}
