#pragma once
/// @file median.hpp
/// @brief CoordinateMedian: the coordinate-wise median of the round's deltas (Yin et al. 2018,
/// "Byzantine-robust distributed learning: towards optimal statistical rates", ICML).
///
///     out[j] = median_k d_k[j]   (unweighted; an even count takes 0.5 a + 0.5 b of the two middle values)
///
/// Robust to fewer than half arbitrary updates per coordinate: the result stays within the range of
/// the honest values. Sample counts are not used (an update with num_samples <= 0 is still rejected,
/// as everywhere). Uses a part of every update, so report.discarded stays empty. The order-statistics
/// kernel (order_statistics.hpp) sorts all coordinates of a block together in SIMD lanes; the median
/// network reads the one or two middle positions only. 0.5 a + 0.5 b (not (a + b) / 2) never overflows.
#include <span>
#include <string>

#include "common.hpp"
#include "order_statistics.hpp"

namespace fedmoe {

struct CoordinateMedian {
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
    Vector<Scalar>& next = detail::scratch<CoordinateMedian, Scalar>();
    next.resize(out.size());
    Index n = 0;
    const auto needs = [&n](Index count) {
      n = count;
      std::vector<detail::Need> need(std::size_t(count), detail::Need::none);
      need[std::size_t((count - 1) / 2)] = need[std::size_t(count / 2)] = detail::Need::exact;
      return need;
    };
    const auto reduce = [&](const detail::SortedBlock<Scalar>& b) {
      auto dst = next.segment(b.start, b.len).array();
      if (n % 2 == 1) dst = b.position(n / 2);
      else dst = Scalar(0.5) * b.position(n / 2 - 1) + Scalar(0.5) * b.position(n / 2);
    };
    if (detail::coordinatewise(use, out.size(), [](Index) { return std::string(); }, needs, reduce, report)) {
      out.swap(next);
      report.ok = true;
      report.used = Index(use.size());
    }
    detail::sort_rejected(report);
    return report;
  }
};

}  // namespace fedmoe
