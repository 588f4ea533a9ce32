#pragma once
/// @file small_net.hpp
/// @brief The model fuzz_checkpoint restores files into, and make_seeds writes its seed files from.
#include <fedmoe/fedmoe.hpp>

namespace fedmoe::fuzz {

using SmallNet = Sequential<float, Dense<float>, ReLU<float>, Dense<float>>;

/// 4 inputs, 3 hidden units, 2 outputs (23 parameters in 4 tensors), initialised from seed 1.
inline SmallNet small_net() {
  SmallNet net(Shape{4, 1, 1}, Dense<float>(3), ReLU<float>(), Dense<float>(2));
  Rng rng(1);
  net.init(rng);
  return net;
}

}  // namespace fedmoe::fuzz
