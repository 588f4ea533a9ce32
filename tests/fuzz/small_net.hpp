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

namespace fedmoe::fuzz {

/// A federation of 3 clients on 12 samples of 4 features (2 classes), the small net's architecture,
/// for the federation-state target (fuzz_state.cpp) and its seeds: `run_small_federation(kind, ...)`
/// trains 4 rounds with strategy `kind` (bit 0: 0 SCAFFOLD with a server Adam, 1 Ditto under DP-FedAvg with
/// adaptive clipping), saving the state every 2 rounds into `saves` (if given) and resuming from `resume` (if not
/// empty); then the global model is used for a forward pass.
struct SmallFederation {
  Dataset<float> data{Matrix<float>(4, 12), Labels(12), Shape{4, 1, 1}, 2};
  std::vector<Client<float>> clients;
  SmallFederation() {
    Rng rng(3);
    for (Index j = 0; j < 12; ++j) {
      data.labels[j] = std::int32_t(j % 2);
      for (Index r = 0; r < 4; ++r) data.inputs(r, j) = float(rng.normal() + (j % 2 ? 1.0 : -1.0));
    }
    for (Index k = 0; k < 3; ++k) {
      ClientSplit split;
      for (Index j = 4 * k; j < 4 * k + 3; ++j) split.train.push_back(j);
      split.val.push_back(4 * k + 3);
      clients.emplace_back(k, data, split, false);
    }
  }
};

inline void run_small_federation(unsigned kind, std::vector<std::string>* saves, const std::string& resume) {
  static const SmallFederation f;
  FederationConfig c;
  c.max_rounds = 4;
  c.check_every = 2;
  c.patience = 2;
  c.seed = 5;
  c.checkpoint.resume = resume;
  if (saves) {
    c.checkpoint.every = 2;
    c.checkpoint.save = [saves](int, bool, const std::string& s) { saves->push_back(s); };
  }
  const LocalUpdateConfig local{1, 2};
  auto net = small_net();
  InProcessTransport<float> transport;
  auto go = [&](auto strategy) {
    std::vector<typename decltype(strategy.algorithm)::State> states;
    (void)train_federated(net, f.clients, transport, c, strategy, states);
  };
  // Two strategies that between them keep every kind of state (each instantiation of the loop costs the
  // sanitized fuzz build minutes): server Adam moments, SCAFFOLD's server and client control variates and
  // early stopping's best copy; Ditto's personal models, DP's adaptive clipping norm and the accountant.
  if ((kind & 1u) == 0) {
    go(Strategy<UniformSampler, Scaffold<float>, WeightedMean, Adam<float>>{
        UniformSampler(2), Scaffold<float>(5e-2, local), WeightedMean{}, Adam<float>(1e-2)});
  } else {
    c.select_on_validation = false;
    go(Strategy<PoissonSampler, Ditto<Sgd<float>>, DpMean, Sgd<float>>{
        PoissonSampler(0.6), Ditto<Sgd<float>>(DittoConfig{0.1, local, local, 1}, Sgd<float>(1e-2)),
        DpMean(DpMeanConfig{0.5, 0.8, AdaptiveClipping{0.5, 0.2, 1.0}}), Sgd<float>(1)});
  }
  (void)net.forward(Matrix<float>::Ones(4, 2));
}

}  // namespace fedmoe::fuzz
