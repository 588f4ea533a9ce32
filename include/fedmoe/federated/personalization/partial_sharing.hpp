#pragma once
/// @file partial_sharing.hpp
/// @brief Partial model sharing: the parameter vector is split into a personal part, kept by each
/// client, and a shared part, trained with federated averaging. Three baselines, one class:
///
/// | factory       | paper                                                                                  | personal part      | local schedule per round                       |
/// |---------------|----------------------------------------------------------------------------------------|--------------------|------------------------------------------------|
/// | `fedper`      | Arivazhagan et al. 2019, "Federated learning with personalization layers"              | head (last layers) | joint: all parameters, `epochs`                |
/// | `fedrep`      | Collins et al. 2021, "Exploiting shared representations for personalized FL" (ICML)    | head               | head `head_epochs` (body frozen), then body `body_epochs` (head frozen) |
/// | `lg_fedavg`   | Liang et al. 2020, "Think locally, act globally: federated learning with local and global representations" | body (representation) | joint: all parameters, `epochs`     |
///
/// The split is a ParamRange of the ONE parameter vector (common.hpp: `head_range(model, k)` is the
/// last k layers with parameters, `body_range(model, k)` everything before them). Each round a
/// sampled client:
/// 1. starts from the broadcast global model with its personal part replaced by its own (the State;
///    the first time, the global model's personal part, which the server never changes: the initial one);
/// 2. runs the phases of its PartialSharingConfig in this order: `personal_epochs` with the shared part
///    frozen, `shared_epochs` with the personal part frozen, `joint_epochs` on everything (a frozen part is
///    bitwise unchanged: the phase's optimizer, a fresh copy of the prototype, sees only the trainable
///    ranges, so even weight decay leaves the frozen ones alone);
/// 3. keeps the trained personal part in its State and uploads delta = w_local - w_global with the
///    personal part set to **exactly zero**.
///
/// Transport: the upload still carries the whole vector (zeros on the personal part): the Transport
/// and the aggregators are unchanged, and the personal values never leave the client. With the mean
/// (or any aggregator that maps all-zero coordinates to zero: median, trimmed mean, Krum, ...) and a
/// server optimizer that leaves a zero pseudo-gradient alone (fedmoe's SGD, FedAvgM, FedAdam, FedYogi,
/// FedAdagrad, without weight decay), the server's copy of the personal part never changes. A
/// differentially private mean (DpMean) adds noise to every coordinate, the personal ones included: the
/// server's personal part then drifts (harmless for the clients with state, who never read it, but it is
/// what a client first sampled, and post-hoc personalisation, start from).
///
/// Personal parameters after the federation (`personal_parameters`):
/// - a client with state: the final global model with its personal part replaced by the client's (its
///   head, FedPer / FedRep; its body, LG-FedAvg), as left by its last round; no further training;
/// - a client without state (never sampled, or opted out): the final global model with the personal
///   part trained on the client's data for `post_hoc_epochs`, the shared part frozen (FedPer / FedRep:
///   the head on the global body; LG-FedAvg: a local body under the global head), fresh optimizer,
///   the given rng.
#include <cmath>
#include <string>
#include <utility>

#include "common.hpp"

namespace fedmoe {

/// The split and the local schedule of a partial-sharing algorithm.
struct PartialSharingConfig {
  ParamRange personal{};    ///< the client's own part, never aggregated
  int personal_epochs = 0;  ///< first: epochs on the personal part alone (shared part frozen)
  int shared_epochs = 0;    ///< then: epochs on the shared part alone (personal part frozen)
  int joint_epochs = 3;     ///< then: epochs on all parameters
  Index batch_size = 10;
  int post_hoc_epochs = 5;  ///< epochs on the personal part for a client without state
};

/// A client's personal part (empty until the client first trains).
template <class S>
struct PartialSharingState {
  Vector<S> personal;
  template <class Ar>
  void serialize(Ar& ar) { ar.parameters("personal", personal); }
};

/// Partial model sharing with optimizer prototype `Opt` and loss `L` (see the file).
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
class PartialSharing {
public:
  using scalar_type = typename Opt::scalar_type;
  using State = PartialSharingState<scalar_type>;
  static constexpr std::size_t uplink_extras = 0;

  /// `name` appears in error messages ("FedPer", "FedRep", "LG-FedAvg").
  PartialSharing(std::string name, PartialSharingConfig config, Opt prototype = Opt(), L loss = L())
      : m_name(std::move(name)), m_config(config), m_prototype(std::move(prototype)), m_loss(std::move(loss)) {
    FEDMOE_CHECK(config.personal.begin >= 0 && config.personal.size > 0, m_name,
                 ": expected a non-empty personal part [begin, begin + size) with begin >= 0, got [",
                 config.personal.begin, ", ", config.personal.end(), ")");
    FEDMOE_CHECK(config.personal_epochs >= 0 && config.shared_epochs >= 0 && config.joint_epochs >= 0 &&
                     config.post_hoc_epochs >= 0,
                 m_name, ": expected epochs >= 0, got personal ", config.personal_epochs, ", shared ",
                 config.shared_epochs, ", joint ", config.joint_epochs, ", post-hoc ", config.post_hoc_epochs);
    FEDMOE_CHECK(config.batch_size > 0, m_name, ": expected batch_size > 0, got ", config.batch_size);
  }

  template <Model M>
  ClientUpdate<scalar_type> train(M& model, const GlobalView<scalar_type>& global, const LocalData<scalar_type>& data,
                                  State& state, Rng& rng) const {
    detail::start_from(model, global);
    const ParamRange r = m_config.personal;
    detail::check_personal_range(m_name.c_str(), r, model.num_params());
    if (state.personal.size() != 0) {
      FEDMOE_CHECK(state.personal.size() == r.size, m_name, ": expected a personal part of ", r.size,
                   " parameters in the client's state, got ", state.personal.size());
      model.parameters().segment(r.begin, r.size) = state.personal;
    }
    const std::vector<ParamRange> personal{r}, shared = detail::complement(r, model.num_params());
    if (m_config.personal_epochs > 0) run_phase(model, data, personal, m_config.personal_epochs, rng);
    if (m_config.shared_epochs > 0) run_phase(model, data, shared, m_config.shared_epochs, rng);
    if (m_config.joint_epochs > 0) {
      Opt opt = m_prototype;
      opt.reset();
      L loss = m_loss;
      detail::local_steps(model, opt, loss, data, LocalUpdateConfig{m_config.joint_epochs, m_config.batch_size}, rng,
                          [](auto&, const auto&) {});
    }
    state.personal = model.parameters().segment(r.begin, r.size);
    ClientUpdate<scalar_type> u = detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
    u.delta.segment(r.begin, r.size).setZero();  // the personal part is never shared
    return u;
  }
  std::vector<Vector<scalar_type>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<scalar_type>>, Index) {}

  /// The client's personal model: `global` with the client's personal part, or (empty state) with a
  /// personal part trained post hoc, the shared part frozen (see the file).
  template <Model M>
  Vector<scalar_type> personal_parameters(M& workspace, const Vector<scalar_type>& global, const State& state,
                                          const LocalData<scalar_type>& data, Rng& rng) const {
    FEDMOE_CHECK(global.size() == workspace.num_params(), m_name, ": expected a global model of ",
                 workspace.num_params(), " parameters (the workspace's), got ", global.size());
    const ParamRange r = m_config.personal;
    detail::check_personal_range(m_name.c_str(), r, global.size());
    Vector<scalar_type> out = global;
    if (state.personal.size() != 0) {
      FEDMOE_CHECK(state.personal.size() == r.size, m_name, ": expected a personal part of ", r.size,
                   " parameters in the client's state, got ", state.personal.size());
      out.segment(r.begin, r.size) = state.personal;
      return out;
    }
    workspace.parameters() = global;
    if (m_config.post_hoc_epochs > 0) run_phase(workspace, data, {r}, m_config.post_hoc_epochs, rng);
    return workspace.parameters();
  }

  const PartialSharingConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

private:
  template <Model M>
  void run_phase(M& model, const LocalData<scalar_type>& data, std::vector<ParamRange> trainable, int epochs,
                 Rng& rng) const {
    Opt inner = m_prototype;
    inner.reset();
    detail::RangeOptimizer<Opt> opt(std::move(inner), std::move(trainable));
    L loss = m_loss;
    detail::local_steps(model, opt, loss, data, LocalUpdateConfig{epochs, m_config.batch_size}, rng,
                        [](auto&, const auto&) {});
  }

  std::string m_name;
  PartialSharingConfig m_config;
  Opt m_prototype;
  L m_loss;
};

/// FedPer: shared base layers, personal head `head` (e.g. head_range(model, 1) or 2 layers); all
/// parameters trained jointly for `local.epochs` each round, the base uploaded.
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
PartialSharing<Opt, L> fedper(ParamRange head, LocalUpdateConfig local = {}, Opt prototype = Opt(), L loss = L(),
                              int post_hoc_epochs = 5) {
  return PartialSharing<Opt, L>("FedPer", PartialSharingConfig{head, 0, 0, local.epochs, local.batch_size,
                                                               post_hoc_epochs},
                                std::move(prototype), std::move(loss));
}

/// FedRep: shared representation (body), local head `head`; each round `head_epochs` on the head with
/// the body frozen, then `body_epochs` on the body with the head frozen, the body uploaded. Defaults
/// 10 and 1: many cheap epochs on the head, one on the representation, as in the paper's experiments
/// (its public code, local_ep 10 with local_rep_ep 1, spends 9 of 10 epochs on the head and 1 on the body).
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
PartialSharing<Opt, L> fedrep(ParamRange head, int head_epochs = 10, int body_epochs = 1, Index batch_size = 10,
                              Opt prototype = Opt(), L loss = L(), int post_hoc_epochs = 5) {
  return PartialSharing<Opt, L>("FedRep", PartialSharingConfig{head, head_epochs, body_epochs, 0, batch_size,
                                                               post_hoc_epochs},
                                std::move(prototype), std::move(loss));
}

/// LG-FedAvg: local representation `body` (e.g. body_range(model, 1)), global head; all parameters
/// trained jointly for `local.epochs` each round, the head uploaded.
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
PartialSharing<Opt, L> lg_fedavg(ParamRange body, LocalUpdateConfig local = {}, Opt prototype = Opt(), L loss = L(),
                                 int post_hoc_epochs = 5) {
  return PartialSharing<Opt, L>("LG-FedAvg", PartialSharingConfig{body, 0, 0, local.epochs, local.batch_size,
                                                                  post_hoc_epochs},
                                std::move(prototype), std::move(loss));
}

}  // namespace fedmoe
