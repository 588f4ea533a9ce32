#pragma once
/// @file dp_mean.hpp
/// @brief DpMean: the aggregator of DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018, "Learning
/// differentially private recurrent language models"), client-level differential privacy with a
/// trusted server, with optional adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021,
/// "Differentially private learning with adaptive clipping").
///
/// One round, over the round's updates d_k (in client order) and the expected number of sampled
/// clients m = q * n (q: the Poisson sampling rate, n: the opted-in clients):
///
///     d_k   <- d_k * min(1, C / |d_k|_2)                      every update clipped to norm C
///     out    = (sum_k d_k + N(0, (z_d C)^2 I)) / m             fixed denominator, uniform weights
///
/// - Uniform weights and the fixed denominator m (McMahan et al.'s estimator f~_f with w_k = 1): the
///   sum's L2 sensitivity to one client is C, whatever the others send, so the Gaussian noise of
///   standard deviation z_d * C makes each round a sampled Gaussian mechanism with noise multiplier z
///   (rdp_accountant.hpp accounts it). A sample-weighted mean would let a client's weight move the
///   sensitivity; this is why DP-FedAvg does not weight by samples.
/// - The release happens every round, also when Poisson sampling drew no client or every update was
///   malformed (then out is the noise alone): skipping a round would reveal that nobody took part.
///   Malformed updates (wrong size, non-finite, wrong extras) are rejected and contribute nothing.
/// - Adaptive clipping (their Algorithm 1, geometric update): the centred count
///   sum_k (1[|d_k| <= C] - 1/2) (sensitivity 1/2) is released with noise N(0, sigma_b^2),
///   b~ = released / m + 1/2 estimates the fraction unclipped, and C <- C * exp(-eta_C * (b~ - gamma))
///   after the round, so C tracks the gamma-quantile of the update norms. The two releases share the budget: the sum gets
///   z_d = (z^-2 - (2 sigma_b)^-2)^(-1/2) and the combined mechanism has noise multiplier z (their
///   Theorem 1), which is what the accountant sees. Defaults from the paper: eta_C = 0.2,
///   sigma_b = m / 20.
/// - The analysis assumes Poisson sampling of clients (PoissonSampler): train_federated refuses a DP
///   aggregator with any other sampler.
/// - Randomness: the noise comes from the round's own stream (the federation passes it), so a DP run
///   is bitwise the same for any thread count and over MPI. Noise is drawn in double and added to the
///   sum in double, then rounded once to the model's scalar.
/// Robust aggregators cannot be combined with it: their sensitivity to one client is not C (a
/// coordinate median can move by the gap between order statistics), so the accountant would not hold.
#include <cmath>
#include <concepts>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/rng.hpp"
#include "../aggregator.hpp"
#include "rdp_accountant.hpp"

namespace fedmoe {

/// Adaptive clipping (Andrew et al. 2021): C follows the target quantile of the update norms.
struct AdaptiveClipping {
  double target_quantile = 0.5;   ///< gamma in [0, 1]: the fraction of updates left unclipped
  double learning_rate = 0.2;     ///< eta_C of the geometric update
  double count_noise_std = 0;     ///< sigma_b of the noised unclipped count; 0: the paper's m / 20
};

struct DpMeanConfig {
  double clip_norm = 1.0;          ///< C (the initial C with adaptive clipping)
  double noise_multiplier = 1.0;   ///< z: the accountant's noise multiplier of each round
  std::optional<AdaptiveClipping> adaptive;  ///< none: fixed clipping

  void validate() const {
    FEDMOE_CHECK(std::isfinite(clip_norm) && clip_norm > 0, "DpMean: expected a clipping norm C > 0, got ", clip_norm);
    FEDMOE_CHECK(std::isfinite(noise_multiplier) && noise_multiplier > 0,
                 "DpMean: expected a noise multiplier z > 0, got ", noise_multiplier);
    if (adaptive) {
      const auto& a = *adaptive;
      FEDMOE_CHECK(a.target_quantile >= 0 && a.target_quantile <= 1,
                   "DpMean: expected an adaptive-clipping target quantile in [0, 1], got ", a.target_quantile);
      FEDMOE_CHECK(std::isfinite(a.learning_rate) && a.learning_rate > 0,
                   "DpMean: expected an adaptive-clipping learning rate > 0, got ", a.learning_rate);
      FEDMOE_CHECK(std::isfinite(a.count_noise_std) && a.count_noise_std >= 0,
                   "DpMean: expected a count noise std >= 0 (0: m / 20), got ", a.count_noise_std);
    }
  }
};

/// What a round of DpMean did, for the round's record.
struct DpRoundInfo {
  double clip_norm = 0;            ///< C used this round
  double sum_noise_multiplier = 0; ///< z_d (= z without adaptive clipping)
  Index unclipped = 0;             ///< updates with norm <= C (before the count's noise)
};

/// How train_federated accounts a DP run (FederationConfig::privacy).
struct PrivacyAccounting {
  double delta = 1e-5;                                          ///< the delta of the reported (epsilon, delta)
  double epsilon_budget = std::numeric_limits<double>::infinity();  ///< stop before exceeding it (inf: never)
  privacy::Conversion conversion = privacy::Conversion::improved;   ///< RDP -> (epsilon, delta)

  void validate() const {
    FEDMOE_CHECK(delta > 0 && delta < 1, "PrivacyAccounting: expected delta in (0, 1), got ", delta);
    FEDMOE_CHECK(epsilon_budget > 0, "PrivacyAccounting: expected an epsilon budget > 0, got ", epsilon_budget);
  }
};

/// An aggregator whose release the federation accounts as a sampled Gaussian mechanism.
template <class A>
concept DifferentiallyPrivate = requires(A& a, const A& c, double m) {
  { c.noise_multiplier() } -> std::convertible_to<double>;
  { c.clip_norm() } -> std::convertible_to<double>;
  a.set_expected_clients(m);
  { c.last_round() } -> std::convertible_to<DpRoundInfo>;
};

class DpMean {
public:
  explicit DpMean(DpMeanConfig config) : m_config(config), m_clip(config.clip_norm) { m_config.validate(); }

  const DpMeanConfig& config() const { return m_config; }
  /// z, the noise multiplier the accountant uses for each round.
  double noise_multiplier() const { return m_config.noise_multiplier; }
  /// The current clipping norm C (moves with adaptive clipping).
  double clip_norm() const { return m_clip; }
  const DpRoundInfo& last_round() const { return m_last; }
  /// The state across rounds (io/archive.hpp): the adaptive clipping norm.
  template <class Ar>
  void serialize(Ar& ar) {
    ar("clip_norm", m_clip);
    if constexpr (Ar::loading)
      FEDMOE_CHECK(std::isfinite(m_clip) && m_clip > 0, "DpMean: expected a restored clipping norm > 0, got ", m_clip);
  }

  /// The expected number of sampled clients m = q n, set by train_federated from its sampler before
  /// the first round (and checked: adaptive clipping needs z < 2 sigma_b).
  void set_expected_clients(double m) {
    FEDMOE_CHECK(std::isfinite(m) && m > 0, "DpMean: expected an expected client count m > 0, got ", m);
    m_expected = m;
    sum_noise_multiplier();  // throws now, not in round 1, if the split is impossible
  }
  double expected_clients() const { return m_expected; }

  /// z_d: the sum's noise multiplier (the whole z without adaptive clipping).
  double sum_noise_multiplier() const {
    const double z = m_config.noise_multiplier;
    if (!m_config.adaptive) return z;
    const double sb = count_noise_std();
    FEDMOE_CHECK(2 * sb > z, "DpMean: adaptive clipping needs the count noise 2 sigma_b > z; got sigma_b = ", sb,
                 " (m = ", m_expected, ") and z = ", z, "; raise the count noise or the expected client count");
    return privacy::adaptive_clipping_sum_noise_multiplier(z, sb);
  }
  double count_noise_std() const {
    const auto& a = *m_config.adaptive;
    return a.count_noise_std > 0 ? a.count_noise_std : m_expected / 20.0;
  }

  /// One DP-FedAvg release (see the file comment); `rng` is the round's noise stream.
  template <class Scalar>
  AggregationReport aggregate(std::span<const ClientUpdate<Scalar>> updates, Vector<Scalar>& out, Rng& rng) {
    FEDMOE_CHECK(m_expected > 0, "DpMean: the expected client count m was never set (train_federated sets it)");
    AggregationReport report;
    const Index size = out.size();
    Eigen::VectorXd sum = Eigen::VectorXd::Zero(size);
    Index unclipped = 0;
    for (const auto& u : updates) {
      if (u.delta.size() != size) {
        report.rejected.push_back({u.client, Rejection::wrong_size});
        continue;
      }
      if (!detail::all_finite(u.delta)) {
        report.rejected.push_back({u.client, Rejection::non_finite});
        continue;
      }
      const Eigen::VectorXd d = u.delta.template cast<double>();
      const double norm = d.norm();  // finite: float values squared cannot overflow a double
      if (norm <= m_clip) {
        ++unclipped;
        sum += d;
      } else {
        sum += (m_clip / norm) * d;
      }
      ++report.used;
    }
    const double zd = sum_noise_multiplier();
    const double sd = zd * m_clip;
    for (Index i = 0; i < size; ++i) sum[i] += sd * rng.normal();
    out = (sum / m_expected).template cast<Scalar>();
    m_last = {m_clip, zd, unclipped};
    if (m_config.adaptive) {
      const auto& a = *m_config.adaptive;
      // The centred count sum_k (b_k - 1/2) has sensitivity 1/2 (which the budget split assumes); the
      // fraction unclipped is estimated over the expected count m, as the sum over m.
      const double centred = double(unclipped) - 0.5 * double(report.used);
      const double b = (centred + count_noise_std() * rng.normal()) / m_expected + 0.5;
      m_clip *= std::exp(-a.learning_rate * (b - a.target_quantile));
    }
    report.ok = true;  // released every round, also from no update (the noise alone)
    return report;
  }

private:
  DpMeanConfig m_config;
  double m_clip;
  double m_expected = 0;
  DpRoundInfo m_last{};
};

}  // namespace fedmoe
