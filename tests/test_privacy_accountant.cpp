// The Rényi-DP accountant of the sampled Gaussian mechanism (federated/privacy/rdp_accountant.hpp):
// published values (Abadi et al. 2016, TF-Privacy's and Opacus' own tests), an independent quadrature
// of both Rényi divergences, closed forms, monotonicity, composition, the conversions, the stateful
// accountant, adaptive clipping's budget split and every input check.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <numbers>
#include <utility>
#include <vector>

#include <fedmoe/federated/privacy/rdp_accountant.hpp>

namespace fedmoe::privacy {  // not a using-directive: nothing leaks into the next file of a unity batch

using Catch::Matchers::Contains;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double not_a_number = std::numeric_limits<double>::quiet_NaN();

/// TF-Privacy's (and Opacus') long-standing default orders: 1.1, 1.2, ..., 10.9, then 12, ..., 63.
std::vector<double> tf_privacy_orders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1 + x / 10.0);
  for (int x = 12; x < 64; ++x) orders.push_back(x);
  return orders;
}

std::vector<double> integer_orders(int from, int to) {
  std::vector<double> orders;
  for (int a = from; a <= to; ++a) orders.push_back(a);
  return orders;
}

// ---- Independent reference: quadrature of the two Rényi divergences -------------------------------
//
// mu_0 = N(0, s^2), mu_1 = (1 - q) N(0, s^2) + q N(1, s^2), r(z) = mu_1/mu_0 - 1 = q expm1((2z - 1)/(2 s^2)).
//   exp((a-1) D_a(mu_1 || mu_0)) = E_mu0[(1 + r)^a],     exp((a-1) D_a(mu_0 || mu_1)) = E_mu0[(1 + r)^(1-a)].
// Since E_mu0[r] = 0, both are 1 + E_mu0[g_beta(r)] with g_beta(u) = (1 + u)^beta - 1 - beta u >= 0
// (convexity, beta = a or 1 - a): a positive integrand, no cancellation, and the divergence keeps its
// relative precision when small. Integrated in log space (no overflow at large orders).

/// log g_beta(u); -inf where it rounds to zero.
double log_convex_gap(double beta, double u) {
  if (std::fabs(u) < 1e-4) {  // sum_{k >= 2} C(beta, k) u^k: the direct form would cancel
    double term = beta * (beta - 1) / 2 * u * u, sum = term;
    for (int k = 3; k <= 8; ++k) {
      term *= (beta - k + 1) / k * u;
      sum += term;
    }
    return sum > 0 ? std::log(sum) : -inf;
  }
  const double l = beta * std::log1p(u);
  if (l > 40) return l + std::log1p(-(1 + beta * u) * std::exp(-l));  // (1 + u)^beta dominates
  const double g = std::expm1(l) - beta * u;
  return g > 0 ? std::log(g) : -inf;
}

/// log of the trapezoid rule for the integral of exp(log_f) over [lo, hi] with n intervals. For an
/// integrand analytic in a strip around the real line and negligible at both ends the error falls
/// like exp(-2 pi d / h) (Trefethen & Weideman 2014), d the strip's half-width (here pi s^2, where
/// 1 + r has its complex zeros): far below double precision at h = s / 100.
template <class F>
double log_trapezoid(F log_f, double lo, double hi, int n) {
  const double h = (hi - lo) / n;
  std::vector<double> v(std::size_t(n) + 1);
  for (int k = 0; k <= n; ++k) v[std::size_t(k)] = log_f(lo + k * h) + ((k == 0 || k == n) ? std::log(0.5) : 0.0);
  const double m = *std::max_element(v.begin(), v.end());
  if (m == -inf) return -inf;
  double sum = 0;
  for (double x : v) sum += std::exp(x - m);
  return m + std::log(sum) + std::log(h);
}

struct Divergences {
  double forward;   ///< D_a(mu_1 || mu_0), what the accountant computes
  double backward;  ///< D_a(mu_0 || mu_1)
};

/// Both divergences by quadrature on [-40 s, a + 40 s] (the integrands are Gaussian bumps around 0,
/// 1 and a of width s), with n intervals.
Divergences quadrature_divergences(double q, double s, double a, int n) {
  const double lo = -40 * s, hi = a + 40 * s;
  const double log_norm = -std::log(s * std::sqrt(2 * std::numbers::pi));
  auto r = [&](double z) { return q * std::expm1((2 * z - 1) / (2 * s * s)); };
  auto log_gap = [&](double beta) {
    return log_trapezoid([&](double z) { return log_norm - z * z / (2 * s * s) + log_convex_gap(beta, r(z)); }, lo, hi,
                         n);
  };
  auto divergence = [&](double log_gap_integral) {  // log(1 + e^x) / (a - 1)
    const double x = log_gap_integral;
    return (x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x))) / (a - 1);
  };
  return {divergence(log_gap(a)), divergence(log_gap(1 - a))};
}

double relative_error(double value, double reference) { return std::fabs(value - reference) / std::fabs(reference); }

}  // namespace

// ---- Published values ------------------------------------------------------------------------------

TEST_CASE("Abadi et al. 2016: q 0.01, sigma 4, 10000 steps, delta 1e-5 gives epsilon 1.26 (classic)",
          "[privacy][rdp][published]") {
  // The paper's moments accountant reports 1.26. TF-Privacy's compute_rdp + the classic conversion
  // on its default orders gives 1.2586, optimal order 20; fedmoe's grid (halves around 20) finds
  // order 19.5, slightly better. Tolerance: the two grids are +-2e-4 apart, the formula is exact, so
  // 1.2584 +- 1e-6 here and 1.2586 +- 1e-6 on TF-Privacy's orders; "1.26" itself to its two decimals.
  RdpAccountant acc(0.01, 4.0);
  acc.step(10000);
  const EpsilonSpent classic = acc.epsilon(1e-5, Conversion::classic);
  const EpsilonSpent improved = acc.epsilon(1e-5, Conversion::improved);
  WARN("Abadi et al. setting, default grid: classic eps = " << std::setprecision(12) << classic.epsilon << " at order "
                                                           << classic.order << ", improved eps = " << improved.epsilon
                                                           << " at order " << improved.order);
  CHECK(classic.epsilon == Approx(1.26).margin(0.005));
  CHECK(classic.epsilon == Approx(1.258424288593).margin(1e-6));
  CHECK(classic.order == 19.5);
  CHECK(improved.epsilon == Approx(1.035490066036).margin(1e-6));
  CHECK(improved.order == 17);

  const std::vector<double> orders = tf_privacy_orders();
  const std::vector<double> rdp = sampled_gaussian_rdp(0.01, 4.0, orders, 10000);
  const EpsilonSpent tf = epsilon_from_rdp(orders, rdp, 1e-5, Conversion::classic);
  WARN("Abadi et al. setting, TF-Privacy orders: classic eps = " << std::setprecision(12) << tf.epsilon << " at order "
                                                                << tf.order);
  CHECK(tf.epsilon == Approx(1.258574741253).margin(1e-6));
  CHECK(tf.order == 20);
}

TEST_CASE("TF-Privacy rdp_accountant_test: compute_rdp values", "[privacy][rdp][published]") {
  // test_compute_rdp_scalar: compute_rdp(q = 0.1, z = 2, steps = 10, order 5) = 0.07737 (5 places).
  CHECK(10 * sampled_gaussian_rdp(0.1, 2.0, 5.0) == Approx(0.07737).margin(5e-6));
  // test_compute_rdp_sequence: q = 0.01, z = 2.5, 50 steps, fractional and integer orders, delta 1e-5.
  const std::vector<double> orders{1.5, 2.5, 5, 50, 100, inf};
  const std::vector<double> expected{0.00065, 0.001085, 0.00218075, 0.023846, 167.416307, inf};
  const std::vector<double> rdp = sampled_gaussian_rdp(0.01, 2.5, orders, 50);
  for (std::size_t k = 0; k < orders.size(); ++k) {
    INFO("order " << orders[k] << ": " << std::setprecision(10) << rdp[k]);
    if (std::isinf(expected[k]))
      CHECK(rdp[k] == inf);
    else
      CHECK(rdp[k] == Approx(expected[k]).margin(1e-5));
  }
  // test_compute_rdp_no_data / no_sampling: q = 0 gives 0, q = 1 gives alpha / (2 sigma^2).
  CHECK(sampled_gaussian_rdp(0.0, 10.0, 20.0) == 0);
  CHECK(sampled_gaussian_rdp(1.0, 10.0, 20.0) == Approx(0.1).epsilon(1e-15));
}

TEST_CASE("TF-Privacy rdp_accountant_test: conversions and composition", "[privacy][rdp][published]") {
  // test_get_privacy_spent_check_target_delta: constant RDP 1.1 on orders 2..32, delta 1e-5 (the
  // improved conversion): eps = 1.32783806176 at the largest order.
  const std::vector<double> orders = integer_orders(2, 32);
  const std::vector<double> constant(orders.size(), 1.1);
  const EpsilonSpent e = epsilon_from_rdp(orders, constant, 1e-5, Conversion::improved);
  CHECK(e.epsilon == Approx(1.32783806176).margin(1e-10));
  CHECK(e.order == 32);
  // test_get_privacy_spent_check_target_eps: the inverse gives back delta 1e-5.
  const DeltaSpent d = delta_from_rdp(orders, constant, 1.32783806176, Conversion::improved);
  CHECK(d.delta == Approx(1e-5).epsilon(1e-8));
  CHECK(d.order == 32);

  // Its Gaussian check: q = 1, z = 4.530877117 is exactly (1, 1e-6)-DP; the improved conversion on
  // the fine orders 1.001 .. 99.999 gets eps = 1 to 7 places, and delta 1e-6 back at eps = 1.
  std::vector<double> fine;
  for (int k = 1001; k < 100000; ++k) fine.push_back(0.001 * k);
  const std::vector<double> gauss = sampled_gaussian_rdp(1.0, 4.530877117, fine);
  CHECK(epsilon_from_rdp(fine, gauss, 1e-6, Conversion::improved).epsilon == Approx(1.0).margin(1e-7));
  CHECK(delta_from_rdp(fine, gauss, 1.0, Conversion::improved).delta == Approx(1e-6).epsilon(1e-6));

  // test_check_composition: (q 1e-4, z 0.4, 40000 steps) then (q 0.1, z 2, 100 steps), delta 1e-5:
  // the classic conversion gave 8.509656 at order 2.5 (the test's former assertion); the improved
  // one must stay below it.
  const std::vector<double> grid{1.25, 1.5, 1.75, 2., 2.5, 3., 4., 5., 6., 7., 8.,
                                 10., 12., 14., 16., 20., 24., 28., 32., 64., 256.};
  std::vector<double> rdp = sampled_gaussian_rdp(1e-4, 0.4, grid, 40000);
  const std::vector<double> second = sampled_gaussian_rdp(0.1, 2.0, grid, 100);
  for (std::size_t k = 0; k < grid.size(); ++k) rdp[k] += second[k];
  const EpsilonSpent classic = epsilon_from_rdp(grid, rdp, 1e-5, Conversion::classic);
  const EpsilonSpent improved = epsilon_from_rdp(grid, rdp, 1e-5, Conversion::improved);
  CHECK(classic.epsilon == Approx(8.509656).margin(1e-6));
  CHECK(classic.order == 2.5);
  CHECK(improved.epsilon <= 8.509656);
}

TEST_CASE("Opacus accountants_test: q 0.04, sigma 1.5, 2250 steps, delta 1e-5 gives 7.32911117143",
          "[privacy][rdp][published]") {
  // test_rdp_accountant (Opacus' default orders = TF-Privacy's, the improved conversion, 7 places).
  const std::vector<double> orders = tf_privacy_orders();
  RdpAccountant acc(0.04, 1.5, orders);
  acc.step(2250);
  const EpsilonSpent e = acc.epsilon(1e-5, Conversion::improved);
  WARN("Opacus setting: improved eps = " << std::setprecision(12) << e.epsilon << " at order " << e.order);
  CHECK(e.epsilon == Approx(7.32911117143).margin(1e-7));
  // Opacus' docstring example: (q 1e-5, z 1, 10 steps) + (q 1e-4, z 3, 4 steps) on orders 2..32.
  const std::vector<double> o32 = integer_orders(2, 32);
  std::vector<double> rdp = sampled_gaussian_rdp(1e-5, 1.0, o32, 10);
  const std::vector<double> second = sampled_gaussian_rdp(1e-4, 3.0, o32, 4);
  for (std::size_t k = 0; k < o32.size(); ++k) rdp[k] += second[k];
  const EpsilonSpent doc = epsilon_from_rdp(o32, rdp, 1e-5, Conversion::improved);
  CHECK(doc.epsilon == Approx(0.336).margin(5e-4));
  CHECK(doc.order == 23);
}

// ---- Independent computation -------------------------------------------------------------------------

TEST_CASE("RDP matches quadrature of both Renyi divergences at integer and fractional orders",
          "[privacy][rdp][quadrature]") {
  struct Case {
    double q, sigma;
  };
  const Case cases[] = {{0.01, 4.0}, {0.1, 2.0}, {0.05, 1.0}, {0.2, 0.8}, {0.5, 1.5}, {0.001, 1.0}, {0.9, 3.0}};
  const double orders[] = {1.5, 2, 2.5, 3.7, 8, 20.25, 32};
  double worst = 0;
  for (const Case& c : cases) {
    for (double a : orders) {
      INFO("q = " << c.q << ", sigma = " << c.sigma << ", alpha = " << a);
      const int n = int(100 * (a + 80 * c.sigma) / c.sigma);  // h = sigma / 100
      const Divergences coarse = quadrature_divergences(c.q, c.sigma, a, n);
      const Divergences fine = quadrature_divergences(c.q, c.sigma, a, 2 * n);
      // The quadrature has converged: halving h changes nothing at double precision.
      REQUIRE(relative_error(coarse.forward, fine.forward) < 1e-12);
      REQUIRE(relative_error(coarse.backward, fine.backward) < 1e-12);
      const double rdp = sampled_gaussian_rdp(c.q, c.sigma, a);
      INFO(std::setprecision(15) << "series " << rdp << ", quadrature " << fine.forward << " (reverse "
                                 << fine.backward << ")");
      // The forward divergence dominates (Mironov et al.), so it is the mechanism's RDP.
      CHECK(fine.backward <= fine.forward);
      // Agreement to 1e-9 relative: the quadrature is exact to ~1e-14; the series' log A is exact
      // to ~1e-15 absolute, and the smallest RDP here is ~2e-6 (q = 0.001, alpha = 1.5).
      CHECK(relative_error(rdp, fine.forward) < 1e-9);
      worst = std::max(worst, relative_error(rdp, fine.forward));
    }
  }
  WARN("largest relative difference series vs quadrature: " << worst);
}

TEST_CASE("closed forms at orders 2 and 3 keep full precision for a tiny q", "[privacy][rdp]") {
  // A_2 = 1 + q^2 (e^(1/s^2) - 1); A_3 = 1 + 3 q^2 (1 - q) (e^(1/s^2) - 1) + q^3 (e^(3/s^2) - 1).
  for (double q : {1e-9, 1e-4, 0.3}) {
    for (double s : {0.7, 1.0, 5.0}) {
      INFO("q = " << q << ", sigma = " << s);
      const double a2 = std::log1p(q * q * std::expm1(1 / (s * s)));
      const double a3 =
          std::log1p(3 * q * q * (1 - q) * std::expm1(1 / (s * s)) + q * q * q * std::expm1(3 / (s * s))) / 2;
      CHECK(relative_error(sampled_gaussian_rdp(q, s, 2.0), a2) < 1e-13);
      CHECK(relative_error(sampled_gaussian_rdp(q, s, 3.0), a3) < 1e-13);
    }
  }
}

// ---- Special cases and monotonicity ------------------------------------------------------------------

TEST_CASE("q 1 is the plain Gaussian, q 0 is free, alpha infinity is infinite", "[privacy][rdp]") {
  for (double s : {0.3, 1.0, 4.0})
    for (double a : {1.25, 2.0, 7.5, 64.0, 512.0}) {
      INFO("sigma = " << s << ", alpha = " << a);
      CHECK(sampled_gaussian_rdp(1.0, s, a) == a / (2 * s * s));
      CHECK(sampled_gaussian_rdp(0.0, s, a) == 0);
      // Continuity: q just below 1 follows the series and reaches the Gaussian.
      CHECK(relative_error(sampled_gaussian_rdp(1 - 1e-10, s, a), a / (2 * s * s)) < 1e-6);
    }
  CHECK(sampled_gaussian_rdp(0.01, 1.0, inf) == inf);
  CHECK(sampled_gaussian_rdp(1.0, 1.0, inf) == inf);
  CHECK(sampled_gaussian_rdp(0.0, 1.0, inf) == 0);
}

TEST_CASE("RDP grows with q and alpha and falls with sigma", "[privacy][rdp]") {
  const std::vector<double> orders = default_orders();
  const double rates[] = {0, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1};
  const double sigmas[] = {0.5, 0.8, 1, 1.5, 2, 4, 10};
  for (double s : {0.8, 2.0}) {
    for (double a : {1.25, 2.0, 2.75, 6.5, 32.0}) {
      double previous = -1;
      for (double q : rates) {
        const double r = sampled_gaussian_rdp(q, s, a);
        INFO("sigma = " << s << ", alpha = " << a << ", q = " << q << ": " << r);
        CHECK(r > previous);
        previous = r;
      }
    }
  }
  for (double q : {0.01, 0.1, 0.6}) {
    for (double a : {1.5, 3.0, 10.5}) {
      double previous = inf;
      for (double s : sigmas) {
        const double r = sampled_gaussian_rdp(q, s, a);
        INFO("q = " << q << ", alpha = " << a << ", sigma = " << s << ": " << r);
        CHECK(r < previous);
        previous = r;
      }
    }
    for (double s : {0.7, 1.0, 3.0}) {
      const std::vector<double> rdp = sampled_gaussian_rdp(q, s, orders);
      for (std::size_t k = 1; k < orders.size(); ++k) {
        INFO("q = " << q << ", sigma = " << s << ", orders " << orders[k - 1] << " -> " << orders[k]);
        CHECK(rdp[k] > rdp[k - 1]);
      }
    }
  }
}

TEST_CASE("the default order grid", "[privacy][rdp]") {
  const std::vector<double> orders = default_orders();
  REQUIRE(orders.size() == 133);
  CHECK(orders.front() == 1.25);
  CHECK(orders[6] == 2.75);
  CHECK(orders[7] == 3);
  CHECK(orders[8] == 3.5);
  CHECK(orders[129] == 64);
  CHECK(orders.back() == 512);
  CHECK(std::is_sorted(orders.begin(), orders.end()));
  CHECK(std::adjacent_find(orders.begin(), orders.end()) == orders.end());
}

// ---- Conversions -----------------------------------------------------------------------------------

TEST_CASE("the conversions: formulas, improved below classic, delta inverse to epsilon", "[privacy][rdp]") {
  // One order by hand.
  CHECK(epsilon_at_order(3.0, 0.5, 1e-5, Conversion::classic) == Approx(0.5 + std::log(1e5) / 2).epsilon(1e-15));
  CHECK(epsilon_at_order(3.0, 0.5, 1e-5, Conversion::improved) ==
        Approx(0.5 + std::log(2.0 / 3) - (std::log(1e-5) + std::log(3.0)) / 2).epsilon(1e-15));
  // alpha = +inf: both give the pure-DP epsilon, rdp itself.
  CHECK(epsilon_at_order(inf, 0.7, 1e-5, Conversion::classic) == 0.7);
  CHECK(epsilon_at_order(inf, 0.7, 1e-5, Conversion::improved) == 0.7);
  // An infinite epsilon needs no delta; delta never exceeds 1.
  const std::vector<double> two{2.0, 3.0}, infinite{inf, inf}, large{50.0, 60.0};
  CHECK(delta_from_rdp(two, infinite, inf, Conversion::improved).delta == 0);
  CHECK(delta_from_rdp(two, large, 1.0, Conversion::classic).delta == 1);
  // No RDP, no epsilon (the total-variation bound), whatever the conversion.
  CHECK(epsilon_at_order(2.0, 0.0, 1e-5, Conversion::classic) == 0);
  CHECK(epsilon_at_order(2.0, 0.0, 1e-5, Conversion::improved) == 0);

  const std::vector<double> orders = default_orders();
  for (double q : {0.001, 0.01, 0.1, 1.0}) {
    for (double s : {0.7, 1.1, 4.0}) {
      const std::vector<double> rdp = sampled_gaussian_rdp(q, s, orders, 1000);
      for (double delta : {1e-3, 1e-5, 1e-9}) {
        INFO("q = " << q << ", sigma = " << s << ", delta = " << delta);
        const EpsilonSpent c = epsilon_from_rdp(orders, rdp, delta, Conversion::classic);
        const EpsilonSpent i = epsilon_from_rdp(orders, rdp, delta, Conversion::improved);
        CHECK(i.epsilon <= c.epsilon);
        for (std::size_t k = 0; k < orders.size(); ++k)
          CHECK(epsilon_at_order(orders[k], rdp[k], delta, Conversion::improved) <=
                epsilon_at_order(orders[k], rdp[k], delta, Conversion::classic));
        // The inverse at the optimal epsilon gives delta back, at the same order.
        for (auto [conversion, spent] : {std::pair{Conversion::classic, c}, std::pair{Conversion::improved, i}}) {
          const DeltaSpent d = delta_from_rdp(orders, rdp, spent.epsilon, conversion);
          CHECK(d.delta == Approx(delta).epsilon(1e-9));
          CHECK(d.order == spent.order);
        }
      }
    }
  }
}

// ---- Composition and the stateful accountant -------------------------------------------------------

TEST_CASE("composition is linear in the number of rounds", "[privacy][rdp][accountant]") {
  const std::vector<double> orders = default_orders();
  const std::vector<double> one = sampled_gaussian_rdp(0.02, 1.1, orders);
  const std::vector<double> many = sampled_gaussian_rdp(0.02, 1.1, orders, 750);
  for (std::size_t k = 0; k < orders.size(); ++k) CHECK(many[k] == 750 * one[k]);

  RdpAccountant acc(0.02, 1.1);
  CHECK(acc.rounds() == 0);
  CHECK(acc.epsilon(1e-5).epsilon == 0);  // nothing released yet
  CHECK(acc.epsilon(1e-5, Conversion::classic).epsilon == 0);
  acc.step();
  acc.step(249);
  acc.step(0);
  acc.step(500);
  CHECK(acc.rounds() == 750);
  CHECK(acc.rdp_per_round() == one);
  CHECK(acc.rdp() == many);
  CHECK(acc.sampling_rate() == 0.02);
  CHECK(acc.noise_multiplier() == 1.1);
  CHECK(acc.orders() == orders);
  for (Conversion c : {Conversion::classic, Conversion::improved}) {
    const EpsilonSpent direct = epsilon_from_rdp(orders, many, 1e-6, c);
    const EpsilonSpent stepped = acc.epsilon(1e-6, c);
    CHECK(stepped.epsilon == direct.epsilon);
    CHECK(stepped.order == direct.order);
    CHECK(acc.epsilon_after(750, 1e-6, c).epsilon == direct.epsilon);
    CHECK(acc.delta(direct.epsilon, c).delta == Approx(1e-6).epsilon(1e-9));
  }
  // Epsilon grows with the rounds, and the optimal order falls.
  double previous = 0, previous_order = inf;
  for (std::int64_t t : {1, 10, 100, 1000, 10000, 100000}) {
    const EpsilonSpent e = acc.epsilon_after(t, 1e-5);
    CHECK(e.epsilon > previous);
    CHECK(e.order <= previous_order);
    previous = e.epsilon;
    previous_order = e.order;
  }
  // An order of +inf in the grid: infinite RDP, never optimal, and free at zero rounds.
  RdpAccountant with_inf(0.02, 1.1, {2.0, 8.0, inf});
  CHECK(with_inf.epsilon(1e-5).epsilon == 0);
  with_inf.step(10);
  CHECK(with_inf.rdp().back() == inf);
  CHECK(with_inf.epsilon(1e-5).order != inf);
}

TEST_CASE("a training loop stops when the budget is spent, as rounds_within_budget predicts",
          "[privacy][rdp][accountant]") {
  RdpAccountant acc(0.05, 1.0);
  const double budget = 3.0, delta = 1e-5;
  for (Conversion c : {Conversion::classic, Conversion::improved}) {
    const std::int64_t planned = acc.rounds_within_budget(budget, delta, c, 1'000'000);
    INFO("planned rounds " << planned);
    REQUIRE(planned > 0);
    CHECK(acc.epsilon_after(planned, delta, c).epsilon <= budget);
    CHECK(acc.epsilon_after(planned + 1, delta, c).epsilon > budget);

    RdpAccountant loop(0.05, 1.0);
    std::vector<double> record;  // per-round epsilon, as a training loop would log it
    while (true) {
      loop.step();
      const double eps = loop.epsilon(delta, c).epsilon;
      if (eps > budget) break;
      record.push_back(eps);
    }
    CHECK(std::int64_t(record.size()) == planned);
    CHECK(std::is_sorted(record.begin(), record.end()));
  }
  // Caps and edges: max_rounds caps, a zero budget allows no round, zero max_rounds is zero.
  CHECK(acc.rounds_within_budget(1e6, delta, Conversion::improved, 1234) == 1234);
  CHECK(acc.rounds_within_budget(0.0, delta, Conversion::improved, 1000) == 0);
  CHECK(acc.rounds_within_budget(3.0, delta, Conversion::improved, 0) == 0);
  CHECK(acc.rounds_within_budget(inf, delta, Conversion::classic, 77) == 77);
  // The classic conversion is looser, so it allows fewer rounds.
  CHECK(acc.rounds_within_budget(budget, delta, Conversion::classic, 1'000'000) <
        acc.rounds_within_budget(budget, delta, Conversion::improved, 1'000'000));
}

// ---- Adaptive clipping -------------------------------------------------------------------------------

TEST_CASE("adaptive clipping: the sum's noise multiplier and its inverse", "[privacy][adaptive_clipping]") {
  // Andrew et al.'s typical setting: z = 1, m = 100 expected clients, sigma_b = m / 20 = 5.
  const double zd = adaptive_clipping_sum_noise_multiplier(1.0, 5.0);
  CHECK(zd == Approx(1 / std::sqrt(1 - 1 / 100.0)).epsilon(1e-15));
  CHECK(zd > 1.0);
  for (double z : {0.3, 1.0, 2.5})
    for (double sb : {2.0, 5.0, 50.0}) {
      INFO("z = " << z << ", sigma_b = " << sb);
      const double d = adaptive_clipping_sum_noise_multiplier(z, sb);
      CHECK(d == Approx(std::pow(std::pow(z, -2) - std::pow(2 * sb, -2), -0.5)).epsilon(1e-14));
      // The combined mechanism is what the accountant sees: noise multiplier z.
      CHECK(adaptive_clipping_total_noise_multiplier(d, sb) == Approx(z).epsilon(1e-14));
      CHECK(d > z);
    }
  // A huge count noise leaves (almost) the whole budget to the sum; no overflow at extreme scales.
  CHECK(adaptive_clipping_sum_noise_multiplier(1.2, 1e9) == Approx(1.2).epsilon(1e-15));
  CHECK(adaptive_clipping_sum_noise_multiplier(1.2, inf) == 1.2);
  CHECK(adaptive_clipping_sum_noise_multiplier(1e-200, 1.0) == Approx(1e-200).epsilon(1e-15));
  CHECK(adaptive_clipping_total_noise_multiplier(1e200, 1.0) == Approx(2.0).epsilon(1e-15));
  // 2 sigma_b <= z: the count alone would exceed the whole budget.
  REQUIRE_THROWS_AS(adaptive_clipping_sum_noise_multiplier(1.0, 0.5), fedmoe::Error);
  REQUIRE_THROWS_WITH(adaptive_clipping_sum_noise_multiplier(1.0, 0.5),
                      Contains("2 sigma_b > z") && Contains("2 sigma_b = 1") && Contains("z = 1"));
  REQUIRE_THROWS_WITH(adaptive_clipping_sum_noise_multiplier(3.0, 1.0), Contains("2 sigma_b = 2") && Contains("z = 3"));
  REQUIRE_THROWS_WITH(adaptive_clipping_sum_noise_multiplier(0.0, 1.0), Contains("z > 0") && Contains("got 0"));
  REQUIRE_THROWS_WITH(adaptive_clipping_sum_noise_multiplier(1.0, -2.0), Contains("sigma_b > 0") && Contains("got -2"));
  REQUIRE_THROWS_WITH(adaptive_clipping_sum_noise_multiplier(not_a_number, 1.0), Contains("z > 0") && Contains("nan"));
  REQUIRE_THROWS_WITH(adaptive_clipping_total_noise_multiplier(-1.0, 1.0), Contains("z_delta > 0"));
  REQUIRE_THROWS_WITH(adaptive_clipping_total_noise_multiplier(1.0, 0.0), Contains("sigma_b > 0"));
}

// ---- Input validation --------------------------------------------------------------------------------

TEST_CASE("every invalid input is refused with a message naming it", "[privacy][rdp][errors]") {
  const std::vector<double> orders{2.0, 3.0};
  const std::vector<double> rdp{0.1, 0.2};
  // q outside [0, 1].
  REQUIRE_THROWS_AS(sampled_gaussian_rdp(1.5, 1.0, 2.0), fedmoe::Error);
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(1.5, 1.0, 2.0), Contains("q in [0, 1]") && Contains("got 1.5"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(-0.1, 1.0, 2.0), Contains("q in [0, 1]") && Contains("got -0.1"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(not_a_number, 1.0, 2.0), Contains("q in [0, 1]") && Contains("nan"));
  REQUIRE_THROWS_WITH(RdpAccountant(2.0, 1.0), Contains("q in [0, 1]") && Contains("got 2"));
  // sigma <= 0, NaN or infinite.
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 0.0, 2.0), Contains("sigma > 0") && Contains("got 0"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, -1.0, 2.0), Contains("sigma > 0") && Contains("got -1"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, not_a_number, 2.0), Contains("sigma > 0") && Contains("nan"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, inf, 2.0), Contains("finite noise multiplier") && Contains("inf"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 0.0, orders), Contains("sigma > 0"));
  REQUIRE_THROWS_WITH(RdpAccountant(0.1, -3.0), Contains("sigma > 0") && Contains("got -3"));
  // alpha <= 1, NaN or beyond the largest finite order.
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, 1.0), Contains("alpha in (1, ") && Contains("got 1"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, 0.5), Contains("alpha in (1, ") && Contains("got 0.5"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, not_a_number), Contains("alpha in (1, ") && Contains("nan"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, 2e6), Contains("alpha in (1, 1e+06]") && Contains("got 2e+06"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.0, 1.0, 1.0), Contains("alpha in (1, "));  // even where q = 0
  REQUIRE_THROWS_WITH(RdpAccountant(0.1, 1.0, {2.0, 0.9}), Contains("alpha in (1, ") && Contains("got 0.9"));
  REQUIRE_THROWS_WITH(epsilon_at_order(1.0, 0.1, 1e-5, Conversion::classic), Contains("alpha in (1, "));
  // Empty orders.
  REQUIRE_THROWS_WITH(RdpAccountant(0.1, 1.0, {}), Contains("at least one order") && Contains("empty"));
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, std::vector<double>{}), Contains("at least one order"));
  REQUIRE_THROWS_WITH(epsilon_from_rdp({}, {}, 1e-5, Conversion::improved), Contains("at least one order"));
  // Negative rounds.
  REQUIRE_THROWS_WITH(sampled_gaussian_rdp(0.1, 1.0, orders, -1), Contains("rounds >= 0") && Contains("got -1"));
  RdpAccountant acc(0.1, 1.0, orders);
  REQUIRE_THROWS_AS(acc.step(-5), fedmoe::Error);
  REQUIRE_THROWS_WITH(acc.step(-5), Contains("RdpAccountant::step") && Contains("rounds >= 0") && Contains("got -5"));
  CHECK(acc.rounds() == 0);  // a refused step changes nothing
  REQUIRE_THROWS_WITH(acc.epsilon_after(-2, 1e-5), Contains("rounds >= 0") && Contains("got -2"));
  acc.step(std::numeric_limits<std::int64_t>::max());
  REQUIRE_THROWS_WITH(acc.step(1), Contains("would overflow"));
  // delta outside (0, 1).
  RdpAccountant fresh(0.1, 1.0, orders);
  for (double delta : {0.0, 1.0, -1e-5, 1.5, not_a_number}) {
    INFO("delta = " << delta);
    REQUIRE_THROWS_AS(fresh.epsilon(delta), fedmoe::Error);
    REQUIRE_THROWS_WITH(fresh.epsilon(delta), Contains("delta in (0, 1)"));
    REQUIRE_THROWS_WITH(epsilon_from_rdp(orders, rdp, delta, Conversion::classic), Contains("delta in (0, 1)"));
    REQUIRE_THROWS_WITH(epsilon_at_order(2.0, 0.1, delta, Conversion::improved), Contains("delta in (0, 1)"));
    REQUIRE_THROWS_WITH(fresh.rounds_within_budget(1.0, delta, Conversion::improved, 10), Contains("delta in (0, 1)"));
  }
  REQUIRE_THROWS_WITH(fresh.epsilon(0.0), Contains("got 0"));
  REQUIRE_THROWS_WITH(fresh.epsilon(1.5), Contains("got 1.5"));
  // Epsilon, budget, max_rounds and RDP vectors.
  REQUIRE_THROWS_WITH(fresh.delta(-1.0), Contains("epsilon >= 0") && Contains("got -1"));
  REQUIRE_THROWS_WITH(delta_from_rdp(orders, rdp, not_a_number, Conversion::classic),
                      Contains("epsilon >= 0") && Contains("nan"));
  REQUIRE_THROWS_WITH(fresh.rounds_within_budget(-1.0, 1e-5, Conversion::classic, 10),
                      Contains("budget >= 0") && Contains("got -1"));
  REQUIRE_THROWS_WITH(fresh.rounds_within_budget(1.0, 1e-5, Conversion::classic, -3),
                      Contains("max_rounds >= 0") && Contains("got -3"));
  REQUIRE_THROWS_WITH(epsilon_from_rdp(orders, std::vector<double>{0.1}, 1e-5, Conversion::classic),
                      Contains("one RDP value per order (2 orders)") && Contains("got 1 values"));
  REQUIRE_THROWS_WITH(epsilon_from_rdp(orders, std::vector<double>{0.1, -0.2}, 1e-5, Conversion::classic),
                      Contains("RDP values >= 0") && Contains("got -0.2 at order 3"));
  REQUIRE_THROWS_WITH(epsilon_from_rdp(orders, std::vector<double>{0.1, not_a_number}, 1e-5, Conversion::classic),
                      Contains("RDP values >= 0"));
  REQUIRE_THROWS_WITH(epsilon_at_order(2.0, -0.1, 1e-5, Conversion::classic), Contains("RDP value >= 0"));
}

}  // namespace fedmoe::privacy
