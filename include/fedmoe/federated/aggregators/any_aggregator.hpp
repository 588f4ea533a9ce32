#pragma once
/// @file any_aggregator.hpp
/// @brief AnyAggregator (one of the aggregation rules, chosen at run time), AggregatorSpec (its
/// configuration, e.g. from a command line), make_aggregator and check_aggregator_feasible.
///
///     AggregatorSpec spec{.name = "krum", .byzantine_bound = 2};
///     check_aggregator_feasible(spec, clients_per_round);   // throws before any training
///     AnyAggregator agg = make_aggregator(spec);
///     AggregationReport r = agg.aggregate(std::span<const ClientUpdate<float>>(updates), delta);
///
/// A non-zero clip_update_norm bounds every delta's norm before the rule (NormBounded's clipping, a
/// member of AnyAggregator rather than a variant of NormBounded<...> alternatives).
#include <cmath>
#include <span>
#include <string>
#include <variant>

#include "../../core/error.hpp"
#include "bulyan.hpp"
#include "common.hpp"
#include "geometric_median.hpp"
#include "krum.hpp"
#include "mean.hpp"
#include "median.hpp"
#include "norm_bound.hpp"
#include "trimmed_mean.hpp"

namespace fedmoe {

/// Which rule, and its hyperparameters (fields a rule does not use are ignored).
struct AggregatorSpec {
  std::string name = "mean";    ///< mean, median, trimmed-mean, krum, multi-krum, bulyan, geometric-median
  double trim_fraction = 0.1;   ///< trimmed-mean: beta, trimmed at each end, in [0, 0.5)
  Index byzantine_bound = 0;    ///< krum, multi-krum, bulyan: f, Byzantine updates tolerated per round
  Index multi_krum_m = 0;       ///< multi-krum: updates averaged (0: n - f)
  double clip_update_norm = 0;  ///< 0: off; else every delta is clipped to this L2 norm before the rule
};

/// The valid AggregatorSpec::name values, for messages and help texts.
inline constexpr const char* aggregator_names = "mean, median, trimmed-mean, krum, multi-krum, bulyan, geometric-median";

class AnyAggregator {
public:
  using Rule = std::variant<WeightedMean, CoordinateMedian, TrimmedMean, Krum, MultiKrum, Bulyan, GeometricMedian>;

  /// clip_update_norm: 0 (off) or a finite bound > 0 applied to every delta before the rule.
  explicit AnyAggregator(Rule rule = WeightedMean{}, double clip_update_norm = 0)
      : m_rule(std::move(rule)), m_clip(clip_update_norm) {
    FEDMOE_CHECK(clip_update_norm >= 0 && std::isfinite(clip_update_norm),
                 "AnyAggregator: expected clip_update_norm = 0 (off) or a finite bound > 0, got ", clip_update_norm);
  }
  const Rule& rule() const { return m_rule; }
  double clip_update_norm() const { return m_clip; }

  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out) const {
    return std::visit(
        [&](const auto& rule) {
          if (m_clip > 0) {
            const auto refs = detail::refs_of(updates);
            return detail::clip_and_aggregate(rule, m_clip, detail::UpdateRefs<Scalar>(refs), out);
          }
          return rule.aggregate(updates, out);
        },
        m_rule);
  }

private:
  Rule m_rule;
  double m_clip;
};

static_assert(Aggregator<AnyAggregator, float> && Aggregator<AnyAggregator, double>);

/// The rule `spec` names, configured (the constructors check the hyperparameters).
inline AnyAggregator make_aggregator(const AggregatorSpec& spec) {
  const std::string& name = spec.name;
  const auto rule = [&]() -> AnyAggregator::Rule {
    if (name == "mean") return WeightedMean{};
    if (name == "median") return CoordinateMedian{};
    if (name == "trimmed-mean") return TrimmedMean(spec.trim_fraction);
    if (name == "krum") return Krum(spec.byzantine_bound);
    if (name == "multi-krum") return MultiKrum(spec.byzantine_bound, spec.multi_krum_m);
    if (name == "bulyan") return Bulyan(spec.byzantine_bound);
    if (name == "geometric-median") return GeometricMedian{};
    FEDMOE_FAIL("make_aggregator: unknown aggregator name \"", name, "\"; expected one of: ", aggregator_names);
  };
  return AnyAggregator(rule(), spec.clip_update_norm);
}

/// Throws, before any work, if `spec` cannot aggregate n valid updates per round: Krum / Multi-Krum
/// with n <= 2f + 2, Multi-Krum with m > n - f, Bulyan with n < 4f + 3, a trimmed mean that trims
/// everything (2 floor(beta n) >= n), or n < 1. Also checks the name and hyperparameters.
inline void check_aggregator_feasible(const AggregatorSpec& spec, Index n) {
  (void)make_aggregator(spec);  // name and hyperparameters
  const std::string& name = spec.name;
  const Index f = spec.byzantine_bound;
  FEDMOE_CHECK(n >= 1, "aggregator ", name, ": expected at least n = 1 update per round, got n = ", n);
  if (name == "krum" || name == "multi-krum")
    FEDMOE_CHECK(n > 2 * f + 2, "aggregator ", name, " with f = ", f, " needs n > 2f + 2 = ", 2 * f + 2,
                 " updates per round, got n = ", n);
  if (name == "multi-krum" && spec.multi_krum_m > 0)
    FEDMOE_CHECK(spec.multi_krum_m <= n - f, "aggregator multi-krum with f = ", f, " averages m <= n - f = ", n - f,
                 " of n = ", n, " updates per round, got m = ", spec.multi_krum_m);
  if (name == "bulyan")
    FEDMOE_CHECK(n >= 4 * f + 3, "aggregator bulyan with f = ", f, " needs n >= 4f + 3 = ", 4 * f + 3,
                 " updates per round, got n = ", n);
  if (name == "trimmed-mean") {
    const Index k = TrimmedMean(spec.trim_fraction).trimmed(n);
    FEDMOE_CHECK(2 * k < n, "aggregator trimmed-mean with beta = ", spec.trim_fraction, " trims 2 floor(beta n) = ",
                 2 * k, " of n = ", n, " updates per round: nothing remains");
  }
}

}  // namespace fedmoe
