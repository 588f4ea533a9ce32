#pragma once
/// @file server.hpp
/// @brief Server: owns the global parameters, an Aggregator and a server optimizer; knows clients
/// only by what arrives through a Transport.
///
/// A round's step (Reddi et al. 2021, "Adaptive federated optimization", Algorithm 2):
///
///     Delta = aggregator(deltas of the round)        (robust rules drop outliers, see aggregator.hpp)
///     g     = x - (x + Delta) = -Delta              (the pseudo-gradient)
///     x     = server_optimizer.step(x, g)            (FedAvg: SGD with lr 1, i.e. x + Delta)
///
/// Updates whose extra vectors do not match the client algorithm's (count, size, finiteness) are
/// rejected here, before the aggregator sees the deltas. When nothing can be aggregated the
/// global model and the optimizer state stay as they are.
#include <limits>
#include <optional>
#include <span>

#include "../optimizers/optimizer.hpp"
#include "../optimizers/sgd.hpp"
#include "aggregators/mean.hpp"
#include "transport.hpp"

namespace fedmoe {

template <class Scalar = float, class Agg = WeightedMean, Optimizer Opt = Sgd<Scalar>>
  requires AnyAggregation<Agg, Scalar> && std::same_as<typename Opt::scalar_type, Scalar>
class Server {
public:
  explicit Server(Vector<Scalar> initial, Agg aggregator = {}, Opt optimizer = Opt(1.0))
      : m_global(std::move(initial)), m_aggregator(std::move(aggregator)), m_optimizer(std::move(optimizer)) {}

  const Vector<Scalar>& global() const { return m_global; }
  /// Replaces the global parameters (e.g. a replica refreshed from a broadcast).
  void set_global(const Vector<Scalar>& params) {
    FEDMOE_CHECK(params.size() == m_global.size(), "Server::set_global: expected ", m_global.size(),
                 " parameters, got ", params.size());
    m_global = params;
  }
  const Opt& optimizer() const { return m_optimizer; }
  /// The server's state across rounds (io/archive.hpp): the global parameters, the optimizer's state and
  /// the aggregator's, if it keeps any (DpMean's adaptive clipping norm).
  template <class Ar>
  void serialize(Ar& ar) {
    ar.parameters("global", m_global);
    if constexpr (Ar::loading)
      FEDMOE_CHECK(m_global.size() == ar.parameter_count(), ar.who(), ": expected ", ar.parameter_count(),
                   " global parameters, got ", m_global.size());
    ar("optimizer", m_optimizer);
    if constexpr (requires { m_aggregator.serialize(ar); }) ar("aggregator", m_aggregator);
  }
  Agg& aggregator() { return m_aggregator; }
  const Agg& aggregator() const { return m_aggregator; }

  template <Transport<Scalar> T>
  void publish(T& transport, const std::vector<Vector<Scalar>>& extras = {}) const {
    transport.broadcast(m_global, extras);
  }

  /// One server step from the round's updates (sorted by client). Rejected updates (extras of
  /// the wrong count or size, or non-finite) are listed in the report; on return `updates` holds
  /// the accepted updates first, in their order, then the others: see `accepted()`. A randomised
  /// aggregator (RandomizedAggregator) draws from `rng`, the round's stream, which it then requires.
  AggregationReport step(std::vector<ClientUpdate<Scalar>>& updates, std::size_t extras, Rng* rng = nullptr) {
    AggregationReport extras_report;
    std::vector<ClientUpdate<Scalar>> valid;
    valid.reserve(updates.size());
    for (auto& u : updates) {
      std::optional<Rejection> why;
      if (u.extras.size() != extras) why = Rejection::wrong_extras;
      for (const auto& e : u.extras)
        if (!why && e.size() != m_global.size()) why = Rejection::wrong_size;
      for (const auto& e : u.extras)
        if (!why && !detail::all_finite(e)) why = Rejection::non_finite;
      if (why) extras_report.rejected.push_back({u.client, *why});
      else valid.push_back(std::move(u));
    }
    m_delta.setZero(m_global.size());
    AggregationReport report;
    if constexpr (RandomizedAggregator<Agg, Scalar>) {
      FEDMOE_CHECK(rng != nullptr, "Server::step: a randomised aggregator needs the round's random stream, got none");
      report = m_aggregator.aggregate(std::span<const ClientUpdate<Scalar>>(valid), m_delta, *rng);
    } else {
      report = m_aggregator.aggregate(std::span<const ClientUpdate<Scalar>>(valid), m_delta);
    }
    report.rejected.insert(report.rejected.end(), extras_report.rejected.begin(), extras_report.rejected.end());
    std::sort(report.rejected.begin(), report.rejected.end(),
              [](const auto& a, const auto& b) { return a.client < b.client; });
    // Accepted = valid and neither rejected nor discarded by the aggregator; they go first.
    auto left_out = [&](std::int64_t c) {
      for (const auto& r : report.rejected)
        if (r.client == c) return true;
      return std::find(report.discarded.begin(), report.discarded.end(), c) != report.discarded.end();
    };
    auto mid = std::stable_partition(valid.begin(), valid.end(), [&](const auto& u) { return !left_out(u.client); });
    m_accepted = report.ok ? std::size_t(mid - valid.begin()) : 0;
    updates = std::move(valid);
    if (!report.ok) return report;
    m_delta = -m_delta;  // the pseudo-gradient x - aggregate
    m_optimizer.step(m_global, m_delta);
    return report;
  }

  /// The updates of the last step() that entered the aggregate (a prefix of its `updates`).
  std::span<const ClientUpdate<Scalar>> accepted(const std::vector<ClientUpdate<Scalar>>& updates) const {
    return std::span<const ClientUpdate<Scalar>>(updates).first(std::min(m_accepted, updates.size()));
  }

  /// Sample-weighted mean of the validation losses reported since the last call: NaN if nobody
  /// reported, +inf if the reports are non-finite (a poisoned model is never an improvement).
  template <Transport<Scalar> T>
  double validation_loss(T& transport) {
    double sum = 0;
    Index n = 0;
    for (const auto& r : transport.collect_reports()) {
      sum += r.loss_sum;
      n += r.samples;
    }
    if (n <= 0) return std::numeric_limits<double>::quiet_NaN();
    const double loss = sum / double(n);
    return std::isfinite(loss) ? loss : std::numeric_limits<double>::infinity();
  }

private:
  Vector<Scalar> m_global, m_delta;
  Agg m_aggregator;
  Opt m_optimizer;
  std::size_t m_accepted = 0;
};

}  // namespace fedmoe
