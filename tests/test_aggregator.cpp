// FedAvg's blocked, four-updates-per-sweep sum against the plain sequential sum (bitwise equal), and its
// per-block finite check.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregator.hpp>

using namespace fedmoe;

TEMPLATE_TEST_CASE("FedAvg equals the update-by-update weighted sum bitwise, for any number of updates",
                   "[federated][aggregator]", float, double) {
  using S = TestType;
  // Two full blocks and a partial one; 1 to 9 updates: groups of four plus every remainder.
  const Index p = 2 * FedAvg::block + 77;
  Rng rng(12);
  for (std::size_t n = 1; n <= 9; ++n) {
    std::vector<ClientUpdate<S>> updates(n);
    double total = 0;
    for (std::size_t k = 0; k < n; ++k) {
      updates[k].client = std::int64_t(k);
      updates[k].num_samples = 1 + Index(rng.uniform_int(200));
      updates[k].parameters.resize(p);
      for (Index i = 0; i < p; ++i) updates[k].parameters[i] = rng.uniform<S>(S(-3), S(3));
      total += double(updates[k].num_samples);
    }
    // Reference: acc += w_k u_k, one whole update after the other, in update order.
    Vector<S> expected = Vector<S>::Zero(p);
    for (const auto& u : updates) expected.noalias() += S(double(u.num_samples) / total) * u.parameters;
    Vector<S> global = Vector<S>::Zero(p);
    FedAvg{}.aggregate(std::span<const ClientUpdate<S>>(updates), global);
    INFO(n << " updates");
    CHECK(global == expected);
  }
}

TEMPLATE_TEST_CASE("FedAvg names the client with a non-finite value anywhere, global untouched",
                   "[federated][aggregator]", float, double) {
  using S = TestType;
  // Six updates (a group of four and two more), the bad value in the second block: the vectorized finite
  // check of each block's sum must catch NaN and both infinities in any position.
  const Index p = FedAvg::block + 100;
  for (S bad_value : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(),
                      -std::numeric_limits<S>::infinity()}) {
    for (std::size_t bad_client : {std::size_t(2), std::size_t(5)}) {
      std::vector<ClientUpdate<S>> updates(6);
      for (std::size_t k = 0; k < updates.size(); ++k)
        updates[k] = {std::int64_t(10 + k), Vector<S>::Constant(p, S(0.5)), Index(3 + k)};
      updates[bad_client].parameters[FedAvg::block + 7] = bad_value;
      const Vector<S> before = Vector<S>::LinSpaced(p, S(-1), S(1));
      Vector<S> global = before;
      INFO("bad value " << bad_value << " in client " << 10 + bad_client);
      CHECK_THROWS_WITH(FedAvg{}.aggregate(std::span<const ClientUpdate<S>>(updates), global),
                        Catch::Contains("client " + std::to_string(10 + bad_client)) &&
                            Catch::Contains("non-finite"));
      CHECK(global == before);
    }
  }
}
