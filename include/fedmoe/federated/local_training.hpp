#pragma once
/// @file local_training.hpp
/// @brief Client algorithms: what a sampled client does with the broadcast global model, and the
/// server-side half of the algorithm (extra vectors it broadcasts, what it learns from uploads).
///
/// The ClientAlgorithm concept (M a Model of the global architecture, S its scalar):
/// - `State`: what the client keeps across rounds (e.g. SCAFFOLD's control variate c_i). It is
///   owned by the client's process, passed to `train` by reference, and never handed to a Transport.
/// - `uplink_extras`: how many extra vectors of the model's size each update carries.
/// - `train(model, global, data, state, rng) -> ClientUpdate`: local training from `global`
///   (parameters and the broadcast extras); the update's delta is w_local - w_global.
/// - `downlink(P) -> std::vector<Vector<S>>`: the extra vectors the server broadcasts with the
///   global model (SCAFFOLD: c).
/// - `absorb(accepted, eligible)`: the server-side state update from the round's accepted updates
///   (SCAFFOLD: c <- c + (1/N) sum delta c_i over the accepted clients, N = eligible clients).
///
/// Three algorithms share one local loop (`detail::local_steps`), each adding its own correction
/// to the gradient before the optimizer step:
/// - LocalTraining: plain local training with any fedmoe Optimizer and Loss (FedAvg: Adam).
/// - FedProx (Li et al. 2020, "Federated optimization in heterogeneous networks"): the gradient of
///   the proximal term mu/2 |w - w_global|^2 is added, g <- g + mu (w - w_global).
/// - Scaffold (Karimireddy et al. 2020, "SCAFFOLD", option II control variates), with local SGD at
///   learning rate eta: g <- g - c_i + c; after K steps from x to y,
///   c_i+ = c_i - c + (x - y) / (K eta); the update carries delta y = y - x and delta c = c_i+ - c_i.
///
/// A local loss that becomes non-finite (a poisoned global model) does not throw: the client stops
/// and uploads what it has, which every aggregator then rejects as non-finite.
#include <cmath>
#include <span>
#include <vector>

#include "../data/batcher.hpp"
#include "../losses/cross_entropy.hpp"
#include "../losses/loss.hpp"
#include "../models/model.hpp"
#include "../optimizers/optimizer.hpp"
#include "../optimizers/sgd.hpp"
#include "aggregator.hpp"

namespace fedmoe {

/// Local epochs and batch size of a participant (paper: 3 epochs, batch 10).
struct LocalUpdateConfig {
  int epochs = 3;
  Index batch_size = 10;
};

/// What the server broadcast: the global parameters and the algorithm's extra vectors.
template <class S>
struct GlobalView {
  const Vector<S>& parameters;
  std::span<const Vector<S>> extras;
};

/// A client's training data as the algorithm sees it.
template <class S>
struct LocalData {
  const Dataset<S>& data;
  std::span<const Index> train;
  bool flip_labels = false;  ///< simulated label-flipping attacker: every label y becomes classes - 1 - y
};

/// No state across rounds.
struct NoClientState {
  template <class Ar>
  void serialize(Ar&) {}
};

namespace detail {
/// `epochs` shuffled passes of mini-batch steps from the model's current parameters; before each
/// optimizer step `correct(gradients, parameters)` may modify the gradient. Returns the steps taken
/// (fewer if the loss became non-finite).
template <Model M, Optimizer O, Loss L, class Correct>
Index local_steps(M& model, O& opt, L& loss, const LocalData<typename M::scalar_type>& local,
                  const LocalUpdateConfig& config, Rng& rng, Correct&& correct) {
  using S = typename M::scalar_type;
  FEDMOE_CHECK(config.epochs >= 0, "local training: expected epochs >= 0, got ", config.epochs);
  check_sample_shape("local training", input_shape_of(model), local.data.shape);  // shapes, not sizes
  thread_local Matrix<S> grad;  // reused across calls: no allocation in steady state
  thread_local Labels flipped;
  Batcher<S> batcher(local.data, local.train, config.batch_size);
  Index steps = 0;
  for (int e = 0; e < config.epochs; ++e) {
    batcher.shuffle(rng);
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      const Matrix<S>& x = batcher.inputs();
      const Labels* y = &batcher.labels();
      if (local.flip_labels) {
        flipped = (local.data.classes - 1) - batcher.labels().array();
        y = &flipped;
      }
      const S value = loss.gradient(model.forward(x, Mode::train, rng), *y, grad);
      if (!std::isfinite(double(value))) return steps;  // the upload will be rejected as non-finite
      model.backward(x, grad);
      correct(model.gradients(), std::as_const(model.parameters()));
      opt.step(model.parameters(), model.gradients());
      ++steps;
    }
  }
  return steps;
}

template <class S>
ClientUpdate<S> make_update(const Vector<S>& trained, const Vector<S>& global, Index samples) {
  return ClientUpdate<S>{-1, trained - global, samples, {}};
}

template <Model M>
void start_from(M& model, const GlobalView<typename M::scalar_type>& global) {
  FEDMOE_CHECK(global.parameters.size() == model.num_params(), "local training: expected a global model of ",
               model.num_params(), " parameters (the workspace's), got ", global.parameters.size());
  model.parameters() = global.parameters;
}
}  // namespace detail

/// Plain local training with a copy of `prototype` (fresh state each round) and `loss`.
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
class LocalTraining {
public:
  using scalar_type = typename Opt::scalar_type;
  using State = NoClientState;
  static constexpr std::size_t uplink_extras = 0;

  explicit LocalTraining(LocalUpdateConfig config = {}, Opt prototype = Opt(), L loss = L())
      : m_config(config), m_prototype(std::move(prototype)), m_loss(std::move(loss)) {}

  template <Model M>
  ClientUpdate<scalar_type> train(M& model, const GlobalView<scalar_type>& global,
                                  const LocalData<scalar_type>& data, State&, Rng& rng) const {
    detail::start_from(model, global);
    Opt opt = m_prototype;
    opt.reset();
    L loss = m_loss;
    detail::local_steps(model, opt, loss, data, m_config, rng, [](auto&, const auto&) {});
    return detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
  }
  std::vector<Vector<scalar_type>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<scalar_type>>, Index) {}
  const LocalUpdateConfig& config() const { return m_config; }

private:
  LocalUpdateConfig m_config;
  Opt m_prototype;
  L m_loss;
};

/// FedProx: local training on loss + mu/2 |w - w_global|^2 (mu = 0 is LocalTraining, bitwise).
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
class FedProx {
public:
  using scalar_type = typename Opt::scalar_type;
  using State = NoClientState;
  static constexpr std::size_t uplink_extras = 0;

  FedProx(double mu, LocalUpdateConfig config = {}, Opt prototype = Opt(), L loss = L())
      : m_mu(mu), m_config(config), m_prototype(std::move(prototype)), m_loss(std::move(loss)) {
    FEDMOE_CHECK(std::isfinite(mu) && mu >= 0, "FedProx: expected a proximal weight mu >= 0, got ", mu);
  }

  template <Model M>
  ClientUpdate<scalar_type> train(M& model, const GlobalView<scalar_type>& global,
                                  const LocalData<scalar_type>& data, State&, Rng& rng) const {
    using S = scalar_type;
    detail::start_from(model, global);
    Opt opt = m_prototype;
    opt.reset();
    L loss = m_loss;
    const S mu = S(m_mu);
    const Vector<S>& anchor = global.parameters;
    detail::local_steps(model, opt, loss, data, m_config, rng, [&](Vector<S>& g, const Vector<S>& w) {
      if (m_mu != 0) g.noalias() += mu * (w - anchor);
    });
    return detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
  }
  std::vector<Vector<scalar_type>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<scalar_type>>, Index) {}
  double mu() const { return m_mu; }

private:
  double m_mu;
  LocalUpdateConfig m_config;
  Opt m_prototype;
  L m_loss;
};

/// SCAFFOLD's client state: the control variate c_i (empty until the client first trains: zero).
template <class S>
struct ScaffoldState {
  Vector<S> control;
  template <class Ar>
  void serialize(Ar& ar) { ar.parameters("control", control); }
};

/// SCAFFOLD with option II control variates and local SGD at learning rate `lr` (eta_l).
/// Server side: the control variate c (zero at the start), broadcast as the one extra vector.
template <class S = float, Loss L = CrossEntropy<S>>
class Scaffold {
public:
  using scalar_type = S;
  using State = ScaffoldState<S>;
  static constexpr std::size_t uplink_extras = 1;

  explicit Scaffold(double lr, LocalUpdateConfig config = {}, L loss = L())
      : m_lr(lr), m_config(config), m_loss(std::move(loss)) {
    FEDMOE_CHECK(std::isfinite(lr) && lr > 0, "Scaffold: expected a local SGD learning rate > 0, got ", lr);
  }

  template <Model M>
  ClientUpdate<S> train(M& model, const GlobalView<S>& global, const LocalData<S>& data, State& state,
                        Rng& rng) const {
    detail::start_from(model, global);
    const Index p = model.num_params();
    FEDMOE_CHECK(global.extras.size() == 1 && global.extras[0].size() == p, "Scaffold: expected the server's ",
                 "control variate (1 extra vector of ", p, " values) with the global model, got ",
                 global.extras.size(), " extra vectors", global.extras.empty() ? "" : " of size ",
                 global.extras.empty() ? Index(0) : global.extras[0].size());
    const Vector<S>& c = global.extras[0];
    if (state.control.size() != p) state.control.setZero(p);
    Vector<S> correction = c - state.control;  // g - c_i + c
    Sgd<S> opt(m_lr);
    L loss = m_loss;
    const Index steps = detail::local_steps(model, opt, loss, data, m_config, rng,
                                            [&](Vector<S>& g, const Vector<S>&) { g.noalias() += correction; });
    ClientUpdate<S> u = detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
    // Option II: c_i+ = c_i - c + (x - y) / (K eta) = c_i - c - delta_y / (K eta); delta c = c_i+ - c_i.
    Vector<S> delta_c = -c;
    if (steps > 0) delta_c.noalias() -= u.delta / S(double(steps) * m_lr);
    state.control += delta_c;
    u.extras.push_back(std::move(delta_c));
    return u;
  }

  /// The server's control variate c (zero before the first round).
  std::vector<Vector<S>> downlink(Index p) const {
    return {m_control.size() == p ? m_control : Vector<S>(Vector<S>::Zero(p))};
  }

  /// c <- c + (1/N) sum_{i in accepted} delta c_i, N = eligible clients (Karimireddy et al., Alg. 1).
  void absorb(std::span<const ClientUpdate<S>> accepted, Index eligible) {
    if (accepted.empty()) return;
    const Index p = accepted.front().extras.at(0).size();
    if (m_control.size() != p) m_control.setZero(p);
    for (const auto& u : accepted) m_control += u.extras[0] / S(eligible);
  }
  const Vector<S>& control() const { return m_control; }
  /// The server side's state across rounds (io/archive.hpp).
  template <class Ar>
  void serialize(Ar& ar) { ar.parameters("control", m_control); }

private:
  double m_lr;
  LocalUpdateConfig m_config;
  L m_loss;
  Vector<S> m_control;
};

}  // namespace fedmoe
