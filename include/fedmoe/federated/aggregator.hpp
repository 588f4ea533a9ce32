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
#include <algorithm>
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
///
/// One fused pass: for each block of the vector, acc = sum_k w_k u_k[block] in update order
/// (the same per-element order as N separate passes, so bitwise the same result), four updates
/// per sweep of the block, written to a scratch vector that is swapped with `global` at the end.
/// Updates are read once and the global vector written once. A non-finite value in any update
/// makes its block's sum non-finite (the weights are positive), so only the sums are checked; a
/// bad block is then rescanned to name the client. On error `global` is untouched.
struct FedAvg {
  // 64 KiB of floats: the block's sum stays in L2 while each update is read as one long stream per block
  // (short 8 KiB streams, switching between 100 updates, left the hardware prefetchers idle).
  static constexpr Index block = 16384;

  template <class Scalar>
  void aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& global) const {
    FEDMOE_CHECK(!updates.empty(), "FedAvg: expected at least one client update, got 0");
    double total = 0;
    for (const auto& u : updates) {
      FEDMOE_CHECK(u.parameters.size() == global.size(), "FedAvg: update from client ", u.client, " has ",
                   u.parameters.size(), " parameters, expected ", global.size());
      FEDMOE_CHECK(u.num_samples > 0, "FedAvg: update from client ", u.client, " claims ", u.num_samples,
                   " samples, expected > 0");
      total += double(u.num_samples);
    }
    thread_local Vector<Scalar> next;  // reused: sized once per model size
    next.resize(global.size());
    const Index n = global.size();
    for (Index start = 0; start < n; start += block) {
      const Index len = std::min(block, n - start);
      auto acc = next.segment(start, len);
      acc.setZero();
      // Four updates per sweep of the block: acc = (((acc + w0 u0) + w1 u1) + w2 u2) + w3 u3 rounds after
      // every product and every sum exactly as four separate `acc += w u` sweeps (same operations, same
      // order: bitwise the same), but reads and writes acc once instead of four times and keeps four
      // memory streams in flight, which is what a single core needs to approach the copy bandwidth.
      const auto weight = [&](std::size_t k) { return Scalar(double(updates[k].num_samples) / total); };
      const auto part = [&](std::size_t k) { return updates[k].parameters.segment(start, len); };
      std::size_t k = 0;
      for (; k + 4 <= updates.size(); k += 4)
        acc = (((acc + weight(k) * part(k)) + weight(k + 1) * part(k + 1)) + weight(k + 2) * part(k + 2)) +
              weight(k + 3) * part(k + 3);
      for (; k < updates.size(); ++k) acc.noalias() += weight(k) * part(k);
      // Finite check as one vectorized reduction: x - x is +0 exactly for a finite x and NaN otherwise, so
      // the sum is 0 iff every element is finite (Eigen's allFinite() is an element-by-element early-exit loop,
      // which cost as much as the averaging itself on cache-resident vectors).
      if (!((acc - acc).sum() == Scalar(0))) [[unlikely]] {
        for (const auto& u : updates)
          FEDMOE_CHECK(u.parameters.segment(start, len).allFinite(), "FedAvg: update from client ", u.client,
                       " contains non-finite values (NaN or inf); expected finite parameters. Update rejected.");
        FEDMOE_FAIL("FedAvg: the weighted sum overflowed to a non-finite value in parameters [", start, ", ",
                    start + len, "); expected finite parameters. Round rejected.");
      }
    }
    global.swap(next);
  }
};

}  // namespace fedmoe
