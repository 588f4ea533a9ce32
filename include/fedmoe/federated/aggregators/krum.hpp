#pragma once
/// @file krum.hpp
/// @brief Krum(f) and MultiKrum(f, m) (Blanchard et al. 2017, "Machine learning with adversaries:
/// Byzantine tolerant gradient descent", NeurIPS).
///
/// With n valid updates of which at most f are Byzantine, each update's score is the sum of its
/// squared distances to its n - f - 2 closest other updates:
///
///     score_i = sum_{j in N_i} |d_i - d_j|^2,   N_i = the n - f - 2 updates closest to d_i
///
/// Krum returns the update with the lowest score (ties: the earlier update). Multi-Krum returns the
/// UNWEIGHTED mean of the m lowest-scoring updates (ties: earlier first), as in the paper (sample counts
/// are not used: a Byzantine client could claim any count). m = 0 means m = n - f. Both need
/// n > 2f + 2 valid updates (else report.ok = false, note naming n and f); Multi-Krum also m <= n - f.
/// Every valid update not selected is listed in report.discarded.
///
/// Distances come from one Gram-matrix product (pairwise_distances.hpp: clamped at 0, overflow = +inf).
/// Scores sum the sorted distances in ascending order in double; the mean sums the selected updates in
/// their input order (WeightedMean's blocked arithmetic with weight 1/m). Deterministic.
#include <algorithm>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "common.hpp"
#include "pairwise_distances.hpp"

namespace fedmoe {

namespace detail {
struct MultiKrumTag {};

/// Krum scores of the `active` updates (indices into d) with q = n - f - 2 neighbours (n = |active|), but at
/// least one (while another update exists). Krum itself always has q >= 1 (n > 2f + 2); Bulyan's last
/// selections run on 2f + 1 .. 2f + 2 remaining updates, where q = 0 would make every score 0 and pick by
/// position, a far outlier included.
inline std::vector<double> krum_scores(const Matrix<double>& d, const std::vector<Index>& active, Index f) {
  const Index n = Index(active.size());
  const Index q = std::min<Index>(n - 1, std::max<Index>(1, n - f - 2));
  std::vector<double> scores(active.size(), 0.0), others;
  others.reserve(active.size());
  for (std::size_t a = 0; a < active.size(); ++a) {
    others.clear();
    for (std::size_t b = 0; b < active.size(); ++b)
      if (b != a) others.push_back(d(active[a], active[b]));
    std::sort(others.begin(), others.end());
    double s = 0;
    for (Index t = 0; t < q; ++t) s += others[std::size_t(t)];
    scores[a] = s;
  }
  return scores;
}

/// Positions (into the scores) ordered by (score, position): the Krum preference order.
inline std::vector<std::size_t> krum_order(const std::vector<double>& scores) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  return order;
}

/// The note for too few updates: "<rule> with f = F needs n <relation> valid updates, got n = N".
inline std::string too_few(const char* rule, Index f, const char* need, Index bound, Index n) {
  return concat(rule, " with f = ", f, " needs n ", need, " = ", bound, " valid updates, got n = ", n);
}

/// Screens `use` for non-finite updates through the distance pass; returns D over the survivors.
template <class Scalar>
Matrix<double> screened_distances(UpdateList<Scalar>& use, Index size, AggregationReport& report) {
  PairwiseDistances pd = pairwise_squared_distances<Scalar>(data_of(use), size);
  if (pd.non_finite.empty()) return std::move(pd.squared);
  std::vector<Index> keep_index;
  UpdateList<Scalar> keep;
  std::size_t next_bad = 0;
  for (std::size_t k = 0; k < use.size(); ++k) {
    if (next_bad < pd.non_finite.size() && pd.non_finite[next_bad] == k) {
      report.rejected.push_back({use[k]->client, Rejection::non_finite});
      ++next_bad;
    } else {
      keep.push_back(use[k]);
      keep_index.push_back(Index(k));
    }
  }
  use.swap(keep);
  return pd.squared(keep_index, keep_index);
}

template <class Scalar>
AggregationReport krum_select(Index f, Index m, bool multi, UpdateRefs<Scalar> updates, Vector<Scalar>& out) {
  AggregationReport report;
  auto use = screen_shapes(updates, out.size(), report);
  const Matrix<double> d = screened_distances(use, out.size(), report);
  sort_rejected(report);
  const Index n = Index(use.size());
  const char* name = multi ? "multi-krum" : "krum";
  if (n == 0) {
    report.note = "no valid update to aggregate";
    return report;
  }
  if (n <= 2 * f + 2) {
    report.note = too_few(name, f, "> 2f + 2", 2 * f + 2, n);
    return report;
  }
  const Index count = multi ? (m == 0 ? n - f : m) : 1;
  if (count > n - f) {
    report.note = concat("multi-krum with f = ", f, " averages m <= n - f = ", n - f, " of n = ", n,
                         " valid updates, got m = ", count);
    return report;
  }
  std::vector<Index> all(use.size());
  std::iota(all.begin(), all.end(), Index(0));
  const std::vector<std::size_t> order = krum_order(krum_scores(d, all, f));
  std::vector<std::size_t> chosen(order.begin(), order.begin() + count);
  std::sort(chosen.begin(), chosen.end());  // the mean sums in input order
  std::vector<char> selected(use.size(), 0);
  for (std::size_t k : chosen) selected[k] = 1;
  if (count == 1) {
    out = use[chosen.front()]->delta;
  } else {
    std::vector<const Scalar*> rows;
    for (std::size_t k : chosen) rows.push_back(use[k]->delta.data());
    const std::vector<Scalar> w(chosen.size(), Scalar(1.0 / double(count)));
    Vector<Scalar>& next = scratch<MultiKrumTag, Scalar>();
    if (weighted_sum<Scalar>(rows, w, out.size(), next) >= 0) {
      report.note = "the mean of the selected updates overflowed to a non-finite value";
      return report;
    }
    out.swap(next);
  }
  for (std::size_t k = 0; k < use.size(); ++k)
    if (!selected[k]) report.discarded.push_back(use[k]->client);
  report.ok = true;
  report.used = count;
  return report;
}
}  // namespace detail

/// Krum: the single update closest to its n - f - 2 nearest neighbours.
class Krum {
public:
  /// f: the number of Byzantine updates tolerated per round (f >= 0).
  explicit Krum(Index f = 0) : m_f(f) {
    FEDMOE_CHECK(f >= 0, "Krum: expected a Byzantine bound f >= 0, got f = ", f);
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
    return detail::krum_select(m_f, 1, false, updates, out);
  }

private:
  Index m_f;
};

/// Multi-Krum: the unweighted mean of the m best-scored updates (m = 0: n - f).
class MultiKrum {
public:
  explicit MultiKrum(Index f = 0, Index m = 0) : m_f(f), m_m(m) {
    FEDMOE_CHECK(f >= 0, "MultiKrum: expected a Byzantine bound f >= 0, got f = ", f);
    FEDMOE_CHECK(m >= 0, "MultiKrum: expected m >= 0 updates to average (0: n - f), got m = ", m);
  }
  Index byzantine_bound() const { return m_f; }
  Index selected() const { return m_m; }

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    const auto refs = detail::refs_of(updates);
    return aggregate(detail::UpdateRefs<Scalar>(refs), out);
  }
  template <class Scalar>
  AggregationReport aggregate(detail::UpdateRefs<Scalar> updates, Vector<Scalar>& out) const {
    return detail::krum_select(m_f, m_m, true, updates, out);
  }

private:
  Index m_f;
  Index m_m;
};

}  // namespace fedmoe
