// SecureAggregationTransport: secure aggregation inside train_federated over a Transport. The sum it
// hands the server against the plain weighted mean (within the fixed-point bound), dropouts at every
// stage up to n - t and a clean failure beyond, declined updates, that no plaintext update reaches the
// inner transport, and reproducibility for any thread count and any keys. (Over MPI: CI compares
// fedmoe-paper-mpi --secure-aggregation with the in-process run bit for bit.)
#include <catch2/catch.hpp>

#include <cmath>
#include <set>
#include <vector>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/federated/secure/secure_transport.hpp>

#include "../synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

static_assert(Transport<SecureAggregationTransport<InProcessTransport<float>>, float>);
static_assert(MessageTransport<InProcessTransport<float>>);

namespace {

std::vector<ClientUpdate<float>> random_updates(Index n, Index p, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<ClientUpdate<float>> ups;
  for (Index k = 0; k < n; ++k) {
    ClientUpdate<float> u;
    u.client = 3 * k + 1;  // sparse ids
    u.num_samples = 10 + Index(rng.uniform_int(90));
    u.delta.resize(p);
    for (Index i = 0; i < p; ++i) u.delta[i] = rng.uniform<float>(-0.5f, 0.5f);
    ups.push_back(std::move(u));
  }
  return ups;
}

SecureAggregationConfig config(std::uint32_t t, std::uint32_t max_clients) {
  SecureAggregationConfig c;
  c.threshold = t;
  c.max_clients = max_clients;
  c.value_bound = 100;
  c.weight_bound = 1000;
  c.deterministic_seed = 5;
  return c;
}

/// One secure collect() of `ups` (and their plain weighted mean over the kept clients).
struct Outcome {
  std::vector<ClientUpdate<float>> out;
  SecureRoundInfo info;
};
Outcome secure_round(const std::vector<ClientUpdate<float>>& ups, SecureAggregationConfig cfg, Index p) {
  InProcessTransport<float> inner([](const ClientUpdate<float>&) { FAIL("a plaintext update reached the inner transport"); });
  SecureAggregationTransport<InProcessTransport<float>> t(inner, std::move(cfg));
  t.broadcast(Vector<float>::Zero(p));
  for (const auto& u : ups) t.upload(u);
  Outcome o;
  o.out = t.collect();
  o.info = t.last_round();
  return o;
}

Vector<double> weighted_mean(const std::vector<ClientUpdate<float>>& ups, const std::set<std::int64_t>& keep) {
  Vector<double> sum = Vector<double>::Zero(ups.front().delta.size());
  double w = 0;
  for (const auto& u : ups)
    if (keep.count(u.client)) {
      sum += double(u.num_samples) * u.delta.cast<double>();
      w += double(u.num_samples);
    }
  return sum / w;
}

std::set<std::int64_t> ids(const std::vector<ClientUpdate<float>>& ups) {
  std::set<std::int64_t> s;
  for (const auto& u : ups) s.insert(u.client);
  return s;
}

}  // namespace

TEST_CASE("the secure sum is the plain weighted mean within the fixed-point bound", "[secagg]") {
  for (Index n : {2, 5, 12}) {
    const Index p = 257;
    const auto ups = random_updates(n, p, std::uint64_t(n));
    const auto t = std::uint32_t(n / 2 + 1);
    const Outcome o = secure_round(ups, config(t, std::uint32_t(n)), p);
    INFO("n = " << n);
    REQUIRE(o.info.ok);
    CHECK(o.info.joined == std::uint32_t(n));
    CHECK(o.info.contributors == std::uint32_t(n));
    REQUIRE(o.out.size() == 1);
    CHECK(o.out[0].client == SecureAggregationTransport<InProcessTransport<float>>::secure_sum_client);
    const Vector<double> exact = weighted_mean(ups, ids(ups));
    double w = 0;
    for (const auto& u : ups) w += double(u.num_samples);
    CHECK(o.out[0].num_samples == Index(w));
    // |decoded sum - exact sum| <= n 0.5 / s per coordinate, then divided by the total weight (exactly
    // known here: the weights are integers), plus the float rounding of the mean.
    const FixedPointCodec codec(100, 1000, std::uint32_t(n));
    const double bound = codec.sum_error_bound(std::uint32_t(n)) / w + 1e-7;
    CHECK((o.out[0].delta.cast<double>() - exact).cwiseAbs().maxCoeff() <= bound);
  }
}

TEST_CASE("dropouts at every stage, up to n - t, and a clean failure beyond", "[secagg]") {
  const Index n = 7, p = 64;
  const std::uint32_t t = 4;
  const auto ups = random_updates(n, p, 2);
  for (int stage = 0; stage < 4; ++stage)
    for (std::uint32_t d = 0; d <= n - t + 1; ++d) {
      INFO("stage " << stage << ", " << d << " drop");
      SecureAggregationConfig cfg = config(t, std::uint32_t(n));
      std::set<std::int64_t> gone;
      for (std::uint32_t k = 0; k < d; ++k) gone.insert(ups[2 * k % n].client);
      cfg.drop = [gone, stage](std::uint64_t, std::int64_t c, int s) { return s == stage && gone.count(c) > 0; };
      const Outcome o = secure_round(ups, cfg, p);
      if (d <= n - t) {
        REQUIRE(o.info.ok);
        std::set<std::int64_t> keep = ids(ups);
        // Dropping at unmasking (stage 3) still leaves the input in the sum.
        if (stage < 3)
          for (auto c : gone) keep.erase(c);
        CHECK(o.info.contributors == keep.size());
        REQUIRE(o.out.size() == 1);
        CHECK((o.out[0].delta.cast<double>() - weighted_mean(ups, keep)).cwiseAbs().maxCoeff() < 1e-5);
      } else {
        CHECK_FALSE(o.info.ok);
        CHECK(o.out.empty());
        CHECK_THAT(o.info.note, Contains(std::to_string(t)));
      }
    }
}

TEST_CASE("fewer joined clients than t aggregates nothing, and says why", "[secagg]") {
  const auto ups = random_updates(3, 8, 3);
  const Outcome o = secure_round(ups, config(4, 6), 8);
  CHECK_FALSE(o.info.ok);
  CHECK(o.out.empty());
  CHECK(o.info.joined == 3);
  CHECK_THAT(o.info.note, Contains("3 clients joined, expected 4 to 6"));
}

TEST_CASE("an update beyond the bound or not finite declines, never clamped", "[secagg]") {
  auto ups = random_updates(6, 16, 4);
  ups[1].delta[3] = 50.f;  // n_k * 50 > B = 100 for n_k >= 10
  ups[4].delta[0] = std::numeric_limits<float>::quiet_NaN();
  const Outcome o = secure_round(ups, config(4, 6), 16);
  REQUIRE(o.info.ok);
  CHECK(o.info.declined == 2);
  CHECK(o.info.contributors == 4);
  std::set<std::int64_t> keep = ids(ups);
  keep.erase(ups[1].client);
  keep.erase(ups[4].client);
  CHECK((o.out[0].delta.cast<double>() - weighted_mean(ups, keep)).cwiseAbs().maxCoeff() < 1e-5);
}

TEST_CASE("configurations that break t > n/2 or the fixed-point bounds are refused up front", "[secagg]") {
  InProcessTransport<float> inner;
  REQUIRE_THROWS_WITH((SecureAggregationTransport<InProcessTransport<float>>(inner, config(5, 10))),
                      Contains("10/2 < t <= 10") && Contains("got t = 5"));
  REQUIRE_THROWS_WITH((SecureAggregationTransport<InProcessTransport<float>>(inner, config(11, 10))),
                      Contains("got t = 11"));
  SecureAggregationConfig c = config(6, 10);
  c.value_bound = 0;
  REQUIRE_THROWS_WITH((SecureAggregationTransport<InProcessTransport<float>>(inner, c)), Contains("value bound B > 0"));
}

namespace {
using test::Blobs;
}  // namespace

TEST_CASE("a secure federation: close to the plain one, bitwise the same for any threads and any keys", "[secagg]") {
  const Blobs b(8);
  auto run = [&](std::size_t threads, std::optional<std::uint64_t> keys, bool secure) {
    Mlp<float> model = b.model();
    InProcessTransport<float> inner;
    FederationConfig fc;
    fc.max_rounds = 5;
    fc.check_every = 5;
    fc.threads = threads;
    fc.seed = 3;
    if (secure) {
      SecureAggregationConfig sc = config(4, 6);
      sc.deterministic_seed = keys;
      sc.threads = threads;
      SecureAggregationTransport<InProcessTransport<float>> t(inner, sc);
      train_federated(model, b.clients, t, fc, fedavg<float>(6, {1, 10}, 1e-2));
    } else {
      train_federated(model, b.clients, inner, fc, fedavg<float>(6, {1, 10}, 1e-2));
    }
    return Vector<float>(model.parameters());
  };
  const Vector<float> a = run(1, 5, true), c = run(2, 9, true), sys = run(2, std::nullopt, true);
  CHECK((a.array() == c.array()).all());
  CHECK((a.array() == sys.array()).all());  // the masks cancel exactly, whatever the keys
  const Vector<float> plain = run(1, 5, false);
  CHECK_FALSE((a.array() == b.model().parameters().array()).all());
  CHECK((a - plain).cwiseAbs().maxCoeff() < 1e-4);
}
