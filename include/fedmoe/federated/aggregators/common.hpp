#pragma once
/// @file common.hpp
/// @brief What the robust aggregators share (fedmoe::detail): updates by reference, the screening of
/// sizes and weights without a pass over the data, the rejection of non-finite updates found by a
/// kernel, a blocked weighted sum, and the dispatch of a rule over updates by reference.
///
/// Every aggregator in aggregators/ has two forms of aggregate():
///
///     aggregate(std::span<const ClientUpdate<Scalar>> updates, out)         // the Aggregator concept
///     aggregate(std::span<const ClientUpdate<Scalar>* const> updates, out)  // the same, by reference
///
/// The second lets a decorator (NormBounded) hand a rule a mix of the caller's updates and the few it
/// had to modify, without copying the others. detail::aggregate_refs(rule, refs, out) calls it, or for
/// an Aggregator without that form copies the updates as a last resort.
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "../aggregator.hpp"

namespace fedmoe::detail {

/// The weighted sum's block: 64 KiB of floats, so a block's sum stays in L2 while each update is read
/// as one long stream per block (short 8 KiB streams, switching between 100 updates, left the hardware
/// prefetchers idle).
inline constexpr Index mean_block = 16384;

template <class Scalar>
using UpdateRefs = std::span<const ClientUpdate<Scalar>* const>;
template <class Scalar>
using UpdateList = std::vector<const ClientUpdate<Scalar>*>;

template <class Scalar>
UpdateList<Scalar> refs_of(std::span<const ClientUpdate<Scalar>> updates) {
  UpdateList<Scalar> refs;
  refs.reserve(updates.size());
  for (const auto& u : updates) refs.push_back(&u);
  return refs;
}

/// The updates of the right size and a positive sample count, in order; the others rejected into
/// `report`. No pass over the data: finiteness is checked by the rule's own kernel.
template <class Scalar>
UpdateList<Scalar> screen_shapes(UpdateRefs<Scalar> updates, Index size, AggregationReport& report) {
  UpdateList<Scalar> use;
  use.reserve(updates.size());
  for (const auto* u : updates) {
    if (u->delta.size() != size) report.rejected.push_back({u->client, Rejection::wrong_size});
    else if (u->num_samples <= 0) report.rejected.push_back({u->client, Rejection::bad_weight});
    else use.push_back(u);
  }
  return use;
}

/// Rejects (non_finite) the members of `use` with a non-finite value in coordinates [start, start + len).
/// Returns whether any was.
template <class Scalar>
bool reject_non_finite(UpdateList<Scalar>& use, Index start, Index len, AggregationReport& report) {
  UpdateList<Scalar> keep;
  keep.reserve(use.size());
  for (const auto* u : use) {
    if (all_finite(u->delta.segment(start, len))) keep.push_back(u);
    else report.rejected.push_back({u->client, Rejection::non_finite});
  }
  const bool any = keep.size() != use.size();
  use.swap(keep);
  return any;
}

/// Rejects every member of `use` with a non-finite value anywhere (one pass each; for rules whose
/// kernel cannot check on the way).
template <class Scalar>
void reject_all_non_finite(UpdateList<Scalar>& use, AggregationReport& report) {
  if (!use.empty()) reject_non_finite(use, 0, use.front()->delta.size(), report);
}

/// Sorted by client id, as WeightedMean reports them.
inline void sort_rejected(AggregationReport& report) {
  std::sort(report.rejected.begin(), report.rejected.end(),
            [](const auto& a, const auto& b) { return a.client < b.client; });
}

template <class Scalar>
std::vector<const Scalar*> data_of(const UpdateList<Scalar>& use) {
  std::vector<const Scalar*> rows;
  rows.reserve(use.size());
  for (const auto* u : use) rows.push_back(u->delta.data());
  return rows;
}

/// A per-thread vector, one per Tag: a result is built there and swapped into `out` on success.
template <class Tag, class Scalar>
Vector<Scalar>& scratch() {
  thread_local Vector<Scalar> v;
  return v;
}

/// acc = sum_k w[k] rows[k] (each `size` values), in order, WeightedMean's arithmetic: blocks of `block`
/// values, four rows per sweep, acc = (((acc + w0 r0) + w1 r1) + w2 r2) + w3 r3. Returns -1, or the
/// first coordinate of the first block whose sum is not finite (acc is then incomplete).
template <class Scalar>
std::int64_t weighted_sum(std::span<const Scalar* const> rows, std::span<const Scalar> w, Index size,
                          Vector<Scalar>& acc_out, Index block = mean_block) {
  acc_out.resize(size);
  for (Index start = 0; start < size; start += block) {
    const Index len = std::min(block, size - start);
    auto acc = acc_out.segment(start, len);
    acc.setZero();
    const auto part = [&](std::size_t k) { return Eigen::Map<const Vector<Scalar>>(rows[k] + start, len); };
    std::size_t k = 0;
    for (; k + 4 <= rows.size(); k += 4)
      acc = (((acc + w[k] * part(k)) + w[k + 1] * part(k + 1)) + w[k + 2] * part(k + 2)) + w[k + 3] * part(k + 3);
    for (; k < rows.size(); ++k) acc.noalias() += w[k] * part(k);
    if (!all_finite(acc)) [[unlikely]] return std::int64_t(start);
  }
  return -1;
}

/// The weighted sum of `use` with weights make_weights(use) (a std::vector<Scalar>, recomputed after each
/// rejection), screening non-finite updates on the way: a non-finite block sum is rescanned, its
/// offenders rejected, and the sum redone without them. Returns false (with report.note) if nothing is
/// left or the sum itself overflowed; `result` holds the sum otherwise. `use` loses the rejected.
template <class Scalar, class MakeWeights>
bool screened_weighted_sum(UpdateList<Scalar>& use, Index size, MakeWeights make_weights, Vector<Scalar>& result,
                           AggregationReport& report) {
  while (true) {
    if (use.empty()) {
      report.note = "no valid update to aggregate";
      return false;
    }
    const std::vector<Scalar> w = make_weights(std::as_const(use));
    const std::vector<const Scalar*> rows = data_of(use);
    const std::int64_t bad = weighted_sum<Scalar>(rows, w, size, result);
    if (bad < 0) return true;
    const Index start = Index(bad), len = std::min(mean_block, size - start);
    if (!reject_non_finite(use, start, len, report)) {
      report.note = "the weighted sum overflowed to a non-finite value";
      return false;
    }
  }
}

/// Weights n_k / sum n (WeightedMean's), rounded to Scalar.
template <class Scalar>
std::vector<Scalar> sample_weights(const UpdateList<Scalar>& use) {
  double total = 0;
  for (const auto* u : use) total += double(u->num_samples);
  std::vector<Scalar> w;
  w.reserve(use.size());
  for (const auto* u : use) w.push_back(Scalar(double(u->num_samples) / total));
  return w;
}

struct WeightedMeanTag {};

/// The sample-weighted mean over updates by reference (WeightedMean's one implementation).
template <class Scalar>
AggregationReport weighted_mean_refs(UpdateRefs<Scalar> updates, Vector<Scalar>& out) {
  AggregationReport report;
  UpdateList<Scalar> use = screen_shapes(updates, out.size(), report);
  Vector<Scalar>& next = scratch<WeightedMeanTag, Scalar>();
  if (screened_weighted_sum(use, out.size(), sample_weights<Scalar>, next, report)) {
    out.swap(next);
    report.ok = true;
    report.used = Index(use.size());
  } else if (use.empty()) {
    report.note = "no valid update to average";
  }
  sort_rejected(report);
  return report;
}

template <class R, class Scalar>
concept AggregatesRefs = requires(const R& r, UpdateRefs<Scalar> refs, Vector<Scalar>& out) {
  { r.aggregate(refs, out) } -> std::same_as<AggregationReport>;
};

/// rule over updates by reference (see the file comment).
template <class Rule, class Scalar>
AggregationReport aggregate_refs(const Rule& rule, UpdateRefs<Scalar> refs, Vector<Scalar>& out) {
  if constexpr (AggregatesRefs<Rule, Scalar>) {
    return rule.aggregate(refs, out);
  } else {
    static_assert(Aggregator<Rule, Scalar>, "aggregate_refs: the rule must satisfy the Aggregator concept");
    std::vector<ClientUpdate<Scalar>> copies;  // last resort: a rule with only the span form
    copies.reserve(refs.size());
    for (const auto* u : refs) copies.push_back(*u);
    return rule.aggregate(std::span<const ClientUpdate<Scalar>>(copies), out);
  }
}

}  // namespace fedmoe::detail
