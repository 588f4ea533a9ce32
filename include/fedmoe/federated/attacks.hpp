#pragma once
/// @file attacks.hpp
/// @brief Simulated Byzantine clients and client failures, to evaluate robust aggregation honestly.
///
/// Each round, `round(fraction x sampled)` of the sampled clients are attackers, drawn from the
/// round's own stream (so every process of a distributed run agrees without communication).
/// Independently, each sampled client fails to return with probability `failure`: it trains
/// nothing and sends nothing, and the round aggregates what arrived.
///
/// Attacks (d: the attacker's honestly trained delta; k: `scale`):
/// - `sign-flip`: sends -k d (k = 1: the plain flip; the default k = 4 is the usual strength at
///   which a 20 % minority cancels the mean's progress, Li et al. 2019, RSA);
/// - `scale`: sends k d (boosting, Bhagoji et al. 2019);
/// - `noise`: sends Gaussian noise N(0, sigma^2) in every coordinate;
/// - `label-flip`: trains honestly on its own data with every label y replaced by C - 1 - y
///   (data poisoning, on the client);
/// - `alie` ("a little is enough", Baruch et al. 2019): every attacker sends mu - z sigma, with mu
///   and sigma the coordinate-wise mean and standard deviation of the round's honest deltas and
///   z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, for n updates of which f are the attackers'.
///   The attackers collude and see the honest updates (the omniscient setting of the paper), so the
///   values stay inside the honest spread, which is what defeats median and Krum.
/// Model-poisoning attacks are applied to the updates as they reach the server (the adversary
/// controls what those clients send); label flipping changes what the client trains on.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "aggregator.hpp"

namespace fedmoe {

enum class AttackKind { none, sign_flip, scale, noise, label_flip, alie };

inline const char* to_string(AttackKind a) {
  switch (a) {
    case AttackKind::none: return "none";
    case AttackKind::sign_flip: return "sign-flip";
    case AttackKind::scale: return "scale";
    case AttackKind::noise: return "noise";
    case AttackKind::label_flip: return "label-flip";
    case AttackKind::alie: return "alie";
  }
  return "unknown";
}

inline AttackKind attack_from_string(const std::string& name) {
  for (AttackKind a : {AttackKind::none, AttackKind::sign_flip, AttackKind::scale, AttackKind::noise,
                       AttackKind::label_flip, AttackKind::alie})
    if (name == to_string(a)) return a;
  FEDMOE_FAIL("attack: expected one of none, sign-flip, scale, noise, label-flip, alie, got '", name, "'");
}

struct AttackConfig {
  AttackKind kind = AttackKind::none;
  double fraction = 0;     ///< of each round's sampled clients, in [0, 1)
  double scale = 4;        ///< k of sign-flip (-k d) and scale (k d)
  double noise_std = 1;    ///< sigma of the noise attack
  double failure = 0;      ///< probability that a sampled client fails to return, in [0, 1)

  void validate() const {
    FEDMOE_CHECK(std::isfinite(fraction) && fraction >= 0 && fraction < 1,
                 "attack: expected an attacker fraction in [0, 1), got ", fraction);
    FEDMOE_CHECK(std::isfinite(failure) && failure >= 0 && failure < 1,
                 "attack: expected a client failure probability in [0, 1), got ", failure);
    FEDMOE_CHECK(std::isfinite(scale) && scale > 0, "attack: expected a scale k > 0, got ", scale);
    FEDMOE_CHECK(std::isfinite(noise_std) && noise_std > 0, "attack: expected a noise sigma > 0, got ", noise_std);
    FEDMOE_CHECK(kind == AttackKind::none || fraction > 0, "attack '", to_string(kind),
                 "': expected an attacker fraction > 0, got 0");
  }
  bool any() const { return kind != AttackKind::none && fraction > 0; }
};

/// Who attacks and who fails in one round.
struct RoundRoles {
  std::vector<std::size_t> attackers;  ///< positions into the client list, sorted
  std::vector<std::size_t> failed;     ///< positions into the client list, sorted

  bool is_attacker(std::size_t i) const { return std::binary_search(attackers.begin(), attackers.end(), i); }
  bool has_failed(std::size_t i) const { return std::binary_search(failed.begin(), failed.end(), i); }
};

/// Draws the round's attackers (round(fraction x |sampled|) of them) and failures from `rng`.
inline RoundRoles draw_roles(const AttackConfig& config, const std::vector<std::size_t>& sampled, Rng& rng) {
  RoundRoles roles;
  if (config.any()) {
    std::vector<std::size_t> pool = sampled;
    const std::size_t f = std::size_t(std::llround(config.fraction * double(sampled.size())));
    for (std::size_t i = 0; i < f; ++i) std::swap(pool[i], pool[i + std::size_t(rng.uniform_int(pool.size() - i))]);
    roles.attackers.assign(pool.begin(), pool.begin() + std::ptrdiff_t(f));
    std::sort(roles.attackers.begin(), roles.attackers.end());
  }
  if (config.failure > 0)
    for (std::size_t i : sampled)
      if (rng.uniform01() < config.failure) roles.failed.push_back(i);
  return roles;
}

namespace detail {
/// The standard normal quantile (Acklam's rational approximation, refined by one Halley step
/// against std::erfc: |error| < 1e-15 on (0, 1)).
inline double normal_quantile(double p) {
  FEDMOE_CHECK(p > 0 && p < 1, "normal_quantile: expected p in (0, 1), got ", p);
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01,  -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p > 1 - 0.02425) {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;  // Halley refinement
  const double u = e * std::sqrt(2 * std::numbers::pi) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}
}  // namespace detail

/// ALIE's z for n updates of which f are the attackers' (Baruch et al. 2019, Algorithm 3).
inline double alie_z(std::size_t n, std::size_t f) {
  const double s = std::floor(double(n) / 2 + 1) - double(f);
  const double p = (double(n) - s) / double(n);
  return p > 0 && p < 1 ? detail::normal_quantile(p) : 0.0;
}

/// Replaces the attackers' updates (as they reach the server) by the configured model-poisoning
/// attack. `updates` are sorted by client; `is_attacker(client id)` tells who attacks. Noise draws
/// come from `rng` in update order. Label flipping happens on the client and changes nothing here.
template <class S, class IsAttacker>
void poison_updates(const AttackConfig& config, std::vector<ClientUpdate<S>>& updates, IsAttacker&& is_attacker,
                    Rng& rng) {
  if (!config.any() || config.kind == AttackKind::label_flip) return;
  std::vector<std::size_t> bad, good;
  for (std::size_t k = 0; k < updates.size(); ++k) (is_attacker(updates[k].client) ? bad : good).push_back(k);
  if (bad.empty()) return;
  if (config.kind == AttackKind::alie) {
    if (good.empty()) return;  // nothing to imitate: the attackers send their honest updates
    const Index p = updates[good.front()].delta.size();
    Eigen::ArrayX<double> mean = Eigen::ArrayX<double>::Zero(p), sq = Eigen::ArrayX<double>::Zero(p);
    std::size_t used = 0;
    for (std::size_t k : good) {
      if (updates[k].delta.size() != p) continue;
      const auto d = updates[k].delta.array().template cast<double>();
      mean += d;
      sq += d.square();
      ++used;
    }
    mean /= double(used);
    const Eigen::ArrayX<double> sd = (sq / double(used) - mean.square()).max(0.0).sqrt();
    const double z = alie_z(updates.size(), bad.size());
    const Vector<S> forged = (mean - z * sd).template cast<S>().matrix();
    for (std::size_t k : bad) updates[k].delta = forged;
    return;
  }
  for (std::size_t k : bad) {
    auto& d = updates[k].delta;
    switch (config.kind) {
      case AttackKind::sign_flip: d *= S(-config.scale); break;
      case AttackKind::scale: d *= S(config.scale); break;
      case AttackKind::noise:
        for (Index i = 0; i < d.size(); ++i) d[i] = S(config.noise_std * rng.normal());
        break;
      default: break;
    }
  }
}

}  // namespace fedmoe
