#pragma once
/// @file aggregator.hpp
/// @brief ClientUpdate, the Aggregator concept, and FedAvg.
///
/// FedAvg (McMahan et al. 2017): w <- sum_k n_k w_k / sum_k n_k over the updates of the
/// round, in the order given (the server sorts by client id, so the floating-point sum
/// is the same whatever the thread count). An update with the wrong size or a non-finite
/// value is rejected with an error naming the client, before the global model is touched.
#include <concepts>
#include <cstdint>
#include <span>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace fedmoe {

/// What a participating client sends up after local training: nothing else crosses.
template <class Scalar>
struct ClientUpdate {
  std::int64_t client = -1;   ///< sender id
  Vector<Scalar> parameters;  ///< the locally trained copy of the GLOBAL model
  Index num_samples = 0;      ///< training samples behind the update (FedAvg weight)
};

template <class A, class Scalar = float>
concept Aggregator = requires(A agg, std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& global) {
  agg.aggregate(updates, global);
};

/// Sample-count-weighted federated averaging.
struct FedAvg {
  template <class Scalar>
  void aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& global) const {
    FEDMOE_CHECK(!updates.empty(), "FedAvg: expected at least one client update, got 0");
    double total = 0;
    for (const auto& u : updates) {
      FEDMOE_CHECK(u.parameters.size() == global.size(), "FedAvg: update from client ", u.client, " has ",
                   u.parameters.size(), " parameters, expected ", global.size());
      FEDMOE_CHECK(u.num_samples > 0, "FedAvg: update from client ", u.client, " claims ", u.num_samples,
                   " samples, expected > 0");
      FEDMOE_CHECK(u.parameters.allFinite(), "FedAvg: update from client ", u.client,
                   " contains non-finite values (NaN or inf); expected finite parameters. Update rejected.");
      total += double(u.num_samples);
    }
    // Accumulate in the update order; the weights are exact ratios in double.
    global.setZero();
    for (const auto& u : updates) global.noalias() += Scalar(double(u.num_samples) / total) * u.parameters;
  }
};

}  // namespace fedmoe
