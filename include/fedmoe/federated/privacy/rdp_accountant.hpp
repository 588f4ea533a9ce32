#pragma once
/// @file rdp_accountant.hpp
/// @brief Rényi-DP accountant of the Poisson-subsampled Gaussian mechanism, for client-level
/// DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018): its RDP at any order, composition over rounds,
/// conversion to (epsilon, delta), a stateful RdpAccountant for training loops, and the budget split
/// of adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021).
///
/// **The mechanism.** Each round samples every client independently with probability q, clips each
/// sampled update to L2 norm C and releases the sum plus N(0, (z C)^2 I) (dp_mean.hpp). Its privacy
/// is that of the sampled Gaussian mechanism (SGM) of sensitivity 1 and noise multiplier sigma = z.
/// Mironov, Talwar & Zhang 2019 ("Rényi Differential Privacy of the Sampled Gaussian Mechanism",
/// arXiv:1908.10530) reduce its Rényi divergence of order alpha to one dimension:
///
///     mu_0 = N(0, sigma^2),   mu_1 = (1 - q) N(0, sigma^2) + q N(1, sigma^2),
///     RDP(alpha) = D_alpha(mu_1 || mu_0) = log(A_alpha) / (alpha - 1),
///     A_alpha    = E_{z ~ mu_0}[ (1 - q + q exp((2 z - 1) / (2 sigma^2)))^alpha ]
///
/// (they show that the reverse divergence D_alpha(mu_0 || mu_1) is never the larger one, so this is
/// the mechanism's RDP, as TF-Privacy and Opacus compute it; the tests check both by quadrature).
///
/// - **Integer alpha**, exact: the binomial expansion A = sum_i C(alpha, i) (1-q)^(alpha-i) q^i
///   exp((i^2 - i) / (2 sigma^2)). Its i = 0 and i = 1 terms sum with the others' weights to 1, so
///   fedmoe sums A - 1 = sum_{i >= 2} C(alpha, i) (1-q)^(alpha-i) q^i expm1((i^2 - i) / (2 sigma^2))
///   (all terms positive, log-sum-exp) and takes log1p: the RDP keeps full relative precision however
///   small it is (summing A itself, as TF-Privacy does, leaves an absolute error of ~1e-16 in log A).
/// - **Fractional alpha**: their Section 3.3. Split the integral at z0 = sigma^2 log(1/q - 1) + 1/2,
///   where q exp(...) = 1 - q, and expand (1 - q + q r)^alpha by the binomial series in the smaller
///   of the two summands on each side; each term integrates to a Gaussian tail (j = alpha - i):
///
///     A = sum_{i >= 0} C(alpha, i) [ (1-q)^(alpha-i) q^i  e^((i^2-i)/(2 sigma^2)) erfc((i - z0)/(sqrt2 sigma))/2
///                                  + (1-q)^i  q^(alpha-i)  e^((j^2-j)/(2 sigma^2)) erfc((z0 - j)/(sqrt2 sigma))/2 ]
///
///   with generalised binomial coefficients C(alpha, i) (built by their ratio; their signs alternate
///   from i = floor(alpha) + 2 on). The terms go signed into one log-scaled, compensated (Neumaier)
///   sum; log erfc is std::erfc below 25 and its asymptotic series above (no underflow). The sum stops
///   once i > alpha + 1 and a term is below e^-36 (~2e-16) of the sum: there the series alternates
///   with (eventually) decreasing terms, so the truncation error is about the first omitted term.
///   The precision is absolute in log A, ~2e-16, i.e. ~2e-16 / (alpha - 1) in the RDP (relative
///   while the RDP is well above that; checked against quadrature in the tests). The tail decays only
///   polynomially (like i^-(alpha+2), with a constant growing with sigma): tens to thousands of terms
///   for sigma <= 10 (the default grid in 0.3 to 12 ms), up to the cap of 2^22 terms (~0.1 s per
///   order) for sigma >~ 1e5 near q = 1/2.
/// - Special cases: q == 0 gives 0; q == 1 gives the plain Gaussian alpha / (2 sigma^2); alpha = +inf
///   gives +inf for 0 < q. Finite orders up to max_finite_order (the integer sum costs alpha terms).
///
/// **Composition.** RDP adds: T rounds at the same (q, sigma) have T * RDP(alpha) at every order;
/// different mechanisms add their vectors order by order.
///
/// **Conversion to (epsilon, delta)**, minimised over the order grid (both valid for every alpha > 1):
/// - Conversion::classic (Mironov 2017, Proposition 3): eps = rdp + log(1/delta) / (alpha - 1).
/// - Conversion::improved (Balle et al. 2020, Theorem 21; Canonne, Kamath & Steinke 2020,
///   Proposition 12): eps = rdp + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1),
///   always smaller than classic. This is what TF-Privacy / dp_accounting and Opacus use today.
/// Both are floored at 0, and both give eps = 0 at an order where 1 - exp(-rdp) <= delta^2: the total
/// variation distance is at most sqrt(1 - exp(-KL)) (Bretagnolle-Huber) and KL <= rdp(alpha), so the
/// mechanism is (0, delta)-DP. This only matters for a (near) zero RDP (zero rounds cost nothing
/// instead of log(1/delta) / (alpha_max - 1)). The inverse (delta for a given epsilon) uses the same
/// two formulas solved for delta, and the same bound delta <= sqrt(1 - exp(-rdp)).
///
/// **The default order grid** (default_orders(), 133 orders): 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75;
/// 3 to 64 in steps of 0.5; 128, 256, 512. Quarter steps near 1 matter for large budgets (eps of 5 and up),
/// where the optimal order is small; the optimum moves slowly at large orders, where halves suffice;
/// 128..512 cover small budgets and large sigma. A result whose order is an end of the grid means the
/// grid was too narrow for that budget.
///
/// **Adaptive clipping** (Andrew et al. 2021, their Theorem 1): releasing the noised count of
/// unclipped updates (centred, sensitivity 1/2, noise sigma_b) along with the sum (sensitivity C,
/// noise z_delta C) is one Gaussian mechanism of noise multiplier (z_delta^-2 + (2 sigma_b)^-2)^(-1/2).
/// To spend the budget of noise multiplier z, the sum gets z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
/// (adaptive_clipping_sum_noise_multiplier); the accountant is then built with sigma = z, not z_delta.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <span>
#include <utility>
#include <vector>

#include "../../core/error.hpp"

namespace fedmoe::privacy {

/// The largest finite order accepted (the integer-order sum has alpha + 1 terms). +inf is accepted too.
inline constexpr double max_finite_order = 1e6;

/// How RDP is converted to (epsilon, delta)-DP (see the file comment).
enum class Conversion {
  classic,   ///< Mironov 2017: eps = rdp + log(1/delta) / (alpha - 1)
  improved,  ///< Balle et al. 2020 / Canonne, Kamath & Steinke 2020 (tighter)
};
inline const char* to_string(Conversion c) { return c == Conversion::classic ? "classic" : "improved"; }

/// An epsilon and the order that attains it.
struct EpsilonSpent {
  double epsilon = 0;
  double order = 0;
};

/// A delta and the order that attains it.
struct DeltaSpent {
  double delta = 0;
  double order = 0;
};

/// The default order grid: 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75; 3, 3.5, ..., 64; 128, 256, 512.
inline std::vector<double> default_orders() {
  std::vector<double> orders{1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75};
  for (int k = 6; k <= 128; ++k) orders.push_back(0.5 * k);  // 3 .. 64 by 0.5
  orders.insert(orders.end(), {128.0, 256.0, 512.0});
  return orders;
}

namespace detail {

inline constexpr double inf = std::numeric_limits<double>::infinity();

inline void check_rate(double q, const char* who) {
  FEDMOE_CHECK(q >= 0 && q <= 1, who, ": expected a sampling rate q in [0, 1], got ", q);
}
inline void check_noise(double sigma, const char* who) {
  FEDMOE_CHECK(std::isfinite(sigma) && sigma > 0, who, ": expected a finite noise multiplier sigma > 0, got ", sigma);
}
inline void check_order(double alpha, const char* who) {
  FEDMOE_CHECK(alpha > 1 && (alpha <= max_finite_order || alpha == inf), who,
               ": expected an order alpha in (1, ", max_finite_order, "] or +inf, got ", alpha);
}
inline void check_orders(std::span<const double> orders, const char* who) {
  FEDMOE_CHECK(!orders.empty(), who, ": expected at least one order, got an empty list");
  for (double a : orders) check_order(a, who);
}
inline void check_delta(double delta, const char* who) {
  FEDMOE_CHECK(delta > 0 && delta < 1, who, ": expected delta in (0, 1), got ", delta);
}
inline void check_rounds(std::int64_t rounds, const char* who) {
  FEDMOE_CHECK(rounds >= 0, who, ": expected a number of rounds >= 0, got ", rounds);
}

/// log(e^a + e^b).
inline double log_add(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == -inf) return a;
  return a + std::log1p(std::exp(b - a));
}

/// log(1 + e^x), without overflow.
inline double log1p_exp(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

/// log(e^x - 1) for x >= 0 (-inf at 0).
inline double log_expm1(double x) { return x > 30 ? x + std::log1p(-std::exp(-x)) : std::log(std::expm1(x)); }

/// log(erfc(x)) for any x: std::erfc while it is a normal number (relative precision), the
/// asymptotic series erfc(x) = e^(-x^2) / (x sqrt(pi)) * sum_k (-1)^k (2k-1)!! / (2x^2)^k above 25
/// (eight terms: the first omitted one is below 1e-19 there).
inline double log_erfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  if (x == inf) return -inf;
  const double t = 1.0 / (2 * x * x);
  double term = 1, sum = 1;
  for (int k = 1; k <= 8; ++k) {
    term *= -(2.0 * k - 1) * t;
    sum += term;
  }
  return -x * x - std::log(x) - 0.5 * std::log(std::numbers::pi) + std::log(sum);
}

/// A sum of signed terms given by log|term|, held as (m_sum + m_carry) * e^m_scale with m_scale the
/// largest log|term| so far (no overflow or underflow, however large or small the terms), with
/// Neumaier's compensated summation (the fractional series may take millions of terms).
class SignedLogSum {
public:
  void add(double log_abs, bool negative) {
    if (log_abs == -inf) return;
    if (log_abs > m_scale) {
      const double f = std::exp(m_scale - log_abs);
      m_sum *= f;
      m_carry *= f;
      m_scale = log_abs;
    }
    const double t = negative ? -std::exp(log_abs - m_scale) : std::exp(log_abs - m_scale);
    const double s = m_sum + t;
    m_carry += std::fabs(m_sum) >= std::fabs(t) ? (m_sum - s) + t : (t - s) + m_sum;
    m_sum = s;
  }
  /// log of the sum; -inf for a sum that is zero or (by rounding) negative.
  double log() const {
    const double total = m_sum + m_carry;
    return total > 0 ? m_scale + std::log(total) : -inf;
  }

private:
  double m_sum = 0;
  double m_carry = 0;
  double m_scale = -inf;
};

/// log(A_alpha) for integer alpha >= 2 and 0 < q < 1, through A - 1 (see the file comment).
inline double log_a_integer(double q, double sigma, std::int64_t alpha) {
  const double log_q = std::log(q), log_1mq = std::log1p(-q), two_s2 = 2 * sigma * sigma;
  const double a = double(alpha);
  double log_binom = std::log(a);  // log C(alpha, 1)
  double log_am1 = -inf;           // log(A - 1)
  for (std::int64_t i = 2; i <= alpha; ++i) {
    const double di = double(i);
    log_binom += std::log(a - di + 1) - std::log(di);
    const double log_gain = log_expm1((di * di - di) / two_s2);
    log_am1 = log_add(log_am1, log_binom + di * log_q + (a - di) * log_1mq + log_gain);
  }
  return log1p_exp(log_am1);
}

/// log(A_alpha) for fractional alpha > 1 and 0 < q < 1: the two series of Mironov et al. 2019, 3.3.
inline double log_a_fractional(double q, double sigma, double alpha) {
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  const double two_s2 = 2 * sigma * sigma, sqrt2_sigma = std::numbers::sqrt2 * sigma;
  const double log_odds = log_1mq - log_q;  // log(1/q - 1)
  const double z0 = log_odds == 0 ? 0.5 : sigma * sigma * log_odds + 0.5;
  constexpr std::int64_t max_terms = std::int64_t(1) << 22;
  constexpr double relative_cut = -36;  // e^-36 ~ 2.3e-16
  SignedLogSum sum;
  double log_binom = 0;  // log|C(alpha, i)|
  bool negative = false;  // sign of C(alpha, i)
  for (std::int64_t i = 0; i < max_terms; ++i) {
    const double di = double(i);
    if (i > 0) {
      const double factor = alpha - di + 1;  // C(alpha, i) = C(alpha, i-1) * (alpha - i + 1) / i
      log_binom += std::log(std::fabs(factor)) - std::log(di);
      if (factor < 0) negative = !negative;
    }
    const double j = alpha - di;
    const double log_s0 = log_binom + di * log_q + j * log_1mq + (di * di - di) / two_s2 - std::numbers::ln2 +
                          log_erfc((di - z0) / sqrt2_sigma);
    const double log_s1 = log_binom + j * log_q + di * log_1mq + (j * j - j) / two_s2 - std::numbers::ln2 +
                          log_erfc((z0 - j) / sqrt2_sigma);
    sum.add(log_s0, negative);
    sum.add(log_s1, negative);
    if (di > alpha + 1 && std::max(log_s0, log_s1) < sum.log() + relative_cut) break;
  }
  return sum.log();
}

/// eps at one order from an RDP value r (already composed), see the file comment.
inline double epsilon_at(double alpha, double r, double delta, Conversion conversion) {
  if (-std::expm1(-r) <= delta * delta) return 0;  // TV <= sqrt(1 - e^-KL) <= delta
  if (alpha == inf) return r;                        // both formulas tend to r
  double eps = 0;
  if (conversion == Conversion::classic) {
    eps = r - std::log(delta) / (alpha - 1);
  } else {
    eps = r + std::log1p(-1 / alpha) - (std::log(delta) + std::log(alpha)) / (alpha - 1);
  }
  return std::max(eps, 0.0);
}

/// delta at one order from an RDP value r (already composed), see the file comment.
inline double delta_at(double alpha, double r, double epsilon, Conversion conversion) {
  if (epsilon == inf) return 0;  // every mechanism is (inf, 0)-DP
  const double tv_bound = std::sqrt(-std::expm1(-r));  // valid for every epsilon >= 0
  double log_delta = 0;
  if (alpha == inf) {
    log_delta = r <= epsilon ? -inf : 0;
  } else if (conversion == Conversion::classic) {
    log_delta = (alpha - 1) * (r - epsilon);
  } else {
    log_delta = (alpha - 1) * (r - epsilon + std::log1p(-1 / alpha)) - std::log(alpha);
  }
  return std::min({std::exp(log_delta), tv_bound, 1.0});
}

/// The smallest eps over the orders of the RDP vector scale * rdp (scale: the number of rounds);
/// the first order attaining it.
inline EpsilonSpent best_epsilon(std::span<const double> orders, std::span<const double> rdp, double scale,
                                 double delta, Conversion conversion) {
  EpsilonSpent best{inf, orders[0]};
  for (std::size_t k = 0; k < orders.size(); ++k) {
    const double r = scale == 0 ? 0.0 : scale * rdp[k];  // 0 rounds of an infinite RDP cost nothing
    const double eps = epsilon_at(orders[k], r, delta, conversion);
    if (eps < best.epsilon) best = {eps, orders[k]};
  }
  return best;
}

inline DeltaSpent best_delta(std::span<const double> orders, std::span<const double> rdp, double scale,
                             double epsilon, Conversion conversion) {
  DeltaSpent best{1.0, orders[0]};  // delta = 1 holds for any mechanism
  for (std::size_t k = 0; k < orders.size(); ++k) {
    const double r = scale == 0 ? 0.0 : scale * rdp[k];
    const double d = delta_at(orders[k], r, epsilon, conversion);
    if (d < best.delta) best = {d, orders[k]};
  }
  return best;
}

inline void check_rdp_vector(std::span<const double> orders, std::span<const double> rdp, const char* who) {
  check_orders(orders, who);
  FEDMOE_CHECK(rdp.size() == orders.size(), who, ": expected one RDP value per order (", orders.size(),
               " orders), got ", rdp.size(), " values");
  for (std::size_t k = 0; k < rdp.size(); ++k)
    FEDMOE_CHECK(rdp[k] >= 0, who, ": expected RDP values >= 0, got ", rdp[k], " at order ", orders[k]);
}

}  // namespace detail

/// RDP of one sampled Gaussian mechanism at order alpha: sampling rate q in [0, 1], noise multiplier
/// sigma > 0 (noise std / L2 sensitivity), alpha in (1, max_finite_order] or +inf.
inline double sampled_gaussian_rdp(double q, double sigma, double alpha) {
  constexpr const char* who = "sampled_gaussian_rdp";
  detail::check_rate(q, who);
  detail::check_noise(sigma, who);
  detail::check_order(alpha, who);
  if (q == 0) return 0;
  if (q == 1) return alpha / (2 * sigma * sigma);
  if (alpha == detail::inf) return detail::inf;
  const double log_a = std::floor(alpha) == alpha ? detail::log_a_integer(q, sigma, std::int64_t(alpha))
                                                  : detail::log_a_fractional(q, sigma, alpha);
  FEDMOE_CHECK(!std::isnan(log_a), "sampled_gaussian_rdp: internal error, log A is NaN at q = ", q,
               ", sigma = ", sigma, ", alpha = ", alpha);
  return std::max(log_a, 0.0) / (alpha - 1);  // log A >= 0 (Jensen); clears a rounding residue
}

/// RDP of `rounds` compositions of the sampled Gaussian mechanism at each of `orders`.
inline std::vector<double> sampled_gaussian_rdp(double q, double sigma, std::span<const double> orders,
                                                std::int64_t rounds = 1) {
  constexpr const char* who = "sampled_gaussian_rdp";
  detail::check_rate(q, who);
  detail::check_noise(sigma, who);
  detail::check_orders(orders, who);
  detail::check_rounds(rounds, who);
  std::vector<double> rdp(orders.size(), 0.0);
  if (rounds == 0) return rdp;
  for (std::size_t k = 0; k < orders.size(); ++k) rdp[k] = double(rounds) * sampled_gaussian_rdp(q, sigma, orders[k]);
  return rdp;
}

/// (eps, delta)-DP at one order from its (composed) RDP value.
inline double epsilon_at_order(double alpha, double rdp, double delta, Conversion conversion) {
  constexpr const char* who = "epsilon_at_order";
  detail::check_order(alpha, who);
  FEDMOE_CHECK(rdp >= 0, who, ": expected an RDP value >= 0, got ", rdp);
  detail::check_delta(delta, who);
  return detail::epsilon_at(alpha, rdp, delta, conversion);
}

/// The smallest epsilon over the orders for the (composed) RDP values `rdp`, and its order.
inline EpsilonSpent epsilon_from_rdp(std::span<const double> orders, std::span<const double> rdp, double delta,
                                     Conversion conversion) {
  constexpr const char* who = "epsilon_from_rdp";
  detail::check_rdp_vector(orders, rdp, who);
  detail::check_delta(delta, who);
  return detail::best_epsilon(orders, rdp, 1.0, delta, conversion);
}

/// The smallest delta over the orders for the (composed) RDP values `rdp` at a given epsilon >= 0.
inline DeltaSpent delta_from_rdp(std::span<const double> orders, std::span<const double> rdp, double epsilon,
                                 Conversion conversion) {
  constexpr const char* who = "delta_from_rdp";
  detail::check_rdp_vector(orders, rdp, who);
  FEDMOE_CHECK(epsilon >= 0, who, ": expected epsilon >= 0, got ", epsilon);
  return detail::best_delta(orders, rdp, 1.0, epsilon, conversion);
}

/// The privacy spent by rounds of one sampled Gaussian mechanism (q, sigma), for a training loop:
///
///     RdpAccountant acc(q, z);
///     for (...) { train_round(); acc.step(); if (acc.epsilon(1e-5).epsilon > budget) break; }
///
/// It keeps the RDP of one round at each order (computed once) and the round count; epsilon is
/// rounds * rdp converted, without allocation. For several mechanisms, add the vectors of
/// sampled_gaussian_rdp and use epsilon_from_rdp.
class RdpAccountant {
public:
  RdpAccountant(double q, double sigma, std::vector<double> orders = default_orders())
      : m_q(q), m_sigma(sigma), m_orders(std::move(orders)) {
    m_rdp = sampled_gaussian_rdp(q, sigma, m_orders, 1);  // validates q, sigma and the orders
  }

  /// Records `rounds` more rounds.
  void step(std::int64_t rounds = 1) {
    detail::check_rounds(rounds, "RdpAccountant::step");
    FEDMOE_CHECK(rounds <= std::numeric_limits<std::int64_t>::max() - m_rounds,
                 "RdpAccountant::step: expected at most ", std::numeric_limits<std::int64_t>::max() - m_rounds,
                 " more rounds (the count would overflow), got ", rounds);
    m_rounds += rounds;
  }
  std::int64_t rounds() const noexcept { return m_rounds; }
  double sampling_rate() const noexcept { return m_q; }
  double noise_multiplier() const noexcept { return m_sigma; }
  const std::vector<double>& orders() const noexcept { return m_orders; }
  /// The RDP of one round at each order.
  const std::vector<double>& rdp_per_round() const noexcept { return m_rdp; }
  /// The RDP of the rounds so far at each order.
  std::vector<double> rdp() const {
    std::vector<double> out(m_rdp.size(), 0.0);
    if (m_rounds > 0)
      for (std::size_t k = 0; k < out.size(); ++k) out[k] = double(m_rounds) * m_rdp[k];
    return out;
  }

  /// Epsilon of the rounds so far at the given delta (and the optimal order).
  EpsilonSpent epsilon(double delta, Conversion conversion = Conversion::improved) const {
    return epsilon_after(m_rounds, delta, conversion);
  }
  /// Epsilon after `rounds` rounds in all (not counting from the current state).
  EpsilonSpent epsilon_after(std::int64_t rounds, double delta, Conversion conversion = Conversion::improved) const {
    detail::check_rounds(rounds, "RdpAccountant::epsilon_after");
    detail::check_delta(delta, "RdpAccountant::epsilon");
    return detail::best_epsilon(m_orders, m_rdp, double(rounds), delta, conversion);
  }
  /// Delta of the rounds so far at the given epsilon >= 0 (and the optimal order).
  DeltaSpent delta(double epsilon, Conversion conversion = Conversion::improved) const {
    FEDMOE_CHECK(epsilon >= 0, "RdpAccountant::delta: expected epsilon >= 0, got ", epsilon);
    return detail::best_delta(m_orders, m_rdp, double(m_rounds), epsilon, conversion);
  }

  /// The largest total number of rounds T <= max_rounds (counted from zero, like rounds()) whose
  /// epsilon at `delta` is within `epsilon_budget`. Epsilon grows with T, so a bisection finds it.
  std::int64_t rounds_within_budget(double epsilon_budget, double delta, Conversion conversion,
                                    std::int64_t max_rounds) const {
    constexpr const char* who = "RdpAccountant::rounds_within_budget";
    FEDMOE_CHECK(epsilon_budget >= 0, who, ": expected an epsilon budget >= 0, got ", epsilon_budget);
    detail::check_delta(delta, who);
    FEDMOE_CHECK(max_rounds >= 0, who, ": expected max_rounds >= 0, got ", max_rounds);
    auto fits = [&](std::int64_t t) {
      return detail::best_epsilon(m_orders, m_rdp, double(t), delta, conversion).epsilon <= epsilon_budget;
    };
    if (fits(max_rounds)) return max_rounds;
    std::int64_t lo = 0, hi = max_rounds;  // fits(lo) (zero rounds cost eps = 0), !fits(hi)
    while (hi - lo > 1) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      (fits(mid) ? lo : hi) = mid;
    }
    return lo;
  }

private:
  double m_q;
  double m_sigma;
  std::vector<double> m_orders;
  std::vector<double> m_rdp;
  std::int64_t m_rounds = 0;
};

/// Adaptive clipping (Andrew et al. 2021, Theorem 1): the noise multiplier z_delta of the update sum
/// when the noised unclipped count (noise std sigma_b, sensitivity 1/2) shares the budget of noise
/// multiplier z: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) > z. Needs 2 sigma_b > z (else the count
/// alone would spend more than the whole budget). Account the rounds with RdpAccountant(q, z).
inline double adaptive_clipping_sum_noise_multiplier(double z, double sigma_b) {
  constexpr const char* who = "adaptive_clipping_sum_noise_multiplier";
  FEDMOE_CHECK(std::isfinite(z) && z > 0, who, ": expected a finite total noise multiplier z > 0, got ", z);
  FEDMOE_CHECK(sigma_b > 0, who, ": expected a count noise std sigma_b > 0, got ", sigma_b);
  FEDMOE_CHECK(2 * sigma_b > z, who, ": expected 2 sigma_b > z (the count's share of the budget below the whole), got ",
               "2 sigma_b = ", 2 * sigma_b, " and z = ", z);
  const double ratio = z / (2 * sigma_b);  // in [0, 1): no overflow whatever the magnitudes
  return z / std::sqrt((1 - ratio) * (1 + ratio));
}

/// The inverse: the noise multiplier z of the combined release (sum with z_delta, count with sigma_b),
/// z = (z_delta^-2 + (2 sigma_b)^-2)^(-1/2), which the accountant accounts.
inline double adaptive_clipping_total_noise_multiplier(double z_delta, double sigma_b) {
  constexpr const char* who = "adaptive_clipping_total_noise_multiplier";
  FEDMOE_CHECK(std::isfinite(z_delta) && z_delta > 0, who, ": expected a finite sum noise multiplier z_delta > 0, got ",
               z_delta);
  FEDMOE_CHECK(sigma_b > 0, who, ": expected a count noise std sigma_b > 0, got ", sigma_b);
  const double ratio = z_delta / (2 * sigma_b);
  return z_delta / std::hypot(1.0, ratio);
}

}  // namespace fedmoe::privacy
