#pragma once
/// @file federation.hpp
/// @brief train_federated: one loop over a Strategy (client sampler, client algorithm, aggregator,
/// server optimizer), with opt-out, simulated attacks and failures, parallel clients, and early
/// stopping that restores the best **global** model.
///
/// A Strategy is four small types, each with its own header and contract (Flower splits a strategy
/// into configure / aggregate / evaluate; here each of those seams is a type):
///
/// | part             | concept / header                       | examples                                    |
/// |------------------|----------------------------------------|---------------------------------------------|
/// | sampler          | ClientSampler, sampler.hpp             | UniformSampler(m), PoissonSampler(q)        |
/// | client algorithm | local_training.hpp                     | LocalTraining, FedProx, Scaffold            |
/// | aggregator       | Aggregator, aggregator.hpp             | WeightedMean, CoordinateMedian, Krum, ...   |
/// | server optimizer | Optimizer, server_optimizer.hpp        | Sgd(1) = FedAvg, Sgd(lr, beta) = FedAvgM, Adam, Yogi, Adagrad |
///
/// Each round r: the sampler draws from the opted-in clients; attackers and failed clients are
/// drawn (attacks.hpp); the server broadcasts the global model and the algorithm's extras; every
/// sampled client that did not fail trains with its own persistent state and uploads; model-
/// poisoning attacks replace the attackers' updates as they arrive; the server aggregates (in
/// client-id order) and steps. Every `check_every` rounds the opted-in clients report the global
/// model's validation loss; the global parameters with the lowest loss are kept (a copy) and
/// restored at the end; training stops after `patience` checks without improvement or at
/// `max_rounds`. Without validation data on any opted-in client every round runs and the last
/// model is kept.
///
/// Reproducibility: round r's sample, roles and attack noise come from streams of (seed, r) alone;
/// client k in round r trains on Rng::stream(seed, 1 + r * 2^20 + k). Results are bitwise identical
/// for any thread count, and over a distributed transport (see transport.hpp, "Roles"): every
/// process runs this loop with the same streams, each trains only the clients it hosts, and the
/// server process aggregates and decides early stopping for all (`transport_share`).
///
/// Differential privacy (DP-FedAvg, privacy/dp_mean.hpp): with a DifferentiallyPrivate aggregator
/// (DpMean) the loop requires Poisson sampling (the accountant's assumption; any other sampler does not
/// compile) and a client algorithm that uploads nothing but the delta (SCAFFOLD's control variates would
/// be released unprotected), hands the aggregator its noise from the round's stream, accounts each
/// round with the RDP accountant (q = the sampler's rate, z = the aggregator's noise multiplier) and,
/// with an epsilon budget, stops before the first round that would exceed it. The guarantee covers the
/// model updates; the validation losses that early stopping uses are not privatised: set
/// `select_on_validation = false` (keep the last model, no early stopping) for a fully private result.
#include <chrono>
#include <functional>
#include <optional>
#include <vector>

#include "../core/parallel.hpp"
#include "../io/archive.hpp"
#include "../optimizers/adam.hpp"
#include "attacks.hpp"
#include "client.hpp"
#include "privacy/dp_mean.hpp"
#include "privacy/rdp_accountant.hpp"
#include "sampler.hpp"
#include "server.hpp"

namespace fedmoe {

/// Saving a run's state and resuming from it (io/archive.hpp). A resumed run's result and model are
/// bitwise those of the uninterrupted run: round r depends only on the state after round r - 1 and
/// on streams of (seed, r), and the state holds everything that carries over (the global model, the
/// server optimizer's and the aggregator's state, the client algorithm's server and client states,
/// early stopping's counters and best copy, the transport's round counter, the history).
/// In-process runs only: a distributed run's client states live on several processes.
struct FederationCheckpoint {
  int every = 0;  ///< save after every `every`-th round and once the run ends (0: never)
  /// Receives the state (the bytes of a state file) after round `round`; `finished`: the last save.
  std::function<void(int round, bool finished, const std::string& state)> save;
  /// A state from `save` to continue from (empty: start afresh). It must come from the same
  /// clients, model, strategy and config; seed, rounds, check interval, patience, the client count
  /// and the parameter count are checked, the rest is the caller's to guarantee (fedmoe-paper
  /// fingerprints its whole configuration).
  std::string resume;
};

struct FederationConfig {
  int max_rounds = 1000;
  int check_every = 40;  ///< paper: validation checked every 40 rounds
  int patience = 5;      ///< paper: patience 5 checks
  std::size_t threads = 1;
  std::uint64_t seed = 1;
  AttackConfig attack{};  ///< simulated attackers and client failures (none by default)
  /// false: validation losses are still computed and reported, but neither stop training nor pick the
  /// returned model (the last one is kept): what a DP run needs for its guarantee to cover the result.
  bool select_on_validation = true;
  PrivacyAccounting privacy{};  ///< used with a DifferentiallyPrivate aggregator only
  FederationCheckpoint checkpoint{};  ///< saving and resuming (none by default)
};

/// The four parts of a federated algorithm.
template <ClientSampler Smp, class Alg, class Agg, Optimizer Opt>
struct Strategy {
  Smp sampler;
  Alg algorithm;
  Agg aggregator;
  Opt server_optimizer;
};

/// FedAvg as in the paper: m clients per round, `local.epochs` of Adam(lr) at batch `local.batch_size`,
/// the sample-weighted mean, server SGD with lr 1 (x <- x + Delta).
template <class S = float>
auto fedavg(Index clients_per_round, LocalUpdateConfig local = {}, double lr = 1e-3) {
  return Strategy<UniformSampler, LocalTraining<Adam<S>>, WeightedMean, Sgd<S>>{
      UniformSampler(clients_per_round), LocalTraining<Adam<S>>(local, Adam<S>(lr)), WeightedMean{}, Sgd<S>(1.0)};
}

/// The count of clients for a fraction in (0, 1] of `available` clients (at least 1).
inline Index clients_for_fraction(double fraction, Index available) {
  FEDMOE_CHECK(fraction > 0 && fraction <= 1, "clients_for_fraction: expected a fraction in (0, 1], got ", fraction);
  return std::max<Index>(1, Index(std::llround(fraction * double(available))));
}

/// What happened to the sampled clients of one round.
struct RoundRecord {
  static constexpr double none = std::numeric_limits<double>::quiet_NaN();
  int round = 0;
  Index sampled = 0;    ///< clients drawn by the sampler
  Index failed = 0;     ///< sampled clients that did not return
  Index attackers = 0;  ///< sampled clients that were (simulated) attackers
  Index received = 0;   ///< updates that reached the server
  Index rejected = 0;   ///< malformed updates (NaN/inf, wrong size, bad weight, wrong extras)
  Index discarded = 0;  ///< well-formed updates a robust aggregator left out
  Index used = 0;       ///< updates in the aggregate
  bool stepped = false; ///< the server changed the global model this round
  double epsilon = none;    ///< DP: the privacy spent after this round (at the configured delta)
  double clip_norm = none;  ///< DP: the clipping norm C used this round (server process)
  template <class Ar>
  void serialize(Ar& ar) {
    ar("round", round)("sampled", sampled)("failed", failed)("attackers", attackers)("received", received);
    ar("rejected", rejected)("discarded", discarded)("used", used)("stepped", stepped)("epsilon", epsilon);
    ar("clip_norm", clip_norm);
  }
};

/// The privacy a DP run spent (FederationResult::privacy).
struct PrivacySpent {
  double epsilon = 0;          ///< after the last round run
  double delta = 0;
  double order = 0;            ///< the Renyi order that gave epsilon
  double noise_multiplier = 0; ///< z
  double sampling_rate = 0;    ///< q
  int rounds = 0;              ///< rounds accounted (= run)
  privacy::Conversion conversion = privacy::Conversion::improved;
  int budget_stop_round = 0;   ///< 0: the budget never stopped training; else the last round it allowed
  template <class Ar>
  void serialize(Ar& ar) {
    ar("epsilon", epsilon)("delta", delta)("order", order)("noise_multiplier", noise_multiplier);
    ar("sampling_rate", sampling_rate)("rounds", rounds)("conversion", conversion);
    ar("budget_stop_round", budget_stop_round);
  }
};

struct FederationResult {
  int rounds = 0;             ///< rounds run
  int best_round = 0;         ///< round whose global model was restored (0: the initial model)
  double best_val_loss = 0;   ///< its validation loss
  std::vector<std::pair<int, double>> val_history;  ///< (round, validation loss) at each check
  std::vector<RoundRecord> history;  ///< one record per round (received/rejected/...: on the server process)
  std::optional<PrivacySpent> privacy;  ///< set by a DP run
  /// Wall-clock seconds this process spent in the rounds and in the validation checks (not saved in a
  /// checkpoint: after a resume, the resumed part only). Timing, not a result: never compare it.
  double round_seconds = 0, check_seconds = 0;
  template <class Ar>
  void serialize(Ar& ar) {
    ar("rounds", rounds)("best_round", best_round)("best_val_loss", best_val_loss);
    ar("val_history", val_history)("history", history)("privacy", privacy);
  }
};

/// Progress callback after each round: (round, max_rounds, latest validation loss).
using FederationProgress = std::function<void(int, int, double)>;

namespace detail {
inline std::uint64_t client_stream_id(std::uint64_t round, std::uint64_t client) {
  return 1 + (round << 20) + client;
}
/// Streams of the round's sampler (0), roles (1), attack noise (2) and DP noise (3): bit 62 set, apart
/// from every client stream.
inline std::uint64_t round_stream_id(std::uint64_t round, std::uint64_t purpose) {
  return (std::uint64_t(1) << 62) + round * 4 + purpose;
}

/// The state of one federated run and its steps, each with its contract.
template <Model M, class T, class Smp, class Alg, class Agg, class Opt>
class FederationRun {
public:
  using S = typename M::scalar_type;

  FederationRun(M& global_model, const std::vector<Client<S>>& clients, T& transport, const FederationConfig& config,
                Strategy<Smp, Alg, Agg, Opt>& strategy, std::vector<typename Alg::State>& states)
      : m_clients(clients), m_transport(transport), m_config(config), m_strategy(strategy), m_states(states),
        m_server(global_model.parameters(), strategy.aggregator, strategy.server_optimizer),
        m_workspaces(std::max<std::size_t>(1, config.threads), global_model), m_stop(config.patience),
        m_is_server(transport_is_server(transport)) {
    for (std::size_t i = 0; i < clients.size(); ++i)
      if (!clients[i].opted_out()) m_eligible.push_back(i);
    validate();
    m_states.resize(clients.size());
    m_reporters = owned(m_eligible);
    if constexpr (is_private) start_accounting();
    const FederationCheckpoint& cp = m_config.checkpoint;
    FEDMOE_CHECK(cp.every >= 0, "train_federated: expected checkpoint.every >= 0, got ", cp.every);
    FEDMOE_CHECK(cp.every == 0 || cp.save, "train_federated: checkpoint.every is ", cp.every,
                 " but no checkpoint.save function was given");
    if (cp.every > 0 || !cp.resume.empty()) {
      FEDMOE_CHECK(m_is_server && owned(all_clients()).size() == m_clients.size(),
                   "train_federated: checkpoints need an in-process transport (this process hosts ",
                   owned(all_clients()).size(), " of the ", m_clients.size(),
                   " clients; their states cannot be saved here)");
    }
    if (!cp.resume.empty()) restore(cp.resume);
  }

  /// Every round until max_rounds or early stopping; the best global model goes to `global_model`.
  FederationResult run(M& global_model, const FederationProgress& progress) {
    if (m_next_round == 1 && !m_done) {
      auto clock = std::chrono::steady_clock::now();
      check(0);
      m_result.check_seconds += seconds_since(clock);
    }
    const int every = m_config.checkpoint.every;
    for (int round = m_next_round; !m_done && round <= m_config.max_rounds; ++round) {
      if constexpr (is_private)
        if (!budget_allows_round()) {
          m_result.privacy->budget_stop_round = round - 1;
          break;
        }
      auto clock = std::chrono::steady_clock::now();
      train_round(round);
      m_result.round_seconds += seconds_since(clock);
      m_result.rounds = round;
      const bool validate = round % m_config.check_every == 0 || round == m_config.max_rounds;
      m_done = validate && check(round);
      m_result.check_seconds += seconds_since(clock);
      m_next_round = round + 1;
      if (progress) progress(round, m_config.max_rounds, m_result.val_history.back().second);
      if (every > 0 && !m_done && round % every == 0 && round < m_config.max_rounds) save(round, false);
    }
    m_done = true;
    if (every > 0) save(m_result.rounds, true);
    global_model.parameters() = m_stop.has_best() ? m_stop.best() : m_server.global();
    return m_result;
  }

  /// The run's state across rounds (io/archive.hpp); see FederationCheckpoint.
  template <class Ar>
  void serialize(Ar& ar) {
    {  // what the state was made for: refused with the field that differs
      std::uint64_t seed = m_config.seed, clients = m_clients.size();
      std::int64_t params = m_server.global().size();
      int max_rounds = m_config.max_rounds, check_every = m_config.check_every, patience = m_config.patience;
      ar("for.seed", seed)("for.clients", clients)("for.parameters", params)("for.max_rounds", max_rounds);
      ar("for.check_every", check_every)("for.patience", patience);
      if constexpr (Ar::loading) {
        const auto same = [&](const char* what, auto saved, auto now) {
          FEDMOE_CHECK(saved == now, ar.who(), ": the state is from another run: it has ", what, " ", saved,
                       ", this run has ", now);
        };
        same("seed", seed, m_config.seed);
        same("client count", clients, m_clients.size());
        same("parameter count", params, m_server.global().size());
        same("max_rounds", max_rounds, m_config.max_rounds);
        same("check_every", check_every, m_config.check_every);
        same("patience", patience, m_config.patience);
      }
    }
    ar("next_round", m_next_round)("done", m_done);
    ar("server", m_server);
    if constexpr (requires { m_strategy.algorithm.serialize(ar); }) ar("algorithm", m_strategy.algorithm);
    ar("client_states", m_states);
    ar("early_stopping", m_stop);
    ar("result", m_result);
    if constexpr (requires { m_transport.serialize(ar); }) ar("transport", m_transport);
  }

private:
  static constexpr bool is_private = DifferentiallyPrivate<Agg>;

  // A transport that aggregates securely hands the server one pre-averaged update: DP-FedAvg's noise
  // would then be calibrated to the wrong sensitivity (distributed DP is not implemented).
  static_assert(!(is_private && requires { T::aggregates_securely; }),
                "train_federated: differential privacy (DpMean) cannot be combined with secure aggregation: the "
                "server only sees the sum, so it cannot clip the clients' updates (distributed DP is not implemented)");

  /// Seconds since `start`, which is reset to now.
  static double seconds_since(std::chrono::steady_clock::time_point& start) {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - start).count();
    start = now;
    return s;
  }

  std::vector<std::size_t> all_clients() const {
    std::vector<std::size_t> all(m_clients.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    return all;
  }

  void save(int round, bool finished) {
    StateWriter w(m_server.global().size());
    serialize(w);
    m_config.checkpoint.save(round, finished, w.bytes());
  }

  /// Continues from a saved state: every field checked (record names, types, sizes against the model
  /// and the client list), then the privacy accountant replayed to the rounds run.
  void restore(const std::string& bytes) {
    StateReader r(bytes, "train_federated: resume", m_server.global().size());
    serialize(r);
    r.finish();
    FEDMOE_CHECK(m_states.size() == m_clients.size(), r.who(), ": expected the states of ", m_clients.size(),
                 " clients, got ", m_states.size());
    const int run = m_result.rounds;
    FEDMOE_CHECK(run >= 0 && run <= m_config.max_rounds && m_next_round == run + 1 &&
                     m_result.history.size() == std::size_t(run),
                 r.who(), ": inconsistent state: ", run, " rounds run, next round ", m_next_round, ", ",
                 m_result.history.size(), " round records (max_rounds ", m_config.max_rounds, ")");
    FEDMOE_CHECK(!m_result.val_history.empty(), r.who(), ": inconsistent state: no validation check recorded");
    FEDMOE_CHECK(m_result.privacy.has_value() == is_private, r.who(), ": the state is from ",
                 m_result.privacy ? "a differentially private" : "a non-private", " run, this run is ",
                 is_private ? "differentially private" : "not private");
    if constexpr (is_private) {
      FEDMOE_CHECK(m_result.privacy->rounds >= 0 && m_result.privacy->rounds <= run, r.who(),
                   ": inconsistent state: ", m_result.privacy->rounds, " rounds accounted of ", run);
      for (int i = 0; i < m_result.privacy->rounds; ++i) m_accountant->step();
    }
  }

  void start_accounting() {
    static_assert(std::same_as<Smp, PoissonSampler>,
                  "train_federated: a differentially private aggregator needs PoissonSampler (the RDP accountant "
                  "of the sampled Gaussian mechanism assumes Poisson sampling)");
    FEDMOE_CHECK(Alg::uplink_extras == 0, "train_federated: differential privacy needs a client algorithm that ",
                 "uploads only its delta, got one with ", Alg::uplink_extras,
                 " extra vectors per update (e.g. SCAFFOLD's control variates, which would be released unprotected)");
    m_config.privacy.validate();
    m_server.aggregator().set_expected_clients(m_strategy.sampler.expected(Index(m_eligible.size())));
    m_accountant.emplace(m_strategy.sampler.rate, m_server.aggregator().noise_multiplier());
    PrivacySpent p;
    p.delta = m_config.privacy.delta;
    p.noise_multiplier = m_server.aggregator().noise_multiplier();
    p.sampling_rate = m_strategy.sampler.rate;
    p.conversion = m_config.privacy.conversion;
    m_result.privacy = p;
  }

  /// Whether one more round keeps the privacy spent within the budget.
  bool budget_allows_round() const {
    if (!std::isfinite(m_config.privacy.epsilon_budget)) return true;
    const auto next = m_accountant->epsilon_after(m_accountant->rounds() + 1, m_config.privacy.delta,
                                                  m_config.privacy.conversion);
    return next.epsilon <= m_config.privacy.epsilon_budget;
  }

  void account_round(RoundRecord& rec) {
    m_accountant->step();
    const auto spent = m_accountant->epsilon(m_config.privacy.delta, m_config.privacy.conversion);
    rec.epsilon = spent.epsilon;
    if (m_is_server) rec.clip_norm = m_server.aggregator().last_round().clip_norm;
    m_result.privacy->epsilon = spent.epsilon;
    m_result.privacy->order = spent.order;
    m_result.privacy->rounds = int(m_accountant->rounds());
  }

  void validate() const {
    FEDMOE_CHECK(!m_eligible.empty(), "train_federated: expected at least one client that did not opt out, got 0 of ",
                 m_clients.size());
    for (const auto& c : m_clients)
      FEDMOE_CHECK(c.id() >= 0 && c.id() < (std::int64_t(1) << 20),
                   "train_federated: expected client ids in [0, 2^20) (they select random streams), got ", c.id());
    FEDMOE_CHECK(m_config.max_rounds >= 0 && m_config.check_every > 0, "train_federated: expected max_rounds >= 0 ",
                 "and check_every > 0, got ", m_config.max_rounds, " and ", m_config.check_every);
    m_strategy.sampler.validate(Index(m_eligible.size()));
    m_config.attack.validate();
  }

  std::vector<std::size_t> owned(const std::vector<std::size_t>& ids) const {  // the clients this process hosts
    std::vector<std::size_t> mine;
    for (std::size_t i : ids)
      if (transport_owns(m_transport, m_clients[i].id())) mine.push_back(i);
    return mine;
  }

  /// Broadcast the global model (and the algorithm's extras); a non-server process refreshes its replica.
  void publish() {
    m_server.publish(m_transport, m_is_server ? m_strategy.algorithm.downlink(m_server.global().size())
                                              : std::vector<Vector<S>>{});
    if (!m_is_server) m_server.set_global(m_transport.global());
  }

  /// One round: sample, draw roles, train the hosted participants, aggregate on the server.
  void train_round(int round) {
    const auto r = std::uint64_t(round);
    Rng sampler_rng = Rng::stream(m_config.seed, round_stream_id(r, 0));
    const std::vector<std::size_t> sampled = m_strategy.sampler.sample(m_eligible, sampler_rng);
    Rng roles_rng = Rng::stream(m_config.seed, round_stream_id(r, 1));
    const RoundRoles roles = draw_roles(m_config.attack, sampled, roles_rng);
    std::vector<std::size_t> returning;
    for (std::size_t i : sampled)
      if (!roles.has_failed(i)) returning.push_back(i);
    const std::vector<std::size_t> mine = owned(returning);
    const bool flip = m_config.attack.kind == AttackKind::label_flip;

    publish();
    parallel_for(mine.size(), m_workspaces.size(), [&](std::size_t t, std::size_t w) {
      const std::size_t i = mine[t];
      Rng rng = Rng::stream(m_config.seed, client_stream_id(r, std::uint64_t(m_clients[i].id())));
      m_clients[i].participate(m_transport, m_workspaces[w], m_strategy.algorithm, m_states[i], rng,
                               flip && roles.is_attacker(i));
    });
    std::vector<ClientUpdate<S>> updates = m_transport.collect();

    RoundRecord rec{round, Index(sampled.size()), Index(roles.failed.size()), Index(roles.attackers.size())};
    if (m_is_server) {
      rec.received = Index(updates.size());
      Rng noise_rng = Rng::stream(m_config.seed, round_stream_id(r, 2));
      poison_updates(m_config.attack, updates, [&](std::int64_t id) { return is_attacker(roles, id); }, noise_rng);
      Rng dp_rng = Rng::stream(m_config.seed, round_stream_id(r, 3));
      const AggregationReport report = m_server.step(updates, Alg::uplink_extras, &dp_rng);
      m_strategy.algorithm.absorb(m_server.accepted(updates), Index(m_eligible.size()));
      rec.rejected = Index(report.rejected.size());
      rec.discarded = Index(report.discarded.size());
      rec.used = report.ok ? report.used : 0;
      rec.stepped = report.ok;
    }
    if constexpr (is_private) account_round(rec);
    m_result.history.push_back(rec);
  }

  bool is_attacker(const RoundRoles& roles, std::int64_t id) const {
    for (std::size_t i : roles.attackers)
      if (m_clients[i].id() == id) return true;
    return false;
  }

  /// Validation of the current global model by the opted-in clients; true when early stopping says stop.
  bool check(int round) {
    publish();
    parallel_for(m_reporters.size(), m_workspaces.size(), [&](std::size_t i, std::size_t w) {
      m_clients[m_reporters[i]].report_validation(m_transport, m_workspaces[w]);
    });
    const double loss = transport_share(m_transport, m_server.validation_loss(m_transport));
    m_result.val_history.emplace_back(round, loss);
    if (std::isnan(loss)) return false;  // no opted-in client has validation data: no early stopping
    if (!m_config.select_on_validation) return false;  // reported only
    const int before = m_stop.best_check();
    const bool done = m_stop.observe(loss, {std::cref(m_server.global())});  // a copy of the AGGREGATED model
    if (m_stop.best_check() != before) {
      m_result.best_round = round;
      m_result.best_val_loss = loss;
    }
    return done;
  }

  const std::vector<Client<S>>& m_clients;
  T& m_transport;
  const FederationConfig& m_config;
  Strategy<Smp, Alg, Agg, Opt>& m_strategy;
  std::vector<typename Alg::State>& m_states;
  Server<S, Agg, Opt> m_server;
  std::vector<M> m_workspaces;
  EarlyStopping<S> m_stop;
  std::optional<privacy::RdpAccountant> m_accountant;
  bool m_is_server;
  std::vector<std::size_t> m_eligible, m_reporters;
  FederationResult m_result;
  int m_next_round = 1;  ///< the first round still to run
  bool m_done = false;   ///< early stopping (or the end) was reached: no round is left
};
}  // namespace detail

/// Trains `global_model` (its parameters are the initial global model and receive the best one)
/// with `strategy`. `client_states` holds every client's persistent algorithm state, indexed like
/// `clients` (resized to it; on a distributed transport only the hosted clients' entries are used):
/// it belongs to the clients and is never handed to the transport. Clients that opted out are
/// never sampled and never asked for anything.
template <Model M, Transport<typename M::scalar_type> T, class Smp, class Alg, class Agg, class Opt>
FederationResult train_federated(M& global_model, const std::vector<Client<typename M::scalar_type>>& clients,
                                 T& transport, const FederationConfig& config, Strategy<Smp, Alg, Agg, Opt>& strategy,
                                 std::vector<typename Alg::State>& client_states,
                                 const FederationProgress& progress = {}) {
  detail::FederationRun<M, T, Smp, Alg, Agg, Opt> run(global_model, clients, transport, config, strategy,
                                                      client_states);
  return run.run(global_model, progress);
}

/// The same, for an algorithm whose client state the caller does not keep.
template <Model M, Transport<typename M::scalar_type> T, class Smp, class Alg, class Agg, class Opt>
FederationResult train_federated(M& global_model, const std::vector<Client<typename M::scalar_type>>& clients,
                                 T& transport, const FederationConfig& config, Strategy<Smp, Alg, Agg, Opt> strategy,
                                 const FederationProgress& progress = {}) {
  std::vector<typename Alg::State> states;
  return train_federated(global_model, clients, transport, config, strategy, states, progress);
}

}  // namespace fedmoe
