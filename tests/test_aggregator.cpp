// WeightedMean (FedAvg's reduction): its blocked, four-updates-per-sweep sum against the plain sequential
// sum (bitwise equal), and its per-block finite check, which rejects the offending update and proceeds.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregator.hpp>
#include <fedmoe/federated/aggregators/mean.hpp>

using namespace fedmoe;

TEMPLATE_TEST_CASE("WeightedMean equals the update-by-update weighted sum bitwise, for any number of updates",
                   "[federated][aggregator]", float, double) {
  using S = TestType;
  // Two full blocks and a partial one; 1 to 9 updates: groups of four plus every remainder.
  const Index p = 2 * WeightedMean::block + 77;
  Rng rng(12);
  for (std::size_t n = 1; n <= 9; ++n) {
    std::vector<ClientUpdate<S>> updates(n);
    double total = 0;
    for (std::size_t k = 0; k < n; ++k) {
      updates[k].client = std::int64_t(k);
      updates[k].num_samples = 1 + Index(rng.uniform_int(200));
      updates[k].delta.resize(p);
      for (Index i = 0; i < p; ++i) updates[k].delta[i] = rng.uniform<S>(S(-3), S(3));
      total += double(updates[k].num_samples);
    }
    // Reference: acc += w_k u_k, one whole update after the other, in update order.
    Vector<S> expected = Vector<S>::Zero(p);
    for (const auto& u : updates) expected.noalias() += S(double(u.num_samples) / total) * u.delta;
    Vector<S> global = Vector<S>::Zero(p);
    const AggregationReport report = WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(updates), global);
    INFO(n << " updates");
    CHECK(report.ok);
    CHECK(report.used == Index(n));
    CHECK(report.rejected.empty());
    CHECK(report.discarded.empty());
    CHECK(global == expected);
  }
}

TEMPLATE_TEST_CASE("WeightedMean rejects the client with a non-finite value anywhere and averages the rest",
                   "[federated][aggregator]", float, double) {
  using S = TestType;
  // Six updates (a group of four and two more), the bad value in the second block: the vectorized finite
  // check of each block's sum must catch NaN and both infinities in any position.
  const Index p = WeightedMean::block + 100;
  for (S bad_value : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(),
                      -std::numeric_limits<S>::infinity()}) {
    for (std::size_t bad_client : {std::size_t(2), std::size_t(5)}) {
      std::vector<ClientUpdate<S>> updates(6);
      for (std::size_t k = 0; k < updates.size(); ++k)
        updates[k] = {std::int64_t(10 + k), Vector<S>::Constant(p, S(0.5) + S(k)), Index(3 + k), {}};
      updates[bad_client].delta[WeightedMean::block + 7] = bad_value;
      // The same round without the bad update.
      std::vector<ClientUpdate<S>> clean;
      for (std::size_t k = 0; k < updates.size(); ++k)
        if (k != bad_client) clean.push_back(updates[k]);
      Vector<S> expected = Vector<S>::Zero(p);
      REQUIRE(WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(clean), expected).ok);
      Vector<S> global = Vector<S>::LinSpaced(p, S(-1), S(1));
      INFO("bad value " << bad_value << " in client " << 10 + bad_client);
      const AggregationReport report = WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(updates), global);
      CHECK(report.ok);
      CHECK(report.used == 5);
      REQUIRE(report.rejected.size() == 1);
      CHECK(report.rejected[0].client == std::int64_t(10 + bad_client));
      CHECK(report.rejected[0].reason == Rejection::non_finite);
      CHECK(global == expected);
    }
  }
}

TEMPLATE_TEST_CASE("WeightedMean with every update rejected reports why and leaves the global untouched",
                   "[federated][aggregator]", float, double) {
  using S = TestType;
  std::vector<ClientUpdate<S>> updates(3);
  updates[0] = {1, Vector<S>::Constant(8, S(1)), 0, {}};                                      // bad weight
  updates[1] = {2, Vector<S>::Constant(7, S(1)), 4, {}};                                      // wrong size
  updates[2] = {3, Vector<S>::Constant(8, std::numeric_limits<S>::quiet_NaN()), 4, {}};       // non-finite
  const Vector<S> before = Vector<S>::LinSpaced(8, S(-1), S(1));
  Vector<S> global = before;
  const AggregationReport report = WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(updates), global);
  CHECK_FALSE(report.ok);
  CHECK_FALSE(report.note.empty());
  REQUIRE(report.rejected.size() == 3);
  CHECK(report.rejected[0].reason == Rejection::bad_weight);
  CHECK(report.rejected[1].reason == Rejection::wrong_size);
  CHECK(report.rejected[2].reason == Rejection::non_finite);
  CHECK(global == before);
}
