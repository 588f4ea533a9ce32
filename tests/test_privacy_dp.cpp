// Client-level differential privacy (DP-FedAvg): DpMean's clipping, noise and fixed denominator,
// adaptive clipping, and the federation's accounting, budget stop and reproducibility. (The RDP
// accountant itself: test_privacy_accountant.cpp.)
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <fedmoe/fedmoe.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

static_assert(DifferentiallyPrivate<DpMean> && RandomizedAggregator<DpMean, float>);
static_assert(!DifferentiallyPrivate<WeightedMean> && !RandomizedAggregator<WeightedMean, float>);

namespace {

ClientUpdate<float> update(std::int64_t client, std::vector<float> delta, Index samples = 10) {
  ClientUpdate<float> u;
  u.client = client;
  u.delta = Eigen::Map<const Vector<float>>(delta.data(), Index(delta.size()));
  u.num_samples = samples;
  return u;
}

DpMean dp_mean(double clip, double z, double expected, std::optional<AdaptiveClipping> adaptive = {}) {
  DpMean m(DpMeanConfig{clip, z, adaptive});
  m.set_expected_clients(expected);
  return m;
}

}  // namespace

TEST_CASE("DpMean clips each update to C, sums with uniform weights, adds z C noise and divides by m",
          "[privacy]") {
  // Norms 5 (clipped to C = 1), 0.5 (kept); sample counts must not weigh (DP-FedAvg's estimator).
  const std::vector<ClientUpdate<float>> ups{update(0, {3, 4, 0}, 1000), update(1, {0, 0, 0.5f}, 1)};
  DpMean m = dp_mean(1.0, 0.3, 4.0);
  Vector<float> out = Vector<float>::Zero(3);
  Rng rng(7), replay(7);
  const AggregationReport r = m.aggregate(std::span<const ClientUpdate<float>>(ups), out, rng);
  REQUIRE(r.ok);
  CHECK(r.used == 2);
  CHECK(m.last_round().unclipped == 1);
  // The same computation by hand, from the same stream: clipped sum + 0.3 * 1.0 * N(0, 1), over m = 4.
  const double expect[3] = {0.6, 0.8, 0.5};
  for (Index i = 0; i < 3; ++i) CHECK(double(out[i]) == Approx((expect[i] + 0.3 * replay.normal()) / 4.0).epsilon(1e-6));
}

TEST_CASE("DpMean releases every round: the noise alone when nobody took part or every update is malformed",
          "[privacy]") {
  DpMean m = dp_mean(2.0, 1.0, 5.0);
  Vector<float> out = Vector<float>::Zero(4);
  Rng rng(3), replay(3);
  const std::vector<ClientUpdate<float>> none;
  AggregationReport r = m.aggregate(std::span<const ClientUpdate<float>>(none), out, rng);
  REQUIRE(r.ok);
  CHECK(r.used == 0);
  for (Index i = 0; i < 4; ++i) CHECK(double(out[i]) == Approx(2.0 * replay.normal() / 5.0).epsilon(1e-6));

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<ClientUpdate<float>> bad{update(3, {1, nan, 0, 0}), update(5, {1, 2}), update(6, {1, 0, 0, 0})};
  r = m.aggregate(std::span<const ClientUpdate<float>>(bad), out, rng);
  REQUIRE(r.ok);
  CHECK(r.used == 1);
  REQUIRE(r.rejected.size() == 2);
  CHECK((r.rejected[0].client == 3 && r.rejected[0].reason == Rejection::non_finite));
  CHECK((r.rejected[1].client == 5 && r.rejected[1].reason == Rejection::wrong_size));
  CHECK(std::isfinite(double(out.norm())));
}

TEST_CASE("DpMean's noise has standard deviation z C / m", "[privacy]") {
  const Index p = 200000;
  DpMean m = dp_mean(0.5, 1.3, 10.0);
  Vector<float> out = Vector<float>::Zero(p);
  Rng rng(11);
  const std::vector<ClientUpdate<float>> none;
  REQUIRE(m.aggregate(std::span<const ClientUpdate<float>>(none), out, rng).ok);
  const double mean = double(out.cast<double>().mean());
  const double sd = std::sqrt((out.cast<double>().array() - mean).square().sum() / double(p - 1));
  // The sample sd of 2e5 normals is within 1% of the truth with probability > 1 - 1e-8.
  CHECK(sd == Approx(0.5 * 1.3 / 10.0).epsilon(0.01));
  CHECK(std::abs(mean) < 5 * 0.065 / std::sqrt(double(p)));
}

TEST_CASE("adaptive clipping moves C towards the target quantile of the update norms", "[privacy]") {
  SECTION("the budget split: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), and an impossible split is refused") {
    DpMean m = dp_mean(1.0, 1.0, 100.0, AdaptiveClipping{0.5, 0.2, 0});  // sigma_b = m / 20 = 5
    CHECK(m.count_noise_std() == 5.0);
    CHECK(m.sum_noise_multiplier() == Approx(1.0 / std::sqrt(1.0 - 1.0 / 100.0)));
    DpMean small(DpMeanConfig{1.0, 1.0, AdaptiveClipping{0.5, 0.2, 0}});
    REQUIRE_THROWS_WITH(small.set_expected_clients(10.0), Contains("2 sigma_b > z") && Contains("sigma_b = 0.5"));
  }
  SECTION("norms uniform on [0, 2]: C converges near their median 1 from above and from below") {
    for (double start : {0.05, 20.0}) {
      DpMean m = dp_mean(start, 0.5, 50.0, AdaptiveClipping{0.5, 0.2, 0});
      Rng data(1), rng(2);
      Vector<float> out = Vector<float>::Zero(2);
      for (int round = 0; round < 300; ++round) {
        std::vector<ClientUpdate<float>> ups;
        for (int k = 0; k < 50; ++k) ups.push_back(update(k, {float(data.uniform(0.0, 2.0)), 0}));
        REQUIRE(m.aggregate(std::span<const ClientUpdate<float>>(ups), out, rng).ok);
      }
      INFO("start C = " << start << ", final C = " << m.clip_norm());
      CHECK(m.clip_norm() == Approx(1.0).margin(0.2));
    }
  }
}

TEST_CASE("DpMean refuses impossible configurations before any round", "[privacy]") {
  REQUIRE_THROWS_WITH(DpMean(DpMeanConfig{0.0, 1.0, {}}), Contains("clipping norm C > 0, got 0"));
  REQUIRE_THROWS_WITH(DpMean(DpMeanConfig{1.0, -1.0, {}}), Contains("noise multiplier z > 0, got -1"));
  REQUIRE_THROWS_WITH(DpMean(DpMeanConfig{1.0, std::nan(""), {}}), Contains("noise multiplier z > 0"));
  REQUIRE_THROWS_WITH(DpMean(DpMeanConfig{1.0, 1.0, AdaptiveClipping{1.5, 0.2, 0}}), Contains("in [0, 1], got 1.5"));
  DpMean m(DpMeanConfig{1.0, 1.0, {}});
  REQUIRE_THROWS_WITH(m.set_expected_clients(0.0), Contains("m > 0, got 0"));
  PrivacyAccounting a;
  a.delta = 0;
  REQUIRE_THROWS_WITH(a.validate(), Contains("delta in (0, 1), got 0"));
}

TEST_CASE("Server::step refuses to run a randomised aggregator without the round's stream", "[privacy]") {
  Server<float, DpMean, Sgd<float>> server(Vector<float>::Zero(3), dp_mean(1.0, 1.0, 2.0), Sgd<float>(1.0));
  std::vector<ClientUpdate<float>> ups{update(0, {1, 0, 0})};
  REQUIRE_THROWS_WITH(server.step(ups, 0), Contains("random stream"));
  Rng rng(1);
  CHECK(server.step(ups, 0, &rng).ok);
}

namespace {

/// The small federation of the DP tests: 1,600 samples, client 0 opts out.
struct DpBlobs : test::Blobs {
  explicit DpBlobs(Index n) : test::Blobs(n, {true}, 1600) {}
};

using DpStrategy = Strategy<PoissonSampler, LocalTraining<Adam<float>>, DpMean, Sgd<float>>;

DpStrategy dp_strategy(double q, double clip, double z, std::optional<AdaptiveClipping> adaptive = {}) {
  return DpStrategy{PoissonSampler(q), LocalTraining<Adam<float>>({1, 10}, Adam<float>(1e-2)),
                    DpMean(DpMeanConfig{clip, z, adaptive}), Sgd<float>(1.0)};
}

FederationConfig dp_config(int rounds, std::size_t threads, double budget = std::numeric_limits<double>::infinity()) {
  FederationConfig c;
  c.max_rounds = rounds;
  c.check_every = 4;
  c.patience = 1;  // would stop early if validation selected the model
  c.threads = threads;
  c.seed = 9;
  c.select_on_validation = false;
  c.privacy.delta = 1e-5;
  c.privacy.epsilon_budget = budget;
  return c;
}

}  // namespace

TEST_CASE("a DP federation: every round accounted, bitwise the same for 1 and 2 threads, the last model kept",
          "[privacy]") {
  const DpBlobs b(21);  // 20 opted in
  auto run = [&](std::size_t threads, std::optional<AdaptiveClipping> adaptive) {
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    const FederationResult r =
        train_federated(model, b.clients, t, dp_config(12, threads), dp_strategy(0.25, 0.5, 0.8, adaptive));
    return std::make_pair(Vector<float>(model.parameters()), r);
  };
  for (const auto& adaptive : {std::optional<AdaptiveClipping>{}, std::optional<AdaptiveClipping>{AdaptiveClipping{0.5, 0.2, 1.0}}}) {
    INFO("adaptive clipping: " << adaptive.has_value());
    const auto [p1, r1] = run(1, adaptive);
    const auto [p2, r2] = run(2, adaptive);
    CHECK((p1.array() == p2.array()).all());
    CHECK_FALSE((p1.array() == b.model().parameters().array()).all());
    CHECK(r1.rounds == 12);  // patience 1 would have stopped it: validation does not select
    CHECK(r1.best_round == 0);
    REQUIRE(r1.privacy.has_value());
    const PrivacySpent& dp = *r1.privacy;
    CHECK(dp.rounds == 12);
    CHECK(dp.sampling_rate == 0.25);
    CHECK(dp.noise_multiplier == 0.8);
    CHECK(dp.budget_stop_round == 0);
    privacy::RdpAccountant acc(0.25, 0.8);
    acc.step(12);
    CHECK(dp.epsilon == Approx(acc.epsilon(1e-5, privacy::Conversion::improved).epsilon).epsilon(1e-12));
    REQUIRE(r1.history.size() == 12);
    for (std::size_t i = 1; i < r1.history.size(); ++i) {
      CHECK(r1.history[i].epsilon > r1.history[i - 1].epsilon);
      CHECK(r1.history[i].stepped);  // released every round, also when Poisson sampling drew nobody
    }
    CHECK(r1.history.back().epsilon == dp.epsilon);
    if (adaptive) {
      bool moved = false;
      for (const auto& rec : r1.history) moved = moved || rec.clip_norm != 0.5;
      CHECK(moved);
    } else {
      for (const auto& rec : r1.history) CHECK(rec.clip_norm == 0.5);
    }
  }
}

TEST_CASE("an epsilon budget stops training before the first round that would exceed it", "[privacy]") {
  const DpBlobs b(21);
  privacy::RdpAccountant acc(0.25, 0.8);
  acc.step(5);
  const double eps5 = acc.epsilon(1e-5, privacy::Conversion::improved).epsilon;
  acc.step();
  const double eps6 = acc.epsilon(1e-5, privacy::Conversion::improved).epsilon;
  REQUIRE(eps5 < eps6);
  Mlp<float> model = b.model();
  InProcessTransport<float> t;
  const FederationResult r =
      train_federated(model, b.clients, t, dp_config(50, 1, 0.5 * (eps5 + eps6)), dp_strategy(0.25, 0.5, 0.8));
  CHECK(r.rounds == 5);
  REQUIRE(r.privacy.has_value());
  CHECK(r.privacy->budget_stop_round == 5);
  CHECK(r.privacy->epsilon == Approx(eps5).epsilon(1e-12));
  CHECK(r.privacy->epsilon <= 0.5 * (eps5 + eps6));
}

TEST_CASE("DP refuses a client algorithm that uploads more than its delta", "[privacy]") {
  const DpBlobs b(6);
  Mlp<float> model = b.model();
  InProcessTransport<float> t;
  auto strategy = Strategy<PoissonSampler, Scaffold<float>, DpMean, Sgd<float>>{
      PoissonSampler(0.5), Scaffold<float>(0.05, {1, 10}), DpMean(DpMeanConfig{1.0, 1.0, {}}), Sgd<float>(1.0)};
  REQUIRE_THROWS_WITH(train_federated(model, b.clients, t, dp_config(3, 1), strategy),
                      Contains("uploads only its delta") && Contains("1 extra vectors"));
}
