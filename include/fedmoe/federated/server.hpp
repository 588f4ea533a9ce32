#pragma once
/// @file server.hpp
/// @brief Server: owns the global parameters and an Aggregator; knows clients only by
/// what arrives through a Transport.
#include <span>

#include "aggregator.hpp"
#include "transport.hpp"

namespace fedmoe {

template <class Scalar = float, class Agg = FedAvg>
  requires Aggregator<Agg, Scalar>
class Server {
public:
  explicit Server(Vector<Scalar> initial, Agg aggregator = {})
      : m_global(std::move(initial)), m_aggregator(std::move(aggregator)) {}

  const Vector<Scalar>& global() const { return m_global; }
  /// Replaces the global parameters (e.g. to restore the best early-stopping snapshot).
  void set_global(const Vector<Scalar>& params) {
    FEDMOE_CHECK(params.size() == m_global.size(), "Server::set_global: expected ", m_global.size(),
                 " parameters, got ", params.size());
    m_global = params;
  }

  template <Transport<Scalar> T>
  void publish(T& transport) const {
    transport.broadcast(m_global);
  }

  /// Aggregates everything uploaded since the last call; returns how many updates were used.
  template <Transport<Scalar> T>
  std::size_t aggregate(T& transport) {
    const auto updates = transport.collect();
    if (updates.empty()) return 0;
    m_aggregator.aggregate(std::span<const ClientUpdate<Scalar>>(updates), m_global);
    return updates.size();
  }

  /// Sample-weighted mean of the validation losses reported since the last call (NaN if none).
  template <Transport<Scalar> T>
  double validation_loss(T& transport) {
    double sum = 0;
    Index n = 0;
    for (const auto& r : transport.collect_reports()) {
      sum += r.loss_sum;
      n += r.samples;
    }
    return n > 0 ? sum / double(n) : std::numeric_limits<double>::quiet_NaN();
  }

private:
  Vector<Scalar> m_global;
  Agg m_aggregator;
};

}  // namespace fedmoe
