#pragma once
/// @file mean.hpp
/// @brief WeightedMean: the sample-count-weighted mean of the round's deltas (FedAvg's reduction,
/// McMahan et al. 2017): out = sum_k n_k d_k / sum_k n_k over the valid updates, in the order given.
///
/// One fused pass (detail::weighted_sum in common.hpp): for each block of the vector,
/// acc = sum_k w_k d_k[block] in update order, four updates per sweep of the block,
/// acc = (((acc + w0 d0) + w1 d1) + w2 d2) + w3 d3, which rounds exactly as four `acc += w d` sweeps
/// (bitwise the plain loop's result) but keeps four memory streams in flight; written to a scratch
/// vector swapped with `out` at the end. Sizes and weights are checked up front (cheap); finiteness
/// on the block sums only (a non-finite value in any update makes its block's sum non-finite, the
/// weights being positive). A non-finite block is rescanned to find the bad updates, which are
/// rejected, and the mean is recomputed without them: the hostile case costs a second pass, the
/// normal case none.
#include "common.hpp"

namespace fedmoe {

struct WeightedMean {
  static constexpr Index block = detail::mean_block;

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    const auto refs = detail::refs_of(updates);
    return detail::weighted_mean_refs(detail::UpdateRefs<Scalar>(refs), out);
  }
  /// The same over updates by reference (see common.hpp).
  template <class Scalar>
  AggregationReport aggregate(detail::UpdateRefs<Scalar> updates, Vector<Scalar>& out) const {
    return detail::weighted_mean_refs(updates, out);
  }
};

}  // namespace fedmoe
