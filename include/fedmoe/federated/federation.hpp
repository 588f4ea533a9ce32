#pragma once
/// @file federation.hpp
/// @brief train_federated: FedAvg rounds with client sampling, opt-out, parallel clients,
/// and early stopping that restores the best **global** model.
///
/// Each round: the server publishes the global parameters; `clients_per_round` of the
/// opted-in clients are sampled without replacement; each trains a copy locally and
/// uploads it; the server averages the uploads weighted by sample count (in client-id
/// order). Every `check_every` rounds the opted-in clients report the global model's
/// validation loss; the averaged global parameters with the lowest loss are kept (a copy)
/// and restored at the end; training stops after `patience` checks without improvement
/// or at `max_rounds`.
///
/// Without validation data on any opted-in client, all max_rounds run and the last model is kept.
///
/// Reproducibility: client sampling draws from Rng::stream(seed, 0); client k in round r
/// from Rng::stream(seed, 1 + r * 2^20 + k). Results are bitwise identical for any thread count.
///
/// Distributed transports (see transport.hpp, "Roles"): every process runs this same loop with
/// the same sampler stream, so all agree on the sampled clients without communication; each
/// trains and reports only the clients it owns; the server process aggregates (in client-id
/// order, as in process) and computes the validation loss, which `transport_share` hands to
/// every process so that all take the same early-stopping decisions. The non-server processes
/// keep a replica of the global parameters, refreshed from each broadcast; every loop exit is a
/// checkpoint whose broadcast carries the final averaged model, so `global_model` receives the
/// same parameters on every process. Results are bitwise those of the in-process run.
#include <functional>
#include <vector>

#include "../core/parallel.hpp"
#include "client.hpp"
#include "server.hpp"

namespace fedmoe {

struct FederationConfig {
  Index clients_per_round = 5;  ///< a COUNT of opted-in clients per round (see clients_for_fraction)
  LocalUpdateConfig local{};
  int max_rounds = 1000;
  int check_every = 40;  ///< paper: validation checked every 40 rounds
  int patience = 5;      ///< paper: patience 5 checks
  std::size_t threads = 1;
  std::uint64_t seed = 1;
};

/// The count of clients for a fraction in (0, 1] of `available` clients (at least 1).
inline Index clients_for_fraction(double fraction, Index available) {
  FEDMOE_CHECK(fraction > 0 && fraction <= 1, "clients_for_fraction: expected a fraction in (0, 1], got ", fraction);
  return std::max<Index>(1, Index(std::llround(fraction * double(available))));
}

struct FederationResult {
  int rounds = 0;             ///< rounds run
  int best_round = 0;         ///< round whose global model was restored (0: the initial model)
  double best_val_loss = 0;   ///< its validation loss
  std::vector<std::pair<int, double>> val_history;  ///< (round, validation loss) at each check
};

/// Progress callback after each round: (round, max_rounds, latest validation loss).
using FederationProgress = std::function<void(int, int, double)>;

namespace detail {
inline std::uint64_t client_stream_id(std::uint64_t round, std::uint64_t client) {
  return 1 + (round << 20) + client;
}
}  // namespace detail

/// Trains `global_model` (its parameters are the initial global model and receive the best one).
/// `clients` opted out are never sampled and never asked for anything.
template <Model M, Transport<typename M::scalar_type> T, class Agg = FedAvg>
FederationResult train_federated(M& global_model, const std::vector<Client<typename M::scalar_type>>& clients,
                                 T& transport, const FederationConfig& config, FederationProgress progress = {},
                                 Agg aggregator = {}) {
  using S = typename M::scalar_type;
  std::vector<std::size_t> opted_in;
  for (std::size_t i = 0; i < clients.size(); ++i)
    if (!clients[i].opted_out()) opted_in.push_back(i);
  FEDMOE_CHECK(!opted_in.empty(), "train_federated: expected at least one client that did not opt out, got 0 of ",
               clients.size());
  FEDMOE_CHECK(config.clients_per_round > 0 && config.clients_per_round <= Index(opted_in.size()),
               "train_federated: expected clients_per_round in [1, ", opted_in.size(),
               "] (the opted-in clients), got ", config.clients_per_round);
  for (const auto& c : clients)
    FEDMOE_CHECK(c.id() >= 0 && c.id() < (std::int64_t(1) << 20), "train_federated: expected client ids in [0, 2^20) ",
                 "(they select random streams), got ", c.id());
  FEDMOE_CHECK(config.max_rounds >= 0 && config.check_every > 0, "train_federated: expected max_rounds >= 0 and ",
               "check_every > 0, got ", config.max_rounds, " and ", config.check_every);

  Server<S, Agg> server(global_model.parameters(), std::move(aggregator));
  std::vector<M> workspaces(std::max<std::size_t>(1, config.threads), global_model);
  Rng sampler = Rng::stream(config.seed, 0);
  EarlyStopping<S> stop(config.patience);
  FederationResult result;

  const bool is_server = transport_is_server(transport);
  auto owned = [&](const std::vector<std::size_t>& ids) {  // the clients this process hosts
    std::vector<std::size_t> mine;
    for (std::size_t i : ids)
      if (transport_owns(transport, clients[i].id())) mine.push_back(i);
    return mine;
  };
  auto publish = [&] {
    server.publish(transport);
    if (!is_server) server.set_global(transport.global());  // replica of the server's model
  };
  const std::vector<std::size_t> reporters = owned(opted_in);

  auto check = [&](int round) {
    publish();
    parallel_for(reporters.size(), workspaces.size(), [&](std::size_t i, std::size_t w) {
      clients[reporters[i]].report_validation(transport, workspaces[w]);
    });
    const double loss = transport_share(transport, server.validation_loss(transport));
    result.val_history.emplace_back(round, loss);
    if (std::isnan(loss)) return false;  // no opted-in client has validation data: no early stopping
    const int before = stop.best_check();
    const bool done = stop.observe(loss, {std::cref(server.global())});  // a copy of the AVERAGED model
    if (stop.best_check() != before) {
      result.best_round = round;
      result.best_val_loss = loss;
    }
    return done;
  };

  check(0);
  std::vector<std::size_t> pool = opted_in;
  for (int round = 1; round <= config.max_rounds; ++round) {
    // Sample m distinct opted-in clients (partial Fisher-Yates), then run them in id order.
    for (Index i = 0; i < config.clients_per_round; ++i) {
      const auto j = std::size_t(i) + std::size_t(sampler.uniform_int(pool.size() - std::size_t(i)));
      std::swap(pool[std::size_t(i)], pool[j]);
    }
    std::vector<std::size_t> chosen(pool.begin(), pool.begin() + config.clients_per_round);
    std::sort(chosen.begin(), chosen.end());
    chosen = owned(chosen);
    publish();
    parallel_for(chosen.size(), workspaces.size(), [&](std::size_t i, std::size_t w) {
      const auto& client = clients[chosen[i]];
      Rng rng = Rng::stream(config.seed, detail::client_stream_id(std::uint64_t(round), std::uint64_t(client.id())));
      client.participate(transport, workspaces[w], config.local, rng);
    });
    server.aggregate(transport);
    result.rounds = round;
    const bool checkpoint = round % config.check_every == 0 || round == config.max_rounds;
    const bool done = checkpoint && check(round);
    if (progress) progress(round, config.max_rounds, result.val_history.back().second);
    if (done) break;
  }
  if (stop.has_best()) global_model.parameters() = stop.best();
  else global_model.parameters() = server.global();
  return result;
}

}  // namespace fedmoe
