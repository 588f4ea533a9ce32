#pragma once
/// @file mean.hpp
/// @brief WeightedMean: the sample-count-weighted mean of the round's deltas (FedAvg's reduction,
/// McMahan et al. 2017): out = sum_k n_k d_k / sum_k n_k over the valid updates, in the order given.
///
/// One fused pass: for each block of the vector, acc = sum_k w_k d_k[block] in update order,
/// four updates per sweep of the block, written to a scratch vector that is swapped with `out` at
/// the end. Updates are read once and `out` written once. Well-formedness of sizes and weights is
/// checked up front (cheap); finiteness is checked on the block sums only (a non-finite value in
/// any update makes its block's sum non-finite, the weights being positive). A non-finite block is
/// rescanned to find the bad updates, which are rejected, and the mean is recomputed without them:
/// the hostile case costs a second pass, the normal case none.
#include "../aggregator.hpp"

namespace fedmoe {

struct WeightedMean {
  // 64 KiB of floats: the block's sum stays in L2 while each update is read as one long stream per block
  // (short 8 KiB streams, switching between 100 updates, left the hardware prefetchers idle).
  static constexpr Index block = 16384;

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    AggregationReport report;
    std::vector<const ClientUpdate<Scalar>*> use;
    for (const auto& u : updates) {  // sizes and weights: no pass over the data
      if (u.delta.size() != out.size()) report.rejected.push_back({u.client, Rejection::wrong_size});
      else if (u.num_samples <= 0) report.rejected.push_back({u.client, Rejection::bad_weight});
      else use.push_back(&u);
    }
    while (true) {
      if (use.empty()) {
        report.note = "no valid update to average";
        return report;
      }
      const std::int64_t bad_block = sum(use, out.size());
      if (bad_block < 0) break;
      // Rescan the block that went non-finite; reject every update with a non-finite value there.
      const Index start = Index(bad_block), len = std::min(block, out.size() - start);
      std::vector<const ClientUpdate<Scalar>*> keep;
      for (const auto* u : use) {
        if (detail::all_finite(u->delta.segment(start, len))) keep.push_back(u);
        else report.rejected.push_back({u->client, Rejection::non_finite});
      }
      if (keep.size() == use.size()) {  // every update finite there: the weighted sum itself overflowed
        report.note = "the weighted sum overflowed to a non-finite value";
        return report;
      }
      use.swap(keep);
    }
    out.swap(scratch<Scalar>());
    report.ok = true;
    report.used = Index(use.size());
    std::sort(report.rejected.begin(), report.rejected.end(),
              [](const auto& a, const auto& b) { return a.client < b.client; });
    return report;
  }

private:
  template <class Scalar>
  static Vector<Scalar>& scratch() {
    thread_local Vector<Scalar> next;  // reused: sized once per model size
    return next;
  }

  /// Writes the weighted sum into scratch(); returns -1, or the start of the first non-finite block.
  template <class Scalar>
  static std::int64_t sum(const std::vector<const ClientUpdate<Scalar>*>& use, Index n) {
    double total = 0;
    for (const auto* u : use) total += double(u->num_samples);
    Vector<Scalar>& next = scratch<Scalar>();
    next.resize(n);
    for (Index start = 0; start < n; start += block) {
      const Index len = std::min(block, n - start);
      auto acc = next.segment(start, len);
      acc.setZero();
      // Four updates per sweep of the block: acc = (((acc + w0 u0) + w1 u1) + w2 u2) + w3 u3 rounds after
      // every product and every sum exactly as four separate `acc += w u` sweeps (same operations, same
      // order: bitwise the same), but reads and writes acc once instead of four times and keeps four
      // memory streams in flight, which is what a single core needs to approach the copy bandwidth.
      const auto weight = [&](std::size_t k) { return Scalar(double(use[k]->num_samples) / total); };
      const auto part = [&](std::size_t k) { return use[k]->delta.segment(start, len); };
      std::size_t k = 0;
      for (; k + 4 <= use.size(); k += 4)
        acc = (((acc + weight(k) * part(k)) + weight(k + 1) * part(k + 1)) + weight(k + 2) * part(k + 2)) +
              weight(k + 3) * part(k + 3);
      for (; k < use.size(); ++k) acc.noalias() += weight(k) * part(k);
      if (!detail::all_finite(acc)) [[unlikely]] return std::int64_t(start);
    }
    return -1;
  }
};

}  // namespace fedmoe
