#pragma once
/// @file norm_bound.hpp
/// @brief NormBounded<Inner>(max_norm): norm-bounding defence (Sun et al. 2019, "Can you really
/// backdoor federated learning?", arXiv:1911.07963), a decorator around any aggregation rule:
///
///     d_k <- d_k * min(1, max_norm / |d_k|_2),   then   out = Inner(updates)
///
/// Only the updates longer than max_norm are copied (scaled in one pass, into a per-thread pool reused
/// from round to round, which keeps up to one round's clipped copies alive); the others reach the rule
/// by reference (the rule's reference form, see common.hpp; WeightedMean gets an equivalent of itself
/// on references, bitwise the same). A clipped update's norm is max_norm up to rounding. Malformed
/// updates (wrong size, non-finite) are passed through untouched for the rule to reject. The report is
/// the rule's.
#include <cmath>
#include <span>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "common.hpp"
#include "mean.hpp"

namespace fedmoe {

namespace detail {
/// Clips the updates longer than max_norm (copies of those only) and applies `rule` to the result.
template <class Rule, class Scalar>
AggregationReport clip_and_aggregate(const Rule& rule, double max_norm, UpdateRefs<Scalar> updates, Vector<Scalar>& out) {
  // The clipped copies live in a per-thread pool, one per rule type (a NormBounded<NormBounded<R>> uses
  // two): in the steady state (same model size, same count) no allocation and no page faults. The pool
  // is sized before any pointer into it is taken.
  thread_local std::vector<ClientUpdate<Scalar>> clipped;
  if (clipped.size() < updates.size()) clipped.resize(updates.size());
  std::size_t used = 0;
  UpdateList<Scalar> view;
  view.reserve(updates.size());
  for (const auto* u : updates) {
    if (u->delta.size() != out.size()) {
      view.push_back(u);
      continue;
    }
    double norm = double(u->delta.norm());
    if (!std::isfinite(norm)) {
      if (!all_finite(u->delta)) {  // the rule rejects it
        view.push_back(u);
        continue;
      }
      norm = double(u->delta.stableNorm());  // finite values whose squares overflow
    }
    if (norm <= max_norm) {
      view.push_back(u);
      continue;
    }
    ClientUpdate<Scalar>& c = clipped[used++];
    c.client = u->client;
    c.num_samples = u->num_samples;
    c.extras = u->extras;
    c.delta = Scalar(max_norm / norm) * u->delta;
    view.push_back(&c);
  }
  return aggregate_refs(rule, UpdateRefs<Scalar>(view), out);
}
}  // namespace detail

template <class Inner = WeightedMean>
class NormBounded {
public:
  /// max_norm > 0: the largest L2 norm of a delta that reaches the rule.
  explicit NormBounded(double max_norm, Inner inner = Inner{}) : m_max_norm(max_norm), m_inner(std::move(inner)) {
    FEDMOE_CHECK(max_norm > 0 && std::isfinite(max_norm),
                 "NormBounded: expected a finite norm bound max_norm > 0, got max_norm = ", max_norm);
  }
  double max_norm() const { return m_max_norm; }
  const Inner& inner() const { return m_inner; }

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    const auto refs = detail::refs_of(updates);
    return aggregate(detail::UpdateRefs<Scalar>(refs), out);
  }
  /// The same over updates by reference (see common.hpp).
  template <class Scalar>
  AggregationReport aggregate(detail::UpdateRefs<Scalar> updates, Vector<Scalar>& out) const {
    return detail::clip_and_aggregate(m_inner, m_max_norm, updates, out);
  }

private:
  double m_max_norm;
  Inner m_inner;
};

}  // namespace fedmoe
