#pragma once
/// @file bulyan.hpp
/// @brief Bulyan(f) (El Mhamdi, Guerraoui and Rouault 2018, "The hidden vulnerability of distributed
/// learning in Byzantium", ICML).
///
/// With n >= 4f + 3 valid updates:
/// 1. selection: theta = n - 2f updates by repeated Krum: Krum (with the same f, over the n' updates not
///    yet selected, n' - f - 2 neighbours but at least 1) picks one, which is moved to the selection.
///    (The last picks see n' = 2f + 1 or 2f + 2 updates: with 0 neighbours every score would be 0 and the
///    pick would go by position, however far the update; one neighbour keeps isolated outliers out.)
/// 2. aggregation: per coordinate, the mean of the beta = theta - 2f selected values closest to the
///    coordinate median of the selection (median: 0.5 a + 0.5 b of the middle two for an even theta).
/// The beta closest values form a window of the sorted values; it is grown from the median outwards,
/// taking the closer of the two neighbours, the lower one on a tie (= the first beta by (|x - med|, x)),
/// and summed in ascending order. Updates not selected in step 1 are listed in report.discarded. Fewer
/// than 4f + 3 valid updates: report.ok = false, the note naming n and f.
///
/// Step 1 uses one Gram-matrix distance pass (pairwise_distances.hpp); step 2 the order-statistics
/// kernel with a full sort of the theta values per coordinate (order_statistics.hpp).
#include <algorithm>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "common.hpp"
#include "krum.hpp"
#include "order_statistics.hpp"

namespace fedmoe {

class Bulyan {
public:
  /// f: the number of Byzantine updates tolerated per round (f >= 0).
  explicit Bulyan(Index f = 0) : m_f(f) {
    FEDMOE_CHECK(f >= 0, "Bulyan: expected a Byzantine bound f >= 0, got f = ", f);
  }
  Index byzantine_bound() const { return m_f; }

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
    const Matrix<double> d = detail::screened_distances(use, out.size(), report);
    detail::sort_rejected(report);
    const Index n = Index(use.size());
    if (n == 0) {
      report.note = "no valid update to aggregate";
      return report;
    }
    if (n < 4 * m_f + 3) {
      report.note = detail::too_few("bulyan", m_f, ">= 4f + 3", 4 * m_f + 3, n);
      return report;
    }
    // 1. theta = n - 2f by repeated Krum.
    const Index theta = n - 2 * m_f, beta = theta - 2 * m_f;
    std::vector<Index> remaining(use.size());
    std::iota(remaining.begin(), remaining.end(), Index(0));
    std::vector<Index> chosen;
    while (Index(chosen.size()) < theta) {
      const std::vector<std::size_t> order = detail::krum_order(detail::krum_scores(d, remaining, m_f));
      chosen.push_back(remaining[order.front()]);
      remaining.erase(remaining.begin() + std::ptrdiff_t(order.front()));
    }
    std::sort(chosen.begin(), chosen.end());
    detail::UpdateList<Scalar> selection;
    for (Index k : chosen) selection.push_back(use[std::size_t(k)]);
    // 2. Per coordinate, the mean of the beta values closest to the median of the selection.
    Vector<Scalar>& next = detail::scratch<Bulyan, Scalar>();
    next.resize(out.size());
    const auto needs = [](Index count) { return std::vector<detail::Need>(std::size_t(count), detail::Need::exact); };
    std::vector<const Scalar*> s(static_cast<std::size_t>(theta));
    const auto reduce = [&](const detail::SortedBlock<Scalar>& b) {
      for (Index p = 0; p < theta; ++p) s[std::size_t(p)] = b.row(p);
      for (Index j = 0; j < b.len; ++j) {
        const auto at = [&](Index p) { return s[std::size_t(p)][j]; };
        const Scalar med = theta % 2 == 1 ? at(theta / 2) : Scalar(0.5) * at(theta / 2 - 1) + Scalar(0.5) * at(theta / 2);
        Index lo = (theta - 1) / 2, hi = lo + 1;  // candidates at(lo) <= med <= at(hi); the window is (lo, hi)
        for (Index t = 0; t < beta; ++t) {
          if (hi >= theta || (lo >= 0 && med - at(lo) <= at(hi) - med)) --lo;
          else ++hi;
        }
        Scalar sum = at(lo + 1);
        for (Index p = lo + 2; p < hi; ++p) sum += at(p);
        next[b.start + j] = sum / Scalar(beta);
      }
    };
    // The selection is finite (screened by the distance pass): the driver finds nothing to reject.
    if (!detail::coordinatewise(selection, out.size(), [](Index) { return std::string(); }, needs, reduce, report))
      return report;
    out.swap(next);
    std::vector<char> selected(use.size(), 0);
    for (Index k : chosen) selected[std::size_t(k)] = 1;
    for (std::size_t k = 0; k < use.size(); ++k)
      if (!selected[k]) report.discarded.push_back(use[k]->client);
    report.ok = true;
    report.used = theta;
    return report;
  }

private:
  Index m_f;
};

}  // namespace fedmoe
