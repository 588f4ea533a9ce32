/// @file fuzz_checkpoint.cpp
/// @brief Fuzz target: the checkpoint format (io/serialization.hpp), restored into a model or an optimizer
/// that is then used, so a file that loads but leaves an inconsistent object is a finding too.
///
/// Input: one mode byte, then the file. Mode bit 0 set: the last 4 bytes are replaced by the CRC-32 of
/// the bytes before them, so mutations get past the checksum to the checks behind it. Mode bits 1-2:
/// 0 load_model into a small MLP, then a forward pass; 1 load_optimizer into Adam, then a step;
/// 2 into Sgd with momentum, then a step; 3 into Adagrad, then a step.
#include <sstream>
#include <string>

#include "fuzz_target.hpp"
#include "small_net.hpp"

namespace {

using fedmoe::fuzz::small_net;

template <class Optimizer>
void restore_and_step(std::istream& in, Optimizer opt) {
  auto net = small_net();
  fedmoe::load_optimizer(in, opt, net.num_params());
  fedmoe::Vector<float> params = net.parameters();
  const fedmoe::Vector<float> grads = fedmoe::Vector<float>::Constant(net.num_params(), 0.25f);
  opt.step(params, grads);
  opt.step(params, grads);
}

}  // namespace

FEDMOE_FUZZ_TARGET {
  if (size < 1) return 0;
  const fedmoe::fuzz::ModeAndFile input = fedmoe::fuzz::mode_and_file(data, size);
  const unsigned mode = input.mode;
  std::istringstream in(input.file);
  return fedmoe::fuzz::expect_clean_error([&] {
    switch ((mode >> 1) & 3u) {
      case 0: {
        auto net = small_net();
        fedmoe::load_model(in, net);
        (void)net.forward(fedmoe::Matrix<float>::Ones(4, 2));
        break;
      }
      case 1: restore_and_step(in, fedmoe::Adam<float>(1e-3)); break;
      case 2: restore_and_step(in, fedmoe::Sgd<float>(0.1, 0.9)); break;
      default: restore_and_step(in, fedmoe::Adagrad<float>(0.1)); break;
    }
  });
}
