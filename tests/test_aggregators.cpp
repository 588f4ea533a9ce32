// The robust aggregators (federated/aggregators/): each against a plain reference written here (sort per
// coordinate, brute-force Krum scores with explicit loops, ...), known answers on hand-made inputs (ties,
// even counts), breakdown properties with huge outliers, the rejection of hostile updates while the
// round proceeds, the ok = false cases, the feasibility checks, and the fast order-statistics kernel
// bitwise against the reference where the arithmetic is the same.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregators/any_aggregator.hpp>  // every rule below, by name
#include <fedmoe/federated/aggregators/bulyan.hpp>
#include <fedmoe/federated/aggregators/common.hpp>
#include <fedmoe/federated/aggregators/geometric_median.hpp>
#include <fedmoe/federated/aggregators/krum.hpp>
#include <fedmoe/federated/aggregators/median.hpp>
#include <fedmoe/federated/aggregators/norm_bound.hpp>
#include <fedmoe/federated/aggregators/order_statistics.hpp>
#include <fedmoe/federated/aggregators/pairwise_distances.hpp>
#include <fedmoe/federated/aggregators/trimmed_mean.hpp>
#include <fedmoe/fedmoe.hpp>

using namespace fedmoe;

namespace {

template <class S>
std::span<const ClientUpdate<S>> all(const std::vector<ClientUpdate<S>>& v) {
  return std::span<const ClientUpdate<S>>(v);
}

/// n updates of p values uniform in [lo, hi); integer-valued when `integers` (many ties, exact sums).
template <class S>
std::vector<ClientUpdate<S>> random_updates(std::size_t n, Index p, Rng& rng, double lo = -1, double hi = 1,
                                            bool integers = false) {
  std::vector<ClientUpdate<S>> updates(n);
  for (std::size_t k = 0; k < n; ++k) {
    updates[k].client = std::int64_t(100 + k);
    updates[k].num_samples = 1 + Index(rng.uniform_int(50));
    updates[k].delta.resize(p);
    for (Index i = 0; i < p; ++i) {
      const double x = rng.uniform<double>(lo, hi);
      updates[k].delta[i] = S(integers ? std::floor(x) : x);
    }
  }
  return updates;
}

template <class S>
ClientUpdate<S> update_of(std::int64_t client, std::vector<double> values, Index samples = 1) {
  ClientUpdate<S> u;
  u.client = client;
  u.num_samples = samples;
  u.delta.resize(Index(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) u.delta[Index(i)] = S(values[i]);
  return u;
}

template <class S>
std::vector<S> sorted_column(const std::vector<ClientUpdate<S>>& updates, Index j) {
  std::vector<S> c;
  for (const auto& u : updates) c.push_back(u.delta[j]);
  std::sort(c.begin(), c.end());
  return c;
}

template <class S>
S ref_median_of(const std::vector<S>& s) {
  const std::size_t n = s.size();
  return n % 2 == 1 ? s[n / 2] : S(0.5) * s[n / 2 - 1] + S(0.5) * s[n / 2];
}

template <class S>
Vector<S> ref_median(const std::vector<ClientUpdate<S>>& updates) {
  const Index p = updates.front().delta.size();
  Vector<S> out(p);
  for (Index j = 0; j < p; ++j) out[j] = ref_median_of(sorted_column(updates, j));
  return out;
}

/// The trimmed mean with the kept values summed in ascending order.
template <class S>
Vector<S> ref_trimmed(const std::vector<ClientUpdate<S>>& updates, double beta) {
  const Index p = updates.front().delta.size(), n = Index(updates.size());
  const Index k = Index(std::floor(beta * double(n)));
  Vector<S> out(p);
  for (Index j = 0; j < p; ++j) {
    const auto s = sorted_column(updates, j);
    S sum = s[std::size_t(k)];
    for (Index t = k + 1; t < n - k; ++t) sum += s[std::size_t(t)];
    out[j] = sum / S(n - 2 * k);
  }
  return out;
}

/// Squared distance with an explicit loop, in double.
template <class S>
double ref_dist2(const ClientUpdate<S>& a, const ClientUpdate<S>& b) {
  double d = 0;
  for (Index i = 0; i < a.delta.size(); ++i) {
    const double x = double(a.delta[i]) - double(b.delta[i]);
    d += x * x;
  }
  return d;
}

/// Krum scores of the updates at positions `active` with f, brute force (explicit distance loops).
template <class S>
std::vector<double> ref_krum_scores(const std::vector<ClientUpdate<S>>& updates, const std::vector<std::size_t>& active,
                                    Index f) {
  std::vector<double> scores;
  const Index n = Index(active.size());
  const Index q = std::min<Index>(n - 1, std::max<Index>(1, n - f - 2));  // at least one neighbour (see krum.hpp)
  for (std::size_t a : active) {
    std::vector<double> d;
    for (std::size_t b : active)
      if (b != a) d.push_back(ref_dist2(updates[a], updates[b]));
    std::sort(d.begin(), d.end());
    double s = 0;
    for (Index t = 0; t < q; ++t) s += d[std::size_t(t)];
    scores.push_back(s);
  }
  return scores;
}

std::size_t argmin_first(const std::vector<double>& v) {
  return std::size_t(std::min_element(v.begin(), v.end()) - v.begin());
}

/// Bulyan: repeated brute-force Krum, then per coordinate the beta values closest to the median, taken in
/// the order (|x - med|, x), summed in ascending order.
template <class S>
Vector<S> ref_bulyan(const std::vector<ClientUpdate<S>>& updates, Index f, std::vector<std::size_t>* chosen_out = nullptr) {
  const Index n = Index(updates.size()), theta = n - 2 * f, beta = theta - 2 * f;
  std::vector<std::size_t> remaining(updates.size()), chosen;
  std::iota(remaining.begin(), remaining.end(), std::size_t(0));
  while (Index(chosen.size()) < theta) {
    const std::size_t best = argmin_first(ref_krum_scores(updates, remaining, f));
    chosen.push_back(remaining[best]);
    remaining.erase(remaining.begin() + std::ptrdiff_t(best));
  }
  std::sort(chosen.begin(), chosen.end());
  if (chosen_out) *chosen_out = chosen;
  const Index p = updates.front().delta.size();
  Vector<S> out(p);
  for (Index j = 0; j < p; ++j) {
    std::vector<S> s;
    for (std::size_t k : chosen) s.push_back(updates[k].delta[j]);
    std::sort(s.begin(), s.end());
    const S med = ref_median_of(s);
    std::vector<S> by_closeness = s;
    std::stable_sort(by_closeness.begin(), by_closeness.end(), [med](S a, S b) {
      const S da = std::abs(a - med), db = std::abs(b - med);
      return da < db || (da == db && a < b);
    });
    by_closeness.resize(std::size_t(beta));
    std::sort(by_closeness.begin(), by_closeness.end());
    S sum = by_closeness[0];
    for (std::size_t t = 1; t < by_closeness.size(); ++t) sum += by_closeness[t];
    out[j] = sum / S(beta);
  }
  return out;
}

template <class S>
double objective(const std::vector<ClientUpdate<S>>& updates, const Vector<S>& z) {
  double total = 0, g = 0;
  for (const auto& u : updates) total += double(u.num_samples);
  for (const auto& u : updates) g += double(u.num_samples) / total * (u.delta.template cast<double>() - z.template cast<double>()).norm();
  return g;
}

std::vector<AggregatorSpec> every_spec() {
  std::vector<AggregatorSpec> specs;
  for (const char* name : {"mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geometric-median"}) {
    AggregatorSpec s;
    s.name = name;
    s.byzantine_bound = 1;
    s.trim_fraction = 0.2;
    specs.push_back(s);
  }
  AggregatorSpec clipped;
  clipped.name = "median";
  clipped.clip_update_norm = 3;
  specs.push_back(clipped);
  return specs;
}

/// The clients in a report's rejected list, in order.
std::vector<std::int64_t> rejected_clients(const AggregationReport& r) {
  std::vector<std::int64_t> c;
  for (const auto& x : r.rejected) c.push_back(x.client);
  return c;
}

}  // namespace

static_assert(Aggregator<CoordinateMedian, float> && Aggregator<CoordinateMedian, double>);
static_assert(Aggregator<TrimmedMean, float> && Aggregator<TrimmedMean, double>);
static_assert(Aggregator<Krum, float> && Aggregator<MultiKrum, double>);
static_assert(Aggregator<Bulyan, float> && Aggregator<GeometricMedian, double>);
static_assert(Aggregator<NormBounded<WeightedMean>, float> && Aggregator<NormBounded<Krum>, double>);
static_assert(Aggregator<AnyAggregator, float> && Aggregator<AnyAggregator, double>);

// ---------------------------------------------------------------------------------------------------
// The order-statistics kernel

TEMPLATE_TEST_CASE("The sorting network sorts every coordinate exactly for n = 1 .. 70 (padding resolved)",
                   "[federated][aggregators][order-statistics]", float, double) {
  using S = TestType;
  Rng rng(3);
  const Index lanes = detail::order_statistics_lanes<S>;
  const Index p = 2 * lanes + 3;  // two full blocks and a short one
  for (std::size_t n = 1; n <= 70; ++n) {
    const auto updates = random_updates<S>(n, p, rng, -4, 4, n % 3 == 0);  // every third: heavy ties
    std::vector<const S*> rows;
    for (const auto& u : updates) rows.push_back(u.delta.data());
    const detail::SortingNetwork net(std::vector<detail::Need>(n, detail::Need::exact));
    Index mismatches = 0, blocks = 0;
    const auto bad = detail::sort_coordinates<S>(rows, p, net, [&](const detail::SortedBlock<S>& b) {
      ++blocks;
      for (Index j = 0; j < b.len; ++j) {
        const auto s = sorted_column(updates, b.start + j);
        for (Index r = 0; r < Index(n); ++r)
          if (b.row(r)[j] != s[std::size_t(r)]) ++mismatches;
      }
    });
    INFO(n << " rows");
    CHECK(bad == -1);
    CHECK(blocks == 3);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("The pruned networks are smaller than the full sort", "[federated][aggregators][order-statistics]") {
  const auto count = [](Index n, auto need_of) {
    std::vector<detail::Need> needs(static_cast<std::size_t>(n));
    for (Index p = 0; p < n; ++p) needs[std::size_t(p)] = need_of(p);
    return detail::SortingNetwork(needs).ops().size();
  };
  const auto full = count(100, [](Index) { return detail::Need::exact; });
  const auto median = count(100, [](Index p) { return p == 49 || p == 50 ? detail::Need::exact : detail::Need::none; });
  CHECK(median < full);
  CHECK(count(1, [](Index) { return detail::Need::exact; }) == 0);
  // Only a sum of everything: no comparator at all.
  CHECK(count(37, [](Index) { return detail::Need::sum; }) == 0);
}

TEMPLATE_TEST_CASE("The kernel reports the first block holding NaN or inf", "[federated][aggregators][order-statistics]",
                   float, double) {
  using S = TestType;
  Rng rng(5);
  const Index lanes = detail::order_statistics_lanes<S>;
  for (S bad : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(), -std::numeric_limits<S>::infinity()}) {
    auto updates = random_updates<S>(7, 3 * lanes + 1, rng);
    updates[4].delta[2 * lanes + 5] = bad;
    std::vector<const S*> rows;
    for (const auto& u : updates) rows.push_back(u.delta.data());
    const detail::SortingNetwork net(std::vector<detail::Need>(7, detail::Need::exact));
    Index reduced = 0;
    const auto at = detail::sort_coordinates<S>(rows, 3 * lanes + 1, net, [&](const detail::SortedBlock<S>&) { ++reduced; });
    CHECK(at == 2 * lanes);
    CHECK(reduced == 2);
  }
}

// ---------------------------------------------------------------------------------------------------
// CoordinateMedian

TEMPLATE_TEST_CASE("CoordinateMedian: known answers, odd and even counts, ties", "[federated][aggregators][median]",
                   float, double) {
  using S = TestType;
  std::vector<ClientUpdate<S>> odd{update_of<S>(1, {1, 5, 3, -2}), update_of<S>(2, {2, 2, 2, -2}),
                                   update_of<S>(3, {9, -1, 3, 7})};
  Vector<S> out = Vector<S>::Zero(4);
  AggregationReport r = CoordinateMedian{}.aggregate(all(odd), out);
  CHECK(r.ok);
  CHECK(r.used == 3);
  CHECK(r.discarded.empty());
  CHECK(out == (Vector<S>(4) << 2, 2, 3, -2).finished());
  // Even: the mean of the two middle values.
  odd.push_back(update_of<S>(4, {4, 0, 10, -2}));
  r = CoordinateMedian{}.aggregate(all(odd), out);
  CHECK(r.ok);
  CHECK(out == (Vector<S>(4) << 3, 1, 3, -2).finished());
}

TEMPLATE_TEST_CASE("CoordinateMedian equals the sort-per-coordinate reference bitwise", "[federated][aggregators][median]",
                   float, double) {
  using S = TestType;
  Rng rng(7);
  const Index p = 3 * detail::order_statistics_lanes<S> + 11;
  for (std::size_t n : {1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 33, 64, 100, 101, 129}) {
    for (bool ties : {false, true}) {
      const auto updates = random_updates<S>(n, p, rng, -3, 3, ties);
      Vector<S> out = Vector<S>::Zero(p);
      const AggregationReport r = CoordinateMedian{}.aggregate(all(updates), out);
      INFO(n << " updates, ties " << ties);
      REQUIRE(r.ok);
      CHECK(r.used == Index(n));
      CHECK(out == ref_median(updates));
    }
  }
}

TEMPLATE_TEST_CASE("CoordinateMedian stays within the honest range with fewer than half outliers",
                   "[federated][aggregators][median][breakdown]", float, double) {
  using S = TestType;
  Rng rng(11);
  const Index p = 300;
  for (std::size_t n : {5, 10, 21, 100}) {
    const std::size_t f = (n - 1) / 2;
    auto updates = random_updates<S>(n, p, rng, -1, 1);
    for (std::size_t k = 0; k < f; ++k)  // arbitrary: huge, either sign, different per coordinate
      for (Index i = 0; i < p; ++i) updates[2 * k % n].delta[i] = S((i + k) % 2 ? 1e30 : -1e30);
    std::vector<char> byz(n, 0);
    for (std::size_t k = 0; k < f; ++k) byz[2 * k % n] = 1;
    Vector<S> out = Vector<S>::Zero(p);
    REQUIRE(CoordinateMedian{}.aggregate(all(updates), out).ok);
    Index outside = 0;
    for (Index i = 0; i < p; ++i) {
      S lo = std::numeric_limits<S>::infinity(), hi = -lo;
      for (std::size_t k = 0; k < n; ++k)
        if (!byz[k]) lo = std::min(lo, updates[k].delta[i]), hi = std::max(hi, updates[k].delta[i]);
      if (out[i] < lo || out[i] > hi) ++outside;
    }
    INFO(n << " updates, " << f << " outliers");
    CHECK(outside == 0);
  }
}

// ---------------------------------------------------------------------------------------------------
// TrimmedMean

TEMPLATE_TEST_CASE("TrimmedMean: known answer and the reference", "[federated][aggregators][trimmed-mean]", float, double) {
  using S = TestType;
  // beta = 0.2 of 5: drop one at each end.
  std::vector<ClientUpdate<S>> five{update_of<S>(1, {1, 100}), update_of<S>(2, {2, -100}), update_of<S>(3, {3, 1}),
                                    update_of<S>(4, {4, 2}), update_of<S>(5, {50, 3})};
  Vector<S> out = Vector<S>::Zero(2);
  const AggregationReport r = TrimmedMean(0.2).aggregate(all(five), out);
  CHECK(r.ok);
  CHECK(r.used == 5);
  CHECK(r.discarded.empty());
  CHECK(out == (Vector<S>(2) << 3, 2).finished());
  // beta = 0: the plain mean.
  REQUIRE(TrimmedMean(0.0).aggregate(all(five), out).ok);
  CHECK(out[0] == Approx(12.0));

  Rng rng(13);
  const Index p = 2 * detail::order_statistics_lanes<S> + 9;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
  for (std::size_t n : {1, 2, 3, 7, 10, 20, 33, 100}) {
    for (double beta : {0.0, 0.1, 0.25, 0.49}) {
      INFO(n << " updates, beta " << beta);
      // Integer values: every summation order gives the same sum, so bitwise equality.
      auto ints = random_updates<S>(n, p, rng, -50, 50, true);
      REQUIRE(TrimmedMean(beta).aggregate(all(ints), (out = Vector<S>::Zero(p))).ok);
      CHECK(out == ref_trimmed(ints, beta));
      // Real values: equal to the ascending-order sum up to the rounding of the sum.
      auto reals = random_updates<S>(n, p, rng, -1, 1);
      REQUIRE(TrimmedMean(beta).aggregate(all(reals), (out = Vector<S>::Zero(p))).ok);
      const Vector<S> ref = ref_trimmed(reals, beta);
      CHECK((out - ref).cwiseAbs().maxCoeff() <= S(tol));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Pairwise distances, Krum, Multi-Krum

TEMPLATE_TEST_CASE("Gram-matrix distances match explicit loops, symmetric, zero diagonal, never negative",
                   "[federated][aggregators][krum]", float, double) {
  using S = TestType;
  Rng rng(17);
  for (std::size_t n : {1, 3, 12}) {
    const Index p = detail::gram_block<S>(Index(n)) * 2 + 13;  // several blocks
    auto updates = random_updates<S>(n, p, rng);
    if (n > 2) updates[2].delta = updates[1].delta;  // identical pair: cancellation, clamped at 0
    std::vector<const S*> rows;
    for (const auto& u : updates) rows.push_back(u.delta.data());
    const auto pd = detail::pairwise_squared_distances<S>(rows, p);
    CHECK(pd.non_finite.empty());
    const double rel = std::is_same_v<S, float> ? 1e-4 : 1e-10;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        const double d = pd.squared(Index(i), Index(j));
        CHECK(d >= 0);
        CHECK(d == pd.squared(Index(j), Index(i)));
        if (i == j) CHECK(d == 0);
        else CHECK(std::abs(d - ref_dist2(updates[i], updates[j])) <= rel * double(p));
      }
  }
}

TEMPLATE_TEST_CASE("Krum and Multi-Krum: known answers with ties to the lower index", "[federated][aggregators][krum]",
                   float, double) {
  using S = TestType;
  // 1-D: 0, 1, 2, 3, 100, f = 1, q = n - f - 2 = 2 neighbours. Scores: 5, 2, 2, 5, 97^2 + 98^2.
  std::vector<ClientUpdate<S>> u{update_of<S>(10, {0}), update_of<S>(11, {1}), update_of<S>(12, {2}),
                                 update_of<S>(13, {3}), update_of<S>(14, {100})};
  Vector<S> out = Vector<S>::Zero(1);
  AggregationReport r = Krum(1).aggregate(all(u), out);
  CHECK(r.ok);
  CHECK(r.used == 1);
  CHECK(out[0] == S(1));  // tie between 1 and 2: the earlier
  CHECK(r.discarded == std::vector<std::int64_t>{10, 12, 13, 14});
  // m = 3: clients 11, 12 and (tie 5 vs 5) 10.
  r = MultiKrum(1, 3).aggregate(all(u), out);
  CHECK(r.ok);
  CHECK(r.used == 3);
  CHECK(out[0] == S(1));
  CHECK(r.discarded == std::vector<std::int64_t>{13, 14});
  // m = 0: n - f = 4, the outlier alone discarded; the unweighted mean (sample counts ignored).
  u[0].num_samples = 1000;
  r = MultiKrum(1).aggregate(all(u), out);
  CHECK(r.ok);
  CHECK(r.used == 4);
  CHECK(out[0] == Approx(1.5));
  CHECK(r.discarded == std::vector<std::int64_t>{14});
}

TEMPLATE_TEST_CASE("Krum picks the update the brute-force scores pick, and an honest one against f huge outliers",
                   "[federated][aggregators][krum][breakdown]", float, double) {
  using S = TestType;
  Rng rng(19);
  const Index p = 500;
  for (Index f : {0, 1, 2, 4}) {
    const std::size_t n = std::size_t(2 * f + 3 + f);
    auto updates = random_updates<S>(n, p, rng, -1, 1);
    // Reference choice on the clean data.
    std::vector<std::size_t> idx(n);
    std::iota(idx.begin(), idx.end(), std::size_t(0));
    Vector<S> out = Vector<S>::Zero(p);
    AggregationReport r = Krum(f).aggregate(all(updates), out);
    REQUIRE(r.ok);
    CHECK(out == updates[argmin_first(ref_krum_scores(updates, idx, f))].delta);
    // f Byzantine updates far away (in different directions).
    for (Index k = 0; k < f; ++k) updates[std::size_t(3 * k) % n].delta.setConstant(S(1e6 * (k % 2 ? 1 : -1)));
    std::vector<std::int64_t> byz;
    for (Index k = 0; k < f; ++k) byz.push_back(updates[std::size_t(3 * k) % n].client);
    r = Krum(f).aggregate(all(updates), out);
    REQUIRE(r.ok);
    bool honest = false;
    for (const auto& u : updates)
      if (std::find(byz.begin(), byz.end(), u.client) == byz.end() && out == u.delta) honest = true;
    INFO("f = " << f);
    CHECK(honest);
    for (auto c : byz) CHECK(std::find(r.discarded.begin(), r.discarded.end(), c) != r.discarded.end());
    CHECK(Index(r.discarded.size()) == Index(n) - 1);
    // Multi-Krum (m = n - f) averages the honest ones only: equal to their unweighted mean.
    r = MultiKrum(f).aggregate(all(updates), out);
    REQUIRE(r.ok);
    Vector<double> mean = Vector<double>::Zero(p);
    for (const auto& u : updates)
      if (std::find(byz.begin(), byz.end(), u.client) == byz.end()) mean += u.delta.template cast<double>();
    mean /= double(Index(n) - f);
    CHECK((out.template cast<double>() - mean).cwiseAbs().maxCoeff() < 1e-5);
  }
}

// ---------------------------------------------------------------------------------------------------
// Bulyan

TEMPLATE_TEST_CASE("Bulyan equals the brute-force reference bitwise and resists f huge outliers",
                   "[federated][aggregators][bulyan][breakdown]", float, double) {
  using S = TestType;
  Rng rng(23);
  const Index p = 2 * detail::order_statistics_lanes<S> + 7;
  for (Index f : {0, 1, 2}) {
    for (std::size_t n : {std::size_t(4 * f + 3), std::size_t(4 * f + 6)}) {
      INFO("f = " << f << ", n = " << n);
      for (bool ties : {false, true}) {
        const auto updates = random_updates<S>(n, p, rng, -5, 5, ties);
        std::vector<std::size_t> chosen;
        const Vector<S> expected = ref_bulyan(updates, f, &chosen);
        Vector<S> out = Vector<S>::Zero(p);
        const AggregationReport r = Bulyan(f).aggregate(all(updates), out);
        REQUIRE(r.ok);
        CHECK(r.used == Index(n) - 2 * f);
        CHECK(Index(r.discarded.size()) == 2 * f);
        if (!ties) CHECK(out == expected);  // with ties Krum's choice may differ among equal scores
      }
      // f huge outliers: the result stays within the honest values' range per coordinate.
      auto updates = random_updates<S>(n, p, rng, -1, 1);
      std::vector<char> byz(n, 0);
      for (Index k = 0; k < f; ++k) {
        byz[std::size_t(2 * k + 1)] = 1;
        updates[std::size_t(2 * k + 1)].delta.setConstant(S(k % 2 ? 1e8 : -1e8));
      }
      Vector<S> out = Vector<S>::Zero(p);
      const AggregationReport r = Bulyan(f).aggregate(all(updates), out);
      REQUIRE(r.ok);
      Index outside = 0;
      for (Index i = 0; i < p; ++i) {
        S lo = std::numeric_limits<S>::infinity(), hi = -lo;
        for (std::size_t k = 0; k < n; ++k)
          if (!byz[k]) lo = std::min(lo, updates[k].delta[i]), hi = std::max(hi, updates[k].delta[i]);
        if (out[i] < lo || out[i] > hi) ++outside;
      }
      CHECK(outside == 0);
      for (Index k = 0; k < f; ++k)
        CHECK(std::find(r.discarded.begin(), r.discarded.end(), updates[std::size_t(2 * k + 1)].client) != r.discarded.end());
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// GeometricMedian

TEMPLATE_TEST_CASE("GeometricMedian: known answer, the optimum of the objective, robustness",
                   "[federated][aggregators][geometric-median]", float, double) {
  using S = TestType;
  // On a line with equal weights the geometric median is the median: 0, 1, 100 -> 1.
  std::vector<ClientUpdate<S>> line{update_of<S>(1, {0, 0}), update_of<S>(2, {1, 2}), update_of<S>(3, {100, 200})};
  Vector<S> out = Vector<S>::Zero(2);
  AggregationReport r = GeometricMedian(1000, 1e-12).aggregate(all(line), out);
  REQUIRE(r.ok);
  CHECK(r.used == 3);
  CHECK(r.discarded.empty());
  CHECK(out[0] == Approx(1).margin(1e-3));
  CHECK(out[1] == Approx(2).margin(2e-3));
  CHECK(GeometricMedian::last_iterations() > 1);

  // Weighted, random: no better point than ours in any direction (checks the objective's optimum).
  Rng rng(29);
  const auto updates = random_updates<S>(9, 40, rng, -1, 1);
  r = GeometricMedian(200, 1e-10).aggregate(all(updates), (out = Vector<S>::Zero(40)));
  REQUIRE(r.ok);
  const double g = objective(updates, out);
  for (int t = 0; t < 20; ++t) {
    Vector<S> dir(40);
    for (Index i = 0; i < 40; ++i) dir[i] = rng.uniform<S>(S(-1), S(1));
    CHECK(objective(updates, Vector<S>(out + S(1e-2) * dir)) >= g * (1 - 1e-6));
  }
  // The weighted mean is worse (it is where Weiszfeld starts).
  Vector<S> mean = Vector<S>::Zero(40);
  REQUIRE(WeightedMean{}.aggregate(all(updates), mean).ok);
  CHECK(objective(updates, mean) >= g);

  // 4 of 10 huge outliers (1e6): the result stays near the honest cluster (|x| <= 1 per coordinate; the
  // geometric median moves by a bounded multiple of the honest spread, ~5 here, where the mean moves 4e5).
  auto attacked = random_updates<S>(10, 40, rng, -1, 1);
  for (std::size_t k = 0; k < 4; ++k) attacked[k].delta.setConstant(S(1e6));
  for (auto& u : attacked) u.num_samples = 10;
  REQUIRE(GeometricMedian{}.aggregate(all(attacked), (out = Vector<S>::Zero(40))).ok);
  CHECK(out.cwiseAbs().maxCoeff() < S(10));
  // max_iter = 0: the weighted mean itself.
  REQUIRE(GeometricMedian(0).aggregate(all(updates), (out = Vector<S>::Zero(40))).ok);
  CHECK(out == mean);
}

// ---------------------------------------------------------------------------------------------------
// NormBounded

TEMPLATE_TEST_CASE("NormBounded clips only the long updates and then applies the rule (bitwise as on clipped copies)",
                   "[federated][aggregators][norm-bound]", float, double) {
  using S = TestType;
  Rng rng(31);
  const Index p = WeightedMean::block + 50;
  auto updates = random_updates<S>(7, p, rng, -1, 1);
  updates[1].delta *= S(100);
  updates[4].delta *= S(1e20);  // finite, large norm
  const double bound = 0.5 * double(updates[0].delta.norm());
  std::vector<ClientUpdate<S>> clipped = updates;
  for (auto& u : clipped) {
    const double norm = double(u.delta.norm());
    const double nrm = std::isfinite(norm) ? norm : double(u.delta.stableNorm());
    if (nrm > bound) u.delta = S(bound / nrm) * u.delta;
  }
  for (const auto& u : clipped) CHECK(double(u.delta.stableNorm()) <= bound * (1 + 1e-5));
  Vector<S> expected = Vector<S>::Zero(p), out = Vector<S>::Zero(p);
  REQUIRE(WeightedMean{}.aggregate(all(clipped), expected).ok);
  AggregationReport r = NormBounded<WeightedMean>(bound).aggregate(all(updates), out);
  REQUIRE(r.ok);
  CHECK(r.used == 7);
  CHECK(out == expected);
  REQUIRE(CoordinateMedian{}.aggregate(all(clipped), expected).ok);
  REQUIRE(NormBounded<CoordinateMedian>(bound).aggregate(all(updates), out).ok);
  CHECK(out == expected);
  // Through AnyAggregator's clip member: the same.
  AggregatorSpec spec;
  spec.name = "median";
  spec.clip_update_norm = bound;
  REQUIRE(make_aggregator(spec).aggregate(all(updates), (out = Vector<S>::Zero(p))).ok);
  CHECK(out == expected);
  // A bound above every norm: the rule alone, bitwise.
  REQUIRE(NormBounded<WeightedMean>(1e300).aggregate(all(updates), out).ok);
  REQUIRE(WeightedMean{}.aggregate(all(updates), expected).ok);
  CHECK(out == expected);
  // Non-finite updates pass through and are rejected by the rule.
  updates[3].delta[7] = std::numeric_limits<S>::quiet_NaN();
  r = NormBounded<WeightedMean>(bound).aggregate(all(updates), out);
  CHECK(r.ok);
  CHECK(rejected_clients(r) == std::vector<std::int64_t>{updates[3].client});
}

// ---------------------------------------------------------------------------------------------------
// The shared contract, for every rule

TEMPLATE_TEST_CASE("Every rule rejects NaN, inf, wrong-size and bad-weight updates and proceeds with the rest",
                   "[federated][aggregators][contract]", float, double) {
  using S = TestType;
  Rng rng(37);
  const Index p = 2 * detail::order_statistics_lanes<S> + WeightedMean::block + 3;
  const auto clean = random_updates<S>(9, p, rng, -1, 1);
  // Hostile ones interleaved: NaN late in the vector, +inf, -inf early, wrong size, zero and negative weight.
  std::vector<ClientUpdate<S>> mixed;
  std::vector<std::pair<std::int64_t, Rejection>> hostile;
  const auto add_hostile = [&](ClientUpdate<S> u, Rejection why) {
    hostile.push_back({u.client, why});
    mixed.push_back(std::move(u));
  };
  for (std::size_t k = 0; k < clean.size(); ++k) {
    mixed.push_back(clean[k]);
    ClientUpdate<S> h = clean[k];
    h.client = std::int64_t(200 + k);
    switch (k) {
      case 0: h.delta[p - 2] = std::numeric_limits<S>::quiet_NaN(); add_hostile(h, Rejection::non_finite); break;
      case 2: h.delta[1] = std::numeric_limits<S>::infinity(); add_hostile(h, Rejection::non_finite); break;
      case 3: h.delta[WeightedMean::block + 1] = -std::numeric_limits<S>::infinity(); add_hostile(h, Rejection::non_finite); break;
      case 5: h.delta.resize(p - 1); add_hostile(h, Rejection::wrong_size); break;
      case 6: h.num_samples = 0; add_hostile(h, Rejection::bad_weight); break;
      case 7: h.num_samples = -3; add_hostile(h, Rejection::bad_weight); break;
      default: break;
    }
  }
  std::sort(hostile.begin(), hostile.end());
  for (const AggregatorSpec& spec : every_spec()) {
    INFO("aggregator " << spec.name << (spec.clip_update_norm > 0 ? " (clipped)" : ""));
    const AnyAggregator agg = make_aggregator(spec);
    Vector<S> expected = Vector<S>::Zero(p), out = Vector<S>::Zero(p);
    const AggregationReport want = agg.aggregate(all(clean), expected);
    REQUIRE(want.ok);
    const AggregationReport r = agg.aggregate(all(mixed), out);
    REQUIRE(r.ok);
    CHECK(r.used == want.used);
    CHECK(r.discarded == want.discarded);
    REQUIRE(r.rejected.size() == hostile.size());
    for (std::size_t k = 0; k < hostile.size(); ++k) {
      CHECK(r.rejected[k].client == hostile[k].first);
      CHECK(r.rejected[k].reason == hostile[k].second);
    }
    CHECK(out == expected);
    // Deterministic: the same inputs give the same bits.
    Vector<S> again = Vector<S>::Zero(p);
    agg.aggregate(all(mixed), again);
    CHECK(again == out);
  }
}

TEMPLATE_TEST_CASE("ok = false leaves the global untouched: nothing valid, too few for Krum or Bulyan",
                   "[federated][aggregators][contract]", float, double) {
  using S = TestType;
  Rng rng(41);
  const Vector<S> before = Vector<S>::LinSpaced(20, S(-1), S(1));
  // Every update rejected.
  std::vector<ClientUpdate<S>> bad = random_updates<S>(3, 20, rng);
  bad[0].delta[3] = std::numeric_limits<S>::quiet_NaN();
  bad[1].num_samples = 0;
  bad[2].delta.resize(5);
  for (const AggregatorSpec& spec : every_spec()) {
    INFO("aggregator " << spec.name);
    Vector<S> out = before;
    const AggregationReport r = make_aggregator(spec).aggregate(all(bad), out);
    CHECK_FALSE(r.ok);
    CHECK_FALSE(r.note.empty());
    CHECK(r.rejected.size() == 3);
    CHECK(out == before);
    // No update at all.
    const AggregationReport none = make_aggregator(spec).aggregate(std::span<const ClientUpdate<S>>(), out);
    CHECK_FALSE(none.ok);
    CHECK(out == before);
  }
  // Krum with f = 1 needs n > 4; Bulyan with f = 1 needs n >= 7 (a NaN update takes one from 5 and 7).
  auto four = random_updates<S>(5, 20, rng);
  four[2].delta[0] = std::numeric_limits<S>::quiet_NaN();
  for (const auto& [rule, name] : {std::pair<AnyAggregator, std::string>{AnyAggregator(Krum(1)), "krum"},
                                   {AnyAggregator(MultiKrum(1)), "multi-krum"}}) {
    Vector<S> out = before;
    const AggregationReport r = rule.aggregate(all(four), out);
    CHECK_FALSE(r.ok);
    CHECK_THAT(r.note, Catch::Contains(name) && Catch::Contains("f = 1") && Catch::Contains("n = 4"));
    CHECK(r.rejected.size() == 1);
    CHECK(out == before);
  }
  auto six = random_updates<S>(7, 20, rng);
  six[6].delta[19] = std::numeric_limits<S>::infinity();
  Vector<S> out = before;
  AggregationReport r = Bulyan(1).aggregate(all(six), out);
  CHECK_FALSE(r.ok);
  CHECK_THAT(r.note, Catch::Contains("bulyan") && Catch::Contains("f = 1") && Catch::Contains("n = 6"));
  CHECK(out == before);
  // Multi-Krum with m > n - f = 5.
  r = MultiKrum(1, 6).aggregate(all(six), out);
  CHECK_FALSE(r.ok);
  CHECK_THAT(r.note, Catch::Contains("m = 6") && Catch::Contains("n = 6") && Catch::Contains("n - f = 5"));
  CHECK(out == before);
}

// ---------------------------------------------------------------------------------------------------
// AnyAggregator, make_aggregator, check_aggregator_feasible, constructors

TEST_CASE("make_aggregator maps names to rules and rejects unknown names listing the valid ones",
          "[federated][aggregators][spec]") {
  const auto rule_of = [](std::string name) {
    AggregatorSpec s;
    s.name = std::move(name);
    return make_aggregator(s).rule().index();
  };
  CHECK(rule_of("mean") == 0);
  CHECK(rule_of("median") == 1);
  CHECK(rule_of("trimmed-mean") == 2);
  CHECK(rule_of("krum") == 3);
  CHECK(rule_of("multi-krum") == 4);
  CHECK(rule_of("bulyan") == 5);
  CHECK(rule_of("geometric-median") == 6);
  AggregatorSpec s;
  s.name = "fedavg";
  CHECK_THROWS_WITH(make_aggregator(s), Catch::Contains("\"fedavg\"") && Catch::Contains("mean, median, trimmed-mean") &&
                                            Catch::Contains("geometric-median"));
  AggregatorSpec c;
  c.name = "krum";
  c.byzantine_bound = 2;
  c.clip_update_norm = 4;
  const AnyAggregator a = make_aggregator(c);
  CHECK(a.clip_update_norm() == 4);
  REQUIRE(std::holds_alternative<Krum>(a.rule()));
  CHECK(std::get<Krum>(a.rule()).byzantine_bound() == 2);
}

TEST_CASE("check_aggregator_feasible rejects impossible rules before any work, naming n and f",
          "[federated][aggregators][spec]") {
  AggregatorSpec s;
  s.name = "krum";
  s.byzantine_bound = 2;
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 6), Catch::Contains("krum") && Catch::Contains("f = 2") &&
                                                         Catch::Contains("n = 6") && Catch::Contains("2f + 2 = 6"));
  CHECK_NOTHROW(check_aggregator_feasible(s, 7));
  s.name = "multi-krum";
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 6), Catch::Contains("multi-krum") && Catch::Contains("n = 6"));
  s.multi_krum_m = 6;
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 7), Catch::Contains("m = 6") && Catch::Contains("n - f = 5"));
  s.multi_krum_m = 5;
  CHECK_NOTHROW(check_aggregator_feasible(s, 7));
  s.name = "bulyan";
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 10), Catch::Contains("bulyan") && Catch::Contains("f = 2") &&
                                                          Catch::Contains("n = 10") && Catch::Contains("4f + 3 = 11"));
  CHECK_NOTHROW(check_aggregator_feasible(s, 11));
  s.name = "median";
  CHECK_NOTHROW(check_aggregator_feasible(s, 1));
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 0), Catch::Contains("n = 0"));
  s.name = "trimmed-mean";
  s.trim_fraction = 0.49;
  for (Index n = 1; n <= 300; ++n) CHECK_NOTHROW(check_aggregator_feasible(s, n));  // beta < 0.5 never trims all
  s.trim_fraction = 0.5;
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 10), Catch::Contains("beta = 0.5"));
  s.name = "no-such-rule";
  CHECK_THROWS_WITH(check_aggregator_feasible(s, 10), Catch::Contains("no-such-rule"));
}

TEST_CASE("Constructors reject bad hyperparameters with the expected and the actual value", "[federated][aggregators][spec]") {
  CHECK_THROWS_WITH(TrimmedMean(0.5), Catch::Contains("[0, 0.5)") && Catch::Contains("0.5"));
  CHECK_THROWS_WITH(TrimmedMean(-0.1), Catch::Contains("-0.1"));
  CHECK_THROWS_WITH(Krum(-1), Catch::Contains("f >= 0") && Catch::Contains("f = -1"));
  CHECK_THROWS_WITH(MultiKrum(1, -2), Catch::Contains("m = -2"));
  CHECK_THROWS_WITH(Bulyan(-3), Catch::Contains("f = -3"));
  CHECK_THROWS_WITH(GeometricMedian(-1), Catch::Contains("max_iter = -1"));
  CHECK_THROWS_WITH(GeometricMedian(10, -1.0), Catch::Contains("tol = -1"));
  CHECK_THROWS_WITH(GeometricMedian(10, 1e-6, 0.0), Catch::Contains("nu = 0"));
  CHECK_THROWS_WITH(NormBounded<WeightedMean>(0.0), Catch::Contains("max_norm = 0"));
  CHECK_THROWS_WITH(AnyAggregator(WeightedMean{}, -1.0), Catch::Contains("-1"));
  AggregatorSpec s;
  s.name = "bulyan";
  s.byzantine_bound = -1;
  CHECK_THROWS_WITH(make_aggregator(s), Catch::Contains("f = -1"));
}
