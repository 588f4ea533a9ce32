#pragma once
/// @file personalize.hpp
/// @brief Per-client personalisation and evaluation: the local specialist, the fine-tuned
/// global model, and the mixture of experts, each trained on the client's own data with
/// early stopping on its validation set (restoring the best weights).
///
/// Works for every client, opted out or not: personalisation only downloads the global
/// model. Nothing here uploads: the specialist and gate live in this function's frame and
/// are discarded (or returned to the caller, who is the client) - they never reach a Transport.
#include <string>

#include "../moe/mixture.hpp"
#include "../optimizers/adam.hpp"
#include "client.hpp"

namespace fedmoe {

/// Where the mixture's specialist expert starts.
enum class ExpertInit {
  finetuned,  ///< a copy of the client's fine-tuned global model
  scratch,    ///< a freshly initialised model
};
inline const char* to_string(ExpertInit e) { return e == ExpertInit::finetuned ? "finetuned" : "scratch"; }

struct PersonalizeConfig {
  FitConfig fit{};                ///< paper: up to 500 epochs, check every 5, patience 10
  double lr_specialist = 1e-3;
  double lr_finetune = 1e-4;
  double lr_gate = 1e-3;           ///< the mixture's gate
  double lr_expert = 0;            ///< the mixture's specialist expert; 0: lr_finetune or lr_specialist by expert_init
  ExpertInit expert_init = ExpertInit::finetuned;
  std::uint64_t seed = 1;
};

/// Accuracy (fraction) of each method for one client.
struct ClientResult {
  std::int64_t client = -1;
  bool opted_out = false;
  double local_acc[4] = {0, 0, 0, 0};   ///< on the client's local test set: global, specialist, finetuned, mixture
  double global_acc[4] = {0, 0, 0, 0};  ///< on the global test set (same order)
  double mean_gate_local = 0;           ///< mean h(x) on the local test set
  double mean_gate_global = 0;          ///< mean h(x) on the global test set
  FitResult fits[3];                    ///< specialist, finetuned, mixture
};
inline constexpr const char* method_names[4] = {"global", "specialist", "finetuned", "mixture"};

namespace detail {
template <class Mix, class S>
std::pair<double, double> mixture_accuracy(Mix& mix, const Dataset<S>& data, std::span<const Index> idx,
                                           Index chunk = 500) {
  Index correct = 0;
  double gate = 0;
  for_each_chunk(data, idx, chunk, [&](const Matrix<S>& x, const Labels& y) {
    const Matrix<S>& p = mix.forward(x);
    for (Index j = 0; j < y.size(); ++j) correct += argmax_col(p, j) == y[j];
    gate += double(mix.gate_values().sum());
  });
  return {double(correct) / double(idx.size()), gate / double(idx.size())};
}

template <class Mix, class S>
double mixture_loss(Mix& mix, const Dataset<S>& data, std::span<const Index> idx) {
  Matrix<S> x;
  Labels y;
  gather_samples(data, idx, x, y);
  Rng unused(0);
  return double(mix.loss(x, y, Mode::eval, unused));
}
}  // namespace detail

/// Trains the mixture (gate + specialist expert; global frozen) on train with early stopping on val.
/// The gate and the expert have their own Adam (and learning rate).
template <class Mix>
FitResult fit_mixture(Mix& mix, const Dataset<typename Mix::scalar_type>& data, std::span<const Index> train,
                      std::span<const Index> val, const FitConfig& config, double lr_gate, double lr_expert,
                      Rng& rng) {
  using S = typename Mix::scalar_type;
  Adam<S> gate_opt(lr_gate), spec_opt(lr_expert);
  Batcher<S> batcher(data, train, config.batch_size);
  auto epoch = [&] {
    batcher.shuffle(rng);
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      const S loss = mix.loss_and_gradient(batcher.inputs(), batcher.labels(), Mode::train, rng);
      FEDMOE_CHECK(std::isfinite(double(loss)), "fit_mixture: the mixture loss became non-finite (", loss, ")");
      gate_opt.step(mix.gate().parameters(), mix.gate().gradients());
      spec_opt.step(mix.specialist().parameters(), mix.specialist().gradients());
    }
  };
  if (val.empty()) {
    for (int e = 0; e < config.max_epochs; ++e) epoch();
    return {config.max_epochs, config.max_epochs, 0.0};
  }
  return early_stopped_loop<S>(config, epoch, [&] { return detail::mixture_loss(mix, data, val); },
                               {std::ref(mix.gate().parameters()), std::ref(mix.specialist().parameters())});
}

/// Personalises one client and evaluates all four methods.
/// `global_model` holds the final global parameters (read only); `expert` and `gate` are
/// workspaces of the specialist and gate architectures (their parameters are overwritten).
/// `global_test_idx` indexes `test_data` (the global test set, the same for every client).
template <Model M, Model G, class S = typename M::scalar_type>
ClientResult personalize(const Client<S>& client, const M& global_model, M& expert, G& gate, const Dataset<S>& test_data,
                         std::span<const Index> global_test_idx, const PersonalizeConfig& config,
                         const double global_model_global_acc) {
  FEDMOE_CHECK(expert.num_params() == global_model.num_params(), "personalize: expected an expert workspace of ",
               global_model.num_params(), " parameters (the global architecture), got ", expert.num_params());
  const Dataset<S>& train_data = client.train_data();
  const ClientSplit& split = client.split();
  ClientResult r;
  r.client = client.id();
  r.opted_out = client.opted_out();
  auto rng_for = [&](std::uint64_t purpose) {
    return Rng::stream(config.seed, (std::uint64_t(client.id()) << 8) + purpose + (1ULL << 40));
  };

  M global = global_model;  // the downloaded copy (frozen)
  r.local_acc[0] = evaluate(global, test_data, split.test).accuracy;
  r.global_acc[0] = global_model_global_acc;

  // Specialist: from scratch, local data only.
  Rng rng = rng_for(1);
  expert.init(rng);
  {
    Adam<S> opt(config.lr_specialist);
    r.fits[0] = fit(expert, opt, train_data, split.train, split.val, config.fit, rng);
  }
  r.local_acc[1] = evaluate(expert, test_data, split.test).accuracy;
  r.global_acc[1] = evaluate(expert, test_data, global_test_idx).accuracy;

  // Fine-tuned: the global model trained further on local data.
  rng = rng_for(2);
  expert.parameters() = global.parameters();
  {
    Adam<S> opt(config.lr_finetune);
    r.fits[1] = fit(expert, opt, train_data, split.train, split.val, config.fit, rng);
  }
  r.local_acc[2] = evaluate(expert, test_data, split.test).accuracy;
  r.global_acc[2] = evaluate(expert, test_data, global_test_idx).accuracy;

  // Mixture: gate from scratch; specialist expert from the fine-tuned model or from scratch.
  rng = rng_for(3);
  gate.init(rng);
  if (config.expert_init == ExpertInit::scratch) expert.init(rng);
  Mixture mix(gate, expert, global);
  const double lr_expert = config.lr_expert > 0                              ? config.lr_expert
                           : config.expert_init == ExpertInit::finetuned ? config.lr_finetune
                                                                         : config.lr_specialist;
  r.fits[2] = fit_mixture(mix, train_data, split.train, split.val, config.fit, config.lr_gate, lr_expert, rng);
  std::tie(r.local_acc[3], r.mean_gate_local) = detail::mixture_accuracy(mix, test_data, std::span(split.test));
  std::tie(r.global_acc[3], r.mean_gate_global) = detail::mixture_accuracy(mix, test_data, global_test_idx);
  return r;
}

}  // namespace fedmoe
