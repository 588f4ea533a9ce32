#pragma once
/// @file ditto.hpp
/// @brief Ditto (Li, Hu, Beirami & Smith 2021, "Ditto: Fair and robust federated learning through
/// personalization", ICML; Algorithm 1) as a client algorithm (see local_training.hpp for the concept).
///
/// Each round a sampled client k, given the broadcast global model w^t:
/// 1. trains a copy of w^t exactly as LocalTraining does (same optimizer, loss, epochs and random
///    draws, so the upload is **bitwise** LocalTraining's) and uploads delta = w_k - w^t;
/// 2. then, continuing the same random stream, trains its personal model v_k (kept in its State, never
///    uploaded) for `personal.epochs` epochs on
///
///        h_k(v; w^t) = F_k(v) + lambda/2 |v - w^t|^2,   g <- grad F_k(v) + lambda (v - w^t)
///
///    with a fresh copy of the personal optimizer (Ditto's s local iterations; the paper uses SGD).
///    v_k starts, the first time the client is sampled, from that round's global model (the paper starts
///    every v_k from w^0; a client first sampled at round t has only w^t to start from).
///
/// lambda = 0 is local fine-tuning of the client's own model; lambda -> infinity keeps v_k at w^t.
/// Default lambda = 0.1: the paper tunes lambda per data set on a small grid of values (0.1 and 1
/// among them); 0.1 is the one suited to strongly label-skewed clients (the paper experiment's
/// majority-p partitions), where the personal model must move far from the global one, while 1 and
/// above is the grid's "robust" end, closer to the global model. Tune it per data set.
///
/// Personal parameters after the federation (`personal_parameters`):
/// - a client with state: its v_k as left by its last round (no further training);
/// - a client without state (never sampled, or opted out): post-hoc Ditto, v trained from the final
///   global model w on h(v; w) for `post_hoc_epochs` epochs (batch `personal.batch_size`) with a fresh
///   personal optimizer and the given rng.
#include <cmath>
#include <utility>

#include "common.hpp"

namespace fedmoe {

struct DittoConfig {
  double lambda = 0.1;                ///< weight of the proximal term lambda/2 |v - w^t|^2 (>= 0)
  LocalUpdateConfig global{};         ///< the global copy's local training (LocalTraining's config)
  LocalUpdateConfig personal{};       ///< the personal model's epochs and batch size per round
  int post_hoc_epochs = 5;            ///< epochs of post-hoc Ditto for a client without state
};

/// Ditto's client state: the personal model v_k (empty until the client first trains).
template <class S>
struct DittoState {
  Vector<S> personal;
  template <class Ar>
  void serialize(Ar& ar) { ar.parameters("personal", personal); }
};

/// Ditto with optimizer `Opt` for both models (separate copies, fresh each round) and loss `L`.
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
class Ditto {
public:
  using scalar_type = typename Opt::scalar_type;
  using State = DittoState<scalar_type>;
  static constexpr std::size_t uplink_extras = 0;

  /// One optimizer prototype for the global copy and the personal model.
  explicit Ditto(DittoConfig config = {}, Opt prototype = Opt(), L loss = L())
      : Ditto(config, prototype, prototype, std::move(loss)) {}
  Ditto(DittoConfig config, Opt global_prototype, Opt personal_prototype, L loss = L())
      : m_config(config), m_global_opt(std::move(global_prototype)), m_personal_opt(std::move(personal_prototype)),
        m_loss(std::move(loss)) {
    FEDMOE_CHECK(std::isfinite(config.lambda) && config.lambda >= 0, "Ditto: expected lambda >= 0, got ",
                 config.lambda);
    FEDMOE_CHECK(config.global.epochs >= 0 && config.personal.epochs >= 0 && config.post_hoc_epochs >= 0,
                 "Ditto: expected epochs >= 0, got global ", config.global.epochs, ", personal ",
                 config.personal.epochs, ", post-hoc ", config.post_hoc_epochs);
  }

  template <Model M>
  ClientUpdate<scalar_type> train(M& model, const GlobalView<scalar_type>& global, const LocalData<scalar_type>& data,
                                  State& state, Rng& rng) const {
    // 1. The global copy: LocalTraining's code path, step for step.
    detail::start_from(model, global);
    Opt opt = m_global_opt;
    opt.reset();
    L loss = m_loss;
    detail::local_steps(model, opt, loss, data, m_config.global, rng, [](auto&, const auto&) {});
    ClientUpdate<scalar_type> update =
        detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
    // 2. The personal model, on the same workspace, anchored at the broadcast w^t.
    if (state.personal.size() == 0) state.personal = global.parameters;
    FEDMOE_CHECK(state.personal.size() == model.num_params(), "Ditto: expected a personal model of ",
                 model.num_params(), " parameters (the workspace's), got ", state.personal.size());
    model.parameters() = state.personal;
    train_personal(model, global.parameters, data, m_config.personal, rng);
    state.personal = model.parameters();
    return update;
  }
  std::vector<Vector<scalar_type>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<scalar_type>>, Index) {}

  /// The client's personal model: its v_k, or (empty state) post-hoc Ditto from `global` (see the file).
  template <Model M>
  Vector<scalar_type> personal_parameters(M& workspace, const Vector<scalar_type>& global, const State& state,
                                          const LocalData<scalar_type>& data, Rng& rng) const {
    FEDMOE_CHECK(global.size() == workspace.num_params(), "Ditto: expected a global model of ",
                 workspace.num_params(), " parameters (the workspace's), got ", global.size());
    if (state.personal.size() != 0) {
      FEDMOE_CHECK(state.personal.size() == global.size(), "Ditto: expected a personal model of ", global.size(),
                   " parameters, got ", state.personal.size());
      return state.personal;
    }
    workspace.parameters() = global;
    train_personal(workspace, global, data, LocalUpdateConfig{m_config.post_hoc_epochs, m_config.personal.batch_size},
                   rng);
    return workspace.parameters();
  }

  const DittoConfig& config() const { return m_config; }
  double lambda() const { return m_config.lambda; }

private:
  template <Model M>
  void train_personal(M& model, const Vector<scalar_type>& anchor, const LocalData<scalar_type>& data,
                      const LocalUpdateConfig& local, Rng& rng) const {
    using S = scalar_type;
    Opt opt = m_personal_opt;
    opt.reset();
    L loss = m_loss;
    const S lambda = S(m_config.lambda);
    detail::local_steps(model, opt, loss, data, local, rng, [&](Vector<S>& g, const Vector<S>& v) {
      if (m_config.lambda != 0) g.noalias() += lambda * (v - anchor);
    });
  }

  DittoConfig m_config;
  Opt m_global_opt, m_personal_opt;
  L m_loss;
};

}  // namespace fedmoe
