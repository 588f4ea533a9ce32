#pragma once
/// @file trimmed_mean.hpp
/// @brief TrimmedMean(beta): the coordinate-wise beta-trimmed mean (Yin et al. 2018, "Byzantine-robust
/// distributed learning: towards optimal statistical rates", ICML):
///
///     k = floor(beta n);   out[j] = (1 / (n - 2k)) sum of the values of coordinate j ranked k .. n-k-1
///
/// i.e. per coordinate the k largest and k smallest values are dropped and the rest averaged
/// (unweighted). beta in [0, 0.5). With 2k >= n nothing would remain: report.ok = false. Uses a part of
/// every update: report.discarded stays empty.
///
/// Summation order: the kept values are summed in the order of the network's output rows for ranks
/// k .. n-k-1 (the network is pruned to deliver the kept SET, not its order: a comparator between two
/// kept ranks cannot change the sum and is dropped). The order is a fixed function of n and beta, so
/// the result is deterministic; it equals the sorted-order sum to within (n - 2k) rounding errors.
#include <cmath>
#include <span>
#include <string>

#include "../../core/error.hpp"
#include "common.hpp"
#include "order_statistics.hpp"

namespace fedmoe {

class TrimmedMean {
public:
  /// beta: the fraction trimmed at EACH end, in [0, 0.5).
  explicit TrimmedMean(double beta = 0.1) : m_beta(beta) {
    FEDMOE_CHECK(beta >= 0 && beta < 0.5, "TrimmedMean: expected a trim fraction beta in [0, 0.5), got beta = ", beta);
  }
  double beta() const { return m_beta; }
  /// Values trimmed at each end of a coordinate for n updates: floor(beta n).
  Index trimmed(Index n) const { return Index(std::floor(m_beta * double(n))); }

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    const auto refs = detail::refs_of(updates);
    return aggregate(detail::UpdateRefs<Scalar>(refs), out);
  }

  /// The same over updates by reference (see common.hpp).
  template <class Scalar>
  AggregationReport aggregate(detail::UpdateRefs<Scalar> updates, Vector<Scalar>& out) const {
    AggregationReport report;
    auto use = detail::screen_shapes(updates, out.size(), report);
    Vector<Scalar>& next = detail::scratch<TrimmedMean, Scalar>();
    next.resize(out.size());
    Index n = 0, k = 0;
    const auto infeasible = [this](Index count) {
      const Index t = trimmed(count);
      if (2 * t < count) return std::string();
      return detail::concat("trimmed mean with beta = ", m_beta, " trims 2 floor(beta n) = ", 2 * t,
                            " of n = ", count, " values per coordinate: nothing remains");
    };
    const auto needs = [&](Index count) {
      n = count;
      k = trimmed(count);
      std::vector<detail::Need> need(std::size_t(count), detail::Need::none);
      for (Index p = k; p < n - k; ++p) need[std::size_t(p)] = detail::Need::sum;
      return need;
    };
    const auto reduce = [&](const detail::SortedBlock<Scalar>& b) {
      auto dst = next.segment(b.start, b.len).array();
      dst = b.position(k);
      for (Index p = k + 1; p < n - k; ++p) dst += b.position(p);
      // A plain loop, not Eigen's packet division: on ARMv7 NEON that is a reciprocal estimate (~16 correct
      // bits, 27.9999 for 28); compilers vectorise this loop only with an IEEE division (x86, aarch64).
      const Scalar count = Scalar(n - 2 * k);
      for (Index j = 0; j < b.len; ++j) dst[j] /= count;
    };
    if (detail::coordinatewise(use, out.size(), infeasible, needs, reduce, report)) {
      out.swap(next);
      report.ok = true;
      report.used = Index(use.size());
    }
    detail::sort_rejected(report);
    return report;
  }

private:
  double m_beta;
};

}  // namespace fedmoe
