// Secure aggregation (federated/secure/): the fixed-point codec, Shamir secret sharing and the
// Bonawitz et al. protocol (complete graph, and the SecAgg+ Harary graph) between SecAggClient and
// SecAggServer, every message carried as bytes (serialize, then parse) as a transport would.
//
// Every client draws its keys from SecAggEntropy::deterministic(seed, id), so each test is
// reproducible bit for bit, including the chi-square test of a masked vector (fixed seeds, fixed
// threshold); one test runs the protocol on the system CSPRNG as well.
//
// Needs libsodium: built as its own executable, fedmoe_secagg_tests (tests/CMakeLists.txt).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/secure/fixed_point.hpp>
#include <fedmoe/federated/secure/secure_aggregation.hpp>
#include <fedmoe/federated/secure/shamir.hpp>

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

// ---- helpers

/// A message as the receiver sees it: serialized by the sender, parsed on arrival.
template <class M>
M wire(const M& m) {
  return M::parse(m.serialize());
}

SecAggConfig make_config(std::uint32_t n, std::uint32_t t, std::uint64_t length, std::uint32_t k = 0,
                         std::uint64_t round = 1) {
  SecAggConfig c;
  c.round_id = round;
  c.num_clients = n;
  c.threshold = t;
  c.vector_length = length;
  c.neighbours = k;
  c.graph_seed = 77;
  return c;
}

std::vector<std::vector<std::uint32_t>> random_inputs(std::uint32_t n, std::uint64_t length, std::uint64_t seed) {
  std::vector<std::vector<std::uint32_t>> x(n, std::vector<std::uint32_t>(length));
  Rng rng(seed);
  for (auto& v : x)
    for (auto& w : v) w = std::uint32_t(rng());
  return x;
}

/// Who leaves when: a client in `no_advertise` never sends round 0, ... in `no_unmask` sends its
/// masked input but never answers the unmask request.
struct Dropouts {
  std::set<std::uint32_t> no_advertise, no_share, no_masked, no_unmask;
};

/// The clients of one aggregation and its server, driven round by round.
struct Federation {
  SecAggConfig config;
  std::vector<SecAggClient> clients;
  SecAggServer server;

  Federation(const SecAggConfig& c, std::uint64_t seed) : config(c), server(c) {
    clients.reserve(c.num_clients);
    for (std::uint32_t u = 0; u < c.num_clients; ++u)
      clients.emplace_back(c, u, SecAggEntropy::deterministic(seed, u));
  }

  void advertise(const Dropouts& d) {
    for (auto& c : clients)
      if (!d.no_advertise.count(c.id())) server.receive(wire(c.advertise_keys()));
  }
  void share(const Dropouts& d) {
    const auto dir = wire(server.key_directory());
    for (auto u : server.advertised())
      if (!d.no_share.count(u)) server.receive(wire(clients[u].share_keys(dir)));
  }
  std::vector<secagg::ShareDelivery> deliveries() {
    std::vector<secagg::ShareDelivery> out;
    for (const auto& m : server.share_deliveries()) out.push_back(wire(m));
    return out;
  }
  void mask(const std::vector<secagg::ShareDelivery>& deliveries, const std::vector<std::vector<std::uint32_t>>& x,
            const Dropouts& d) {
    for (const auto& dl : deliveries)
      if (!d.no_masked.count(dl.recipient))
        server.receive(wire(clients[dl.recipient].masked_input(dl, x[dl.recipient])));
  }
  SecAggResult unmask(const Dropouts& d) {
    const auto request = wire(server.unmask_request());
    for (auto u : request.survivors)
      if (!d.no_unmask.count(u)) server.receive(wire(clients[u].unmask(request)));
    return server.finish();
  }
  SecAggResult run(const std::vector<std::vector<std::uint32_t>>& x, const Dropouts& d = {}) {
    advertise(d);
    share(d);
    mask(deliveries(), x, d);
    return unmask(d);
  }
};

std::vector<std::uint32_t> plain_sum(const std::vector<std::vector<std::uint32_t>>& x,
                                     const std::vector<std::uint32_t>& who) {
  std::vector<std::uint32_t> s(x.at(0).size(), 0);
  for (auto u : who)
    for (std::size_t i = 0; i < s.size(); ++i) s[i] += x[u][i];
  return s;
}

std::vector<std::uint32_t> all_but(std::uint32_t n, const std::set<std::uint32_t>& out) {
  std::vector<std::uint32_t> v;
  for (std::uint32_t u = 0; u < n; ++u)
    if (!out.count(u)) v.push_back(u);
  return v;
}

/// Pearson's chi-square statistic of the bytes of `words` against the uniform distribution on 256 values.
double chi_square_bytes(std::span<const std::uint32_t> words) {
  std::array<double, 256> count{};
  for (auto w : words)
    for (int b = 0; b < 4; ++b) count[(w >> (8 * b)) & 0xffu] += 1;
  const double expected = 4.0 * double(words.size()) / 256.0;
  double chi2 = 0;
  for (double c : count) chi2 += (c - expected) * (c - expected) / expected;
  return chi2;
}
// The upper 1e-4 quantile of chi-square with 255 degrees of freedom (numerically: 347.654).
constexpr double chi2_255_p1e4 = 347.65;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Fixed point
// ---------------------------------------------------------------------------------------------------

TEST_CASE("fixed-point scale is the largest power of two that cannot overflow n clients", "[secagg][fixed_point]") {
  for (double bound : {1e-3, 0.5, 1.0, 3.0, 150.0, 1e6}) {
    for (std::uint32_t n : {1u, 2u, 10u, 100u, 1000u, 100000u}) {
      const FixedPointCodec codec(bound, bound, n);
      const double s = codec.value_scale();
      int e = 0;
      CHECK(std::frexp(s, &e) == 0.5);  // a power of two
      CHECK(double(n) * (bound * s + 0.5) <= 2147483647.0);
      CHECK(double(n) * (bound * 2 * s + 0.5) > 2147483647.0);  // twice the scale would not be safe
      CHECK(codec.sum_error_bound(n) == Approx(double(n) * 0.5 / s));
    }
  }
  const FixedPointCodec c(1.0, 200.0, 100);
  CHECK(c.value_scale() == std::ldexp(1.0, 24));  // n = 100, B = 1: resolution 2^-24
  CHECK(FixedPointCodec::encoded_length(22180) == 22181);
  CHECK(FixedPointCodec::encoded_length(10, 2) == 31);
}

TEMPLATE_TEST_CASE("fixed-point encoding of one update round-trips within half a unit", "[secagg][fixed_point]", float,
                   double) {
  const double bound = 4.0, weight_bound = 200.0;
  const FixedPointCodec codec(bound, weight_bound, 10);
  Rng rng(11);
  std::vector<TestType> x(1000);
  const double w = 37.0;
  for (auto& v : x) v = TestType(rng.uniform(-bound / w, bound / w));
  x[0] = TestType(0.999 * bound / w);  // near the bound on both sides
  x[1] = TestType(-0.999 * bound / w);
  std::vector<std::uint32_t> enc(x.size() + 1);
  codec.encode(std::span<const TestType>(x), w, std::span<std::uint32_t>(enc));
  const FixedPointSum dec = codec.decode_sum(enc, 1);
  REQUIRE(dec.weighted_sum.size() == Index(x.size()));
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(dec.weighted_sum[Index(i)] - w * double(x[i])));
  CHECK(worst <= codec.sum_error_bound(1));
  CHECK(std::abs(dec.total_weight - w) <= codec.weight_error_bound(1));
  CHECK(dec.contributors == 1);
}

TEMPLATE_TEST_CASE("fixed-point sum of n encodings decodes within n * 0.5 / scale", "[secagg][fixed_point]", float,
                   double) {
  for (std::uint32_t n : {2u, 17u, 100u}) {
    const double bound = 150.0;  // |w x| <= 150: weights up to 150, |x| <= 1
    const FixedPointCodec codec(bound, 150.0, n);
    const std::size_t p = 513;
    Rng rng(100 + n);
    std::vector<std::uint32_t> sum(p + 1, 0);
    std::vector<long double> exact(p, 0.0L);
    long double weight = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const double w = double(1 + rng.uniform_int(150));
      std::vector<TestType> x(p);
      for (auto& v : x) v = TestType(rng.uniform(-1.0, 1.0));
      std::vector<std::uint32_t> enc(p + 1);
      codec.encode(std::span<const TestType>(x), w, std::span<std::uint32_t>(enc));
      for (std::size_t j = 0; j <= p; ++j) sum[j] += enc[j];
      for (std::size_t j = 0; j < p; ++j) exact[j] += (long double)(w * double(x[j]));  // fl(w x), as encoded
      weight += w;
    }
    const FixedPointSum dec = codec.decode_sum(sum, n);
    long double worst = 0;
    for (std::size_t j = 0; j < p; ++j) worst = std::max(worst, std::abs((long double)dec.weighted_sum[Index(j)] - exact[j]));
    INFO("n = " << n << ", worst error " << double(worst) << ", bound " << codec.sum_error_bound(n));
    CHECK(double(worst) <= codec.sum_error_bound(n));
    CHECK(std::abs(dec.total_weight - double(weight)) <= codec.weight_error_bound(n));
    const Vector<double> mean = dec.mean();
    CHECK(mean.size() == Index(p));
  }
}

TEST_CASE("fixed-point sums at the bound do not wrap around", "[secagg][fixed_point]") {
  const std::uint32_t n = 100;
  const double bound = 2.5;
  const FixedPointCodec codec(bound, 1.0, n);
  for (double v : {bound, -bound}) {
    const std::vector<double> x(8, v);
    std::vector<std::uint32_t> enc(9), sum(9, 0);
    codec.encode(std::span<const double>(x), 1.0, std::span<std::uint32_t>(enc));
    for (std::uint32_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < 9; ++j) sum[j] += enc[j];
    const FixedPointSum dec = codec.decode_sum(sum, n);
    for (Index j = 0; j < 8; ++j) CHECK(std::abs(dec.weighted_sum[j] - double(n) * v) <= codec.sum_error_bound(n));
    CHECK(dec.total_weight == Approx(100.0));
  }
}

TEST_CASE("fixed-point refuses values outside the bound, NaN, inf and bad weights", "[secagg][fixed_point]") {
  const FixedPointCodec codec(2.0, 10.0, 5);
  std::vector<std::uint32_t> out(5);
  const auto encode = [&](std::vector<double> x, double w) {
    codec.encode(std::span<const double>(x), w, std::span<std::uint32_t>(out));
  };
  CHECK_NOTHROW(encode({0.5, -0.5, 1.0, -1.0}, 2.0));  // |w x| = 2 = B is allowed
  CHECK_THROWS_WITH(encode({0.5, 1.25, 0.0, 0.0}, 2.0),
                    Contains("|w * x| = 2.5") && Contains("at index 1") && Contains("bound B = 2") &&
                        Contains("clip the update"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, 0.0, -3.0}, 1.0), Contains("|w * x| = 3") && Contains("at index 3"));
  CHECK_THROWS_WITH(encode({0.0, std::nan(""), 0.0, 0.0}, 1.0), Contains("non-finite value nan at index 1"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, std::numeric_limits<double>::infinity(), 0.0}, 1.0),
                    Contains("non-finite value inf at index 2"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, 0.0, 0.0}, 0.0), Contains("expected a weight in (0, 10]") && Contains("got 0"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, 0.0, 0.0}, 11.0), Contains("got 11"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, 0.0, 0.0}, std::nan("")), Contains("expected a weight"));
  CHECK_THROWS_WITH(encode({0.0, 0.0, 0.0}, 1.0), Contains("expected an output of 4 words"));
  CHECK_THROWS_WITH(codec.decode_sum(out, 6), Contains("expected 1 to 5 contributors") && Contains("got 6"));
  CHECK_THROWS_WITH(codec.decode_sum(out, 1, 2), Contains("expected P * 3 + 1 words"));
  CHECK_THROWS_WITH(FixedPointCodec(0.0, 1.0, 3), Contains("expected a finite value bound B > 0"));
  CHECK_THROWS_WITH(FixedPointCodec(1.0, -1.0, 3), Contains("expected a finite weight bound W > 0"));
  CHECK_THROWS_WITH(FixedPointCodec(1.0, 1.0, 0), Contains("expected max_clients >= 1"));
}

TEST_CASE("fixed-point encodes a ClientUpdate as w delta, w extras, then w", "[secagg][fixed_point]") {
  const FixedPointCodec codec(10.0, 10.0, 4);
  ClientUpdate<float> u;
  u.client = 3;
  u.num_samples = 4;
  u.delta = Vector<float>::Constant(3, 0.5f);
  u.extras.push_back(Vector<float>::Constant(3, -0.25f));
  const auto enc = codec.encode(u);
  REQUIRE(enc.size() == FixedPointCodec::encoded_length(3, 1));
  const FixedPointSum dec = codec.decode_sum(enc, 1, 1);
  CHECK(dec.weighted_sum.isApprox(Vector<double>::Constant(3, 2.0)));
  REQUIRE(dec.extras.size() == 1);
  CHECK(dec.extras[0].isApprox(Vector<double>::Constant(3, -1.0)));
  CHECK(dec.total_weight == Approx(4.0));
  CHECK(dec.mean().isApprox(Vector<double>::Constant(3, 0.5)));
  u.num_samples = 0;
  CHECK_THROWS_WITH(codec.encode(u), Contains("expected a weight in (0, 10]"));
  u.num_samples = 4;
  u.extras[0].resize(2);
  CHECK_THROWS_WITH(codec.encode(u), Contains("client 3's extra vector 0 has 2 values, expected 3"));
}

// ---------------------------------------------------------------------------------------------------
// Shamir
// ---------------------------------------------------------------------------------------------------

TEST_CASE("Shamir reconstructs from any t of n shares", "[secagg][shamir]") {
  Rng rng(5);
  const std::vector<std::uint64_t> secret = {12345, shamir::prime - 1, 0, 987654321987654ULL};
  const std::uint32_t n = 7, t = 4;
  std::vector<std::uint64_t> xs;
  for (std::uint64_t x = 1; x <= n; ++x) xs.push_back(x * 1000003);  // any distinct nonzero points
  const auto shares = shamir::split(std::span<const std::uint64_t>(secret), t, xs, rng);
  REQUIRE(shares.size() == n);
  int subsets = 0;
  for (unsigned mask = 0; mask < (1u << n); ++mask) {
    if (std::popcount(mask) < int(t)) continue;
    std::vector<shamir::Share> pick;
    for (std::uint32_t i = 0; i < n; ++i)
      if (mask & (1u << i)) pick.push_back(shares[i]);
    CHECK(shamir::reconstruct(pick, t) == secret);
    std::reverse(pick.begin(), pick.end());  // order does not matter
    CHECK(shamir::reconstruct(pick, t) == secret);
    ++subsets;
  }
  CHECK(subsets == 35 + 21 + 7 + 1);  // C(7,4) + C(7,5) + C(7,6) + C(7,7)
  // t = 1 is the secret itself at every point; t = n needs every share.
  const auto all = shamir::split(std::span<const std::uint64_t>(secret), n, xs, rng);
  CHECK(shamir::reconstruct(all, n) == secret);
}

TEST_CASE("Shamir byte secrets round-trip through 7-byte chunks", "[secagg][shamir]") {
  Rng rng(6);
  for (std::size_t bytes : {1u, 7u, 8u, 32u, 33u}) {
    std::vector<std::uint8_t> secret(bytes);
    for (auto& b : secret) b = std::uint8_t(rng());
    const std::vector<std::uint64_t> xs = {3, 1, 4, 10, 5};
    const auto shares = shamir::split_bytes(secret, 3, xs, rng);
    REQUIRE(shares[0].y.size() == shamir::chunks_for(bytes));
    const std::vector<shamir::Share> pick = {shares[4], shares[0], shares[2]};
    CHECK(shamir::reconstruct_bytes(pick, 3, bytes) == secret);
  }
}

TEST_CASE("Shamir refuses t - 1 shares, duplicates, x = 0 and values outside the field", "[secagg][shamir]") {
  Rng rng(7);
  const std::vector<std::uint64_t> secret = {42, 43};
  const std::vector<std::uint64_t> xs = {1, 2, 3, 4, 5};
  const auto shares = shamir::split(std::span<const std::uint64_t>(secret), 3, xs, rng);
  const std::vector<shamir::Share> two = {shares[0], shares[1]};
  CHECK_THROWS_WITH(shamir::reconstruct(two, 3), Contains("expected at least t = 3 shares, got 2"));
  std::vector<shamir::Share> dup = {shares[0], shares[1], shares[1]};
  CHECK_THROWS_WITH(shamir::reconstruct(dup, 3), Contains("duplicate x coordinate 2"));
  std::vector<shamir::Share> zero = {shares[0], shares[1], {0, {42, 43}}};
  CHECK_THROWS_WITH(shamir::reconstruct(zero, 3), Contains("x coordinate 0"));
  std::vector<shamir::Share> big_x = {shares[0], shares[1], {shamir::prime, {1, 2}}};
  CHECK_THROWS_WITH(shamir::reconstruct(big_x, 3), Contains("is outside the field"));
  std::vector<shamir::Share> big_y = {shares[0], shares[1], {9, {1, shamir::prime}}};
  CHECK_THROWS_WITH(shamir::reconstruct(big_y, 3), Contains("element 1 = 2305843009213693951 is outside the field"));
  std::vector<shamir::Share> ragged = {shares[0], shares[1], {9, {1}}};
  CHECK_THROWS_WITH(shamir::reconstruct(ragged, 3), Contains("share 2 has 1 field elements, expected 2"));
  CHECK_THROWS_WITH(shamir::reconstruct(shares, 0), Contains("expected a threshold t >= 1"));
  // Splitting refuses the same.
  const std::vector<std::uint64_t> bad = {1, 2, 2};
  CHECK_THROWS_WITH(shamir::split(std::span<const std::uint64_t>(secret), 2, bad, rng),
                    Contains("duplicate x coordinate 2"));
  const std::vector<std::uint64_t> few = {1, 2};
  CHECK_THROWS_WITH(shamir::split(std::span<const std::uint64_t>(secret), 3, few, rng),
                    Contains("expected at least t = 3 parties, got 2"));
  const std::vector<std::uint64_t> big_secret = {shamir::prime};
  CHECK_THROWS_WITH(shamir::split(std::span<const std::uint64_t>(big_secret), 2, xs, rng), Contains("outside the field"));
}

TEST_CASE("Shamir detects a share that is inconsistent with the others", "[secagg][shamir]") {
  Rng rng(8);
  const std::vector<std::uint64_t> secret = {7, 8, 9};
  const std::vector<std::uint64_t> xs = {1, 2, 3, 4, 5, 6};
  auto shares = shamir::split(std::span<const std::uint64_t>(secret), 3, xs, rng);
  CHECK(shamir::reconstruct(shares, 3) == secret);  // all 6: the 3 extra ones agree
  shares[4].y[1] = shamir::detail::add(shares[4].y[1], 1);
  CHECK_THROWS_WITH(shamir::reconstruct(shares, 3), Contains("the share with x = 5 is inconsistent"));
  // With exactly t shares a forged one cannot be detected (it just gives another secret).
  const std::vector<shamir::Share> three = {shares[0], shares[1], shares[4]};
  CHECK(shamir::reconstruct(three, 3) != secret);
}

TEST_CASE("Shamir field arithmetic reduces modulo 2^61 - 1", "[secagg][shamir]") {
  using namespace shamir::detail;
  const std::uint64_t p = shamir::prime;
  CHECK(mul(p - 1, p - 1) == 1);  // (-1)^2
  CHECK(add(p - 1, 1) == 0);
  CHECK(sub(0, 1) == p - 1);
  Rng rng(9);
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t a = 1 + rng.uniform_int(p - 1);
    CHECK(mul(a, inv(a)) == 1);
  }
}

// ---------------------------------------------------------------------------------------------------
// Secure aggregation: configuration and graph
// ---------------------------------------------------------------------------------------------------

TEST_CASE("secure aggregation validates n, t, L and k up front", "[secagg]") {
  CHECK_NOTHROW(check_secagg_config(make_config(5, 3, 10)));
  CHECK_THROWS_WITH(check_secagg_config(make_config(4, 2, 10)), Contains("4/2 < t <= 4") && Contains("got t = 2"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(4, 5, 10)), Contains("got t = 5"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(1, 1, 10)), Contains("got n = 1"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(5, 3, 0)), Contains("got L = 0"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(10, 3, 10, 3)), Contains("got k = 3"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(10, 3, 10, 10)), Contains("got k = 10"));
  CHECK_THROWS_WITH(check_secagg_config(make_config(10, 2, 10, 4)), Contains("5/2 < t <= 5") && Contains("got t = 2"));
  CHECK_NOTHROW(check_secagg_config(make_config(10, 3, 10, 4)));
  CHECK_THROWS_WITH(SecAggServer(make_config(4, 2, 10)), Contains("t > h/2"));
  CHECK_THROWS_WITH(SecAggClient(make_config(5, 3, 10), 5, SecAggEntropy::deterministic(1, 5)),
                    Contains("expected a client id < n = 5, got 5"));
}

TEST_CASE("SecAgg+ Harary graph is symmetric and k-regular with the client itself among its holders", "[secagg]") {
  const SecAggConfig c = make_config(15, 4, 10, 6);
  const SecAggGraph g(c);
  CHECK_FALSE(g.complete());
  for (std::uint32_t u = 0; u < 15; ++u) {
    const auto h = g.holders(u);
    CHECK(h.size() == 7);
    CHECK(std::is_sorted(h.begin(), h.end()));
    CHECK(std::adjacent_find(h.begin(), h.end()) == h.end());
    CHECK(g.holds(u, u));
    for (auto v : h) CHECK(g.holds(u, v));  // symmetric
  }
  // Another round relabels the ring.
  const SecAggGraph g2(make_config(15, 4, 10, 6, 2));
  bool differs = false;
  for (std::uint32_t u = 0; u < 15; ++u)
    differs = differs || !std::equal(g.holders(u).begin(), g.holders(u).end(), g2.holders(u).begin());
  CHECK(differs);
  const SecAggGraph full(make_config(5, 3, 10));
  CHECK(full.complete());
  CHECK(full.holders(2).size() == 5);
}

// ---------------------------------------------------------------------------------------------------
// Secure aggregation: correctness
// ---------------------------------------------------------------------------------------------------

TEST_CASE("secure sum equals the plain weighted sum within the fixed-point bound", "[secagg]") {
  struct Case {
    std::uint32_t n, t, k;
    Index p;
  };
  for (const Case& cs : {Case{2, 2, 0, 1}, Case{3, 2, 0, 5}, Case{5, 3, 0, 100}, Case{8, 5, 0, 1000},
                        Case{10, 6, 0, 4097}, Case{10, 10, 0, 50}, Case{12, 3, 4, 300}, Case{20, 4, 6, 4096}}) {
    INFO("n = " << cs.n << ", t = " << cs.t << ", k = " << cs.k << ", P = " << cs.p);
    const FixedPointCodec codec(150.0, 150.0, cs.n);
    Rng rng(1000 + cs.n * 7 + std::uint64_t(cs.p));
    std::vector<ClientUpdate<float>> updates(cs.n);
    std::vector<std::vector<std::uint32_t>> x(cs.n);
    Vector<double> plain = Vector<double>::Zero(cs.p);
    double weight = 0;
    for (std::uint32_t u = 0; u < cs.n; ++u) {
      auto& up = updates[u];
      up.client = u;
      up.num_samples = Index(1 + rng.uniform_int(150));
      up.delta.resize(cs.p);
      for (Index i = 0; i < cs.p; ++i) up.delta[i] = rng.uniform<float>(-1.f, 1.f);
      x[u] = codec.encode(up);
      plain += double(up.num_samples) * up.delta.cast<double>();
      weight += double(up.num_samples);
    }
    Federation f(make_config(cs.n, cs.t, FixedPointCodec::encoded_length(cs.p), cs.k), 42 + cs.n);
    const SecAggResult r = f.run(x);
    REQUIRE(r.contributors.size() == cs.n);
    CHECK(r.sum == plain_sum(x, r.contributors));  // exact in Z_2^32
    const FixedPointSum dec = codec.decode_sum(r.sum, cs.n);
    const double worst = (dec.weighted_sum - plain).cwiseAbs().maxCoeff();
    CHECK(worst <= codec.sum_error_bound(cs.n) + 1e-12 * double(cs.n) * 150.0);
    CHECK(std::abs(dec.total_weight - weight) <= codec.weight_error_bound(cs.n));
  }
}

TEST_CASE("secure aggregation recovers every number of dropouts after key sharing up to n - t", "[secagg][dropout]") {
  for (const auto& [n, t] : {std::pair<std::uint32_t, std::uint32_t>{7, 4}, {6, 4}, {5, 3}}) {
    const auto x = random_inputs(n, 300, n);
    for (std::uint32_t d = 0; d <= n - t + 1; ++d) {
      INFO("n = " << n << ", t = " << t << ", " << d << " clients drop before sending their masked input");
      Dropouts drop;
      for (std::uint32_t i = 0; i < d; ++i) drop.no_masked.insert((2 * i + 1) % n);  // spread over the ids
      REQUIRE(drop.no_masked.size() == d);
      Federation f(make_config(n, t, 300), 7 + d);
      if (d <= n - t) {
        const SecAggResult r = f.run(x, drop);
        CHECK(r.contributors == all_but(n, drop.no_masked));
        CHECK(r.dropped == std::vector<std::uint32_t>(drop.no_masked.begin(), drop.no_masked.end()));
        CHECK(r.sum == plain_sum(x, r.contributors));
      } else {
        f.advertise(drop);
        f.share(drop);
        f.mask(f.deliveries(), x, drop);
        CHECK_THROWS_WITH(f.server.unmask_request(),
                          Contains(std::to_string(t - 1) + " masked inputs arrived") &&
                              Contains("(of " + std::to_string(n) + " at the previous step: " + std::to_string(d) +
                                       " dropped)") &&
                              Contains("threshold t = " + std::to_string(t)) &&
                              Contains("at most n - t = " + std::to_string(n - t)));
      }
    }
  }
}

TEST_CASE("secure aggregation recovers every number of dropouts after the masked input up to n - t", "[secagg][dropout]") {
  const std::uint32_t n = 7, t = 4;
  const auto x = random_inputs(n, 200, 3);
  for (std::uint32_t d = 0; d <= n - t + 1; ++d) {
    INFO(d << " clients drop after sending their masked input (no unmask response)");
    Dropouts drop;
    for (std::uint32_t i = 0; i < d; ++i) drop.no_unmask.insert(n - 1 - 2 * i % n);
    REQUIRE(drop.no_unmask.size() == d);
    Federation f(make_config(n, t, 200), 70 + d);
    if (d <= n - t) {
      const SecAggResult r = f.run(x, drop);
      CHECK(r.contributors == all_but(n, {}));  // their inputs arrived: they are in the sum
      CHECK(r.dropped.empty());
      CHECK(r.sum == plain_sum(x, r.contributors));
    } else {
      CHECK_THROWS_WITH(f.run(x, drop), Contains("SecAggServer::finish: 3 unmask responses arrived") &&
                                            Contains("threshold t = 4"));
    }
  }
  // Both kinds at once: 1 before its masked input, 2 after, 3 = n - t in all.
  Dropouts mixed;
  mixed.no_masked = {2};
  mixed.no_unmask = {0, 6};
  Federation f(make_config(n, t, 200), 99);
  const SecAggResult r = f.run(x, mixed);
  CHECK(r.contributors == all_but(n, {2}));
  CHECK(r.sum == plain_sum(x, r.contributors));
  // One more after the masked input leaves t - 1 responders.
  mixed.no_unmask.insert(4);
  Federation g(make_config(n, t, 200), 99);
  CHECK_THROWS_WITH(g.run(x, mixed), Contains("3 unmask responses arrived"));
}

TEST_CASE("clients that drop before masking are simply excluded from the sum", "[secagg][dropout]") {
  const std::uint32_t n = 8, t = 5;
  const auto x = random_inputs(n, 100, 4);
  Dropouts drop;
  drop.no_advertise = {1};  // never heard of
  drop.no_share = {3, 6};   // advertised keys, then left
  Federation f(make_config(n, t, 100), 5);
  const SecAggResult r = f.run(x, drop);
  CHECK(f.server.advertised() == all_but(n, {1}));
  CHECK(f.server.shared() == all_but(n, {1, 3, 6}));
  CHECK(r.contributors == all_but(n, {1, 3, 6}));
  CHECK(r.dropped.empty());
  CHECK(r.sum == plain_sum(x, r.contributors));
  // Too few to go on: key sharing closes with t - 1.
  Dropouts many;
  many.no_advertise = {0, 1};
  many.no_share = {2, 3};
  Federation g(make_config(n, t, 100), 5);
  g.advertise(many);
  g.share(many);
  CHECK_THROWS_WITH(g.server.share_deliveries(),
                    Contains("SecAggServer::share_deliveries: 4 clients shared keys (of 6 at the previous step: 2 dropped)"));
  Dropouts none_advertise;
  for (std::uint32_t u = 0; u < 4; ++u) none_advertise.no_advertise.insert(u);
  Federation h(make_config(n, t, 100), 5);
  h.advertise(none_advertise);
  CHECK_THROWS_WITH(h.server.key_directory(), Contains("4 clients advertised keys"));
}

TEST_CASE("SecAgg+ sparse graph sums correctly and recovers dropouts", "[secagg][dropout]") {
  const std::uint32_t n = 16, k = 6, t = 4;  // 7 holders per secret, t > 7/2
  const auto x = random_inputs(n, 500, 6);
  Dropouts drop;
  drop.no_share = {5};
  drop.no_masked = {0, 9};
  drop.no_unmask = {12};
  Federation f(make_config(n, t, 500, k), 8);
  const SecAggResult r = f.run(x, drop);
  CHECK(r.contributors == all_but(n, {0, 5, 9}));
  CHECK(r.dropped == std::vector<std::uint32_t>{0, 9});
  CHECK(r.sum == plain_sum(x, r.contributors));
  // Each client's share messages go to its 6 neighbours only.
  Federation g(make_config(n, t, 500, k), 8);
  g.advertise({});
  const auto dir = wire(g.server.key_directory());
  const auto sk = g.clients[3].share_keys(dir);
  CHECK(sk.shares.size() == k);
}

TEST_CASE("secure aggregation also runs on the system CSPRNG", "[secagg]") {
  const std::uint32_t n = 5, t = 3;
  const SecAggConfig c = make_config(n, t, 64);
  const auto x = random_inputs(n, 64, 10);
  std::vector<SecAggClient> clients;
  for (std::uint32_t u = 0; u < n; ++u) clients.emplace_back(c, u);  // SecAggEntropy::system()
  SecAggServer server(c);
  for (auto& cl : clients) server.receive(wire(cl.advertise_keys()));
  const auto dir = wire(server.key_directory());
  for (auto& cl : clients) server.receive(wire(cl.share_keys(dir)));
  for (const auto& d : server.share_deliveries())
    if (d.recipient != 4) server.receive(wire(clients[d.recipient].masked_input(wire(d), x[d.recipient])));
  const auto req = wire(server.unmask_request());
  for (auto u : req.survivors) server.receive(wire(clients[u].unmask(req)));
  const SecAggResult r = server.finish();
  CHECK(r.contributors == std::vector<std::uint32_t>{0, 1, 2, 3});
  CHECK(r.sum == plain_sum(x, r.contributors));
}

TEST_CASE("deterministic entropy makes a protocol run reproducible", "[secagg]") {
  const auto x = random_inputs(4, 50, 11);
  const auto masked_of = [&](std::uint64_t seed) {
    Federation f(make_config(4, 3, 50), seed);
    f.advertise({});
    f.share({});
    const auto ds = f.deliveries();
    return f.clients[0].masked_input(ds[0], x[0]).masked;
  };
  CHECK(masked_of(1) == masked_of(1));
  CHECK(masked_of(1) != masked_of(2));
  CHECK(masked_of(1) != x[0]);
}

// ---------------------------------------------------------------------------------------------------
// Secure aggregation: what the server sees
// ---------------------------------------------------------------------------------------------------

TEST_CASE("a masked input is statistically indistinguishable from uniform bytes", "[secagg][privacy]") {
  // An all-zero input, the most structured there is: what the server holds is the masks alone.
  // Chi-square of its 4 L bytes over 256 bins (255 degrees of freedom) against the fixed p = 1e-4
  // critical value; the seeds are fixed, so the outcome is too.
  const std::uint64_t length = 1u << 16;  // 262144 bytes, 1024 expected per bin
  const std::vector<std::vector<std::uint32_t>> x(3, std::vector<std::uint32_t>(length, 0));
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    Federation f(make_config(3, 2, length), seed);
    f.advertise({});
    f.share({});
    const auto ds = f.deliveries();
    for (std::uint32_t u = 0; u < 3; ++u) {
      const secagg::MaskedInput m = wire(f.clients[u].masked_input(ds[u], x[u]));
      const double chi2 = chi_square_bytes(m.masked);
      INFO("seed " << seed << ", client " << u << ": chi-square " << chi2 << " (critical " << chi2_255_p1e4 << ")");
      CHECK(chi2 < chi2_255_p1e4);
    }
  }
  // The test has power: a fixed-point encoding of small values is far from uniform.
  const FixedPointCodec codec(1.0, 1.0, 3);
  std::vector<double> small(length - 1);
  Rng rng(12);
  for (auto& v : small) v = rng.uniform(-0.01, 0.01);
  std::vector<std::uint32_t> enc(length);
  codec.encode(std::span<const double>(small), 1.0, std::span<std::uint32_t>(enc));
  CHECK(chi_square_bytes(enc) > 10 * chi2_255_p1e4);
}

// ---------------------------------------------------------------------------------------------------
// Secure aggregation: tampering and malformed messages
// ---------------------------------------------------------------------------------------------------

namespace {
/// Runs rounds 0 and 1 of a 5-client aggregation and returns the share deliveries.
struct SharedRound {
  Federation f;
  std::vector<secagg::ShareDelivery> deliveries;
  SharedRound(std::uint64_t round, std::uint64_t seed = 21) : f(make_config(5, 3, 32, 0, round), seed) {
    f.advertise({});
    f.share({});
    deliveries = f.deliveries();
  }
};
const std::vector<std::uint32_t> zeros32(32, 0);
}  // namespace

TEST_CASE("a tampered share fails authentication", "[secagg][tamper]") {
  SharedRound s(1);
  secagg::ShareDelivery d = s.deliveries[2];
  REQUIRE(d.shares[1].peer == 1);
  d.shares[1].ciphertext[17] ^= 0x01;  // an attacker recomputes the CRC: it is not a MAC
  CHECK_THROWS_WITH(s.f.clients[2].masked_input(wire(d), zeros32),
                    Contains("SecAggClient 2: the share from client 1 failed authentication (round 1, sender 1, recipient 2)"));
  secagg::ShareDelivery n = s.deliveries[2];
  n.shares[0].nonce[0] ^= 0x80;
  CHECK_THROWS_WITH(s.f.clients[2].masked_input(wire(n), zeros32), Contains("the share from client 0 failed authentication"));
  // The client is unchanged by the refusal: the genuine delivery still works.
  CHECK_NOTHROW(s.f.clients[2].masked_input(s.deliveries[2], zeros32));
}

TEST_CASE("a share replayed from another round fails authentication", "[secagg][tamper]") {
  // Same seeds in both rounds, so every client draws the same keys: only the round id differs.
  SharedRound r1(1), r2(2);
  secagg::ShareDelivery replay = r1.deliveries[3];
  replay.round_id = 2;  // relabelled for round 2
  CHECK_THROWS_WITH(r2.f.clients[3].masked_input(wire(replay), zeros32),
                    Contains("SecAggClient 3: the share from client 0 failed authentication (round 2, sender 0, recipient 3)") &&
                        Contains("replayed from another round"));
  // Not relabelled, it is refused before any decryption.
  CHECK_THROWS_WITH(r2.f.clients[3].masked_input(r1.deliveries[3], zeros32),
                    Contains("a share delivery of round 1, expected round 2"));
  CHECK_NOTHROW(r2.f.clients[3].masked_input(r2.deliveries[3], zeros32));
}

TEST_CASE("a share delivered to another recipient fails authentication", "[secagg][tamper]") {
  SharedRound s(1);
  // Client 0's share for client 1, put in client 4's delivery in place of client 0's share for 4.
  secagg::ShareDelivery to4 = s.deliveries[4];
  const secagg::ShareDelivery& to1 = s.deliveries[1];
  REQUIRE(to4.shares[0].peer == 0);
  REQUIRE(to1.shares[0].peer == 0);
  to4.shares[0] = to1.shares[0];
  CHECK_THROWS_WITH(s.f.clients[4].masked_input(wire(to4), zeros32),
                    Contains("SecAggClient 4: the share from client 0 failed authentication (round 1, sender 0, recipient 4)") &&
                        Contains("addressed to another client"));
  // A whole delivery readdressed: refused by the recipient check.
  secagg::ShareDelivery readdressed = s.deliveries[1];
  readdressed.recipient = 4;
  CHECK_THROWS_WITH(s.f.clients[1].masked_input(wire(readdressed), zeros32),
                    Contains("a share delivery addressed to client 4"));
}

TEST_CASE("a share attributed to another sender fails authentication", "[secagg][tamper]") {
  SharedRound s(1);
  secagg::ShareDelivery d = s.deliveries[0];
  REQUIRE(d.shares.size() == 4);
  std::swap(d.shares[1].peer, d.shares[2].peer);  // client 2's share labelled as client 3's and back
  std::swap(d.shares[1], d.shares[2]);             // keep the senders ascending
  CHECK_THROWS_WITH(s.f.clients[0].masked_input(wire(d), zeros32),
                    Contains("SecAggClient 0: the share from client 2 failed authentication (round 1, sender 2, recipient 0)"));
}

TEST_CASE("truncated, corrupted, over-long and mislabelled messages are rejected", "[secagg][tamper]") {
  SharedRound s(1);
  const std::vector<std::uint8_t> bytes = s.deliveries[0].serialize();
  using D = secagg::ShareDelivery;
  // Truncated: by one byte, and to less than a header.
  std::vector<std::uint8_t> cut(bytes.begin(), bytes.end() - 1);
  CHECK_THROWS_WITH(D::parse(cut), Contains("secagg 'share_delivery' message: length mismatch") &&
                                       Contains("(truncated)"));
  std::vector<std::uint8_t> stub(bytes.begin(), bytes.begin() + 20);
  CHECK_THROWS_WITH(D::parse(stub), Contains("truncated: 20 bytes, expected at least the 32-byte header"));
  CHECK_THROWS_WITH(D::parse({}), Contains("truncated: 0 bytes"));
  // Over-long.
  std::vector<std::uint8_t> longer = bytes;
  longer.push_back(0);
  CHECK_THROWS_WITH(D::parse(longer), Contains("(trailing bytes)"));
  // Corrupted anywhere: header or body.
  for (std::size_t at : {std::size_t(17), std::size_t(40), bytes.size() - 1}) {
    std::vector<std::uint8_t> bad = bytes;
    bad[at] ^= 0x10;
    CHECK_THROWS_WITH(D::parse(bad), Contains("checksum mismatch") && Contains("(corrupted message)"));
  }
  // Wrong kind, version, magic.
  const std::vector<std::uint8_t> req = secagg::UnmaskRequest{1, {0, 1, 2}, {3}}.serialize();
  CHECK_THROWS_WITH(D::parse(req), Contains("expected kind 4 ('share_delivery'), got kind 6 ('unmask_request')"));
  CHECK(secagg::peek_kind(req) == secagg::MessageKind::unmask_request);
  std::vector<std::uint8_t> v2 = bytes;
  v2[4] = 2;
  CHECK_THROWS_WITH(D::parse(v2), Contains("version 2, expected 1"));
  std::vector<std::uint8_t> alien = bytes;
  alien[0] = 'X';
  CHECK_THROWS_WITH(D::parse(alien), Contains("bad magic"));
  // A hostile count with a valid checksum: refused before anything is allocated.
  std::vector<std::uint8_t> hostile = req;
  for (int i = 0; i < 4; ++i) hostile[32 + std::size_t(i)] = 0xff;  // survivor count = 2^32 - 1
  secagg::detail::store_le32(hostile.data() + 8, secagg::detail::checksum(std::span<const std::uint8_t>(hostile).first(32),
                                                                         std::span<const std::uint8_t>(hostile).subspan(32)));
  CHECK_THROWS_WITH(secagg::UnmaskRequest::parse(hostile),
                    Contains("announces 4294967295 survivor ids of 4 bytes, but only 20 body bytes are left"));
  // Every kind round-trips.
  const auto keys = secagg::AdvertiseKeys::parse(secagg::AdvertiseKeys{1, {2, {1, 2}, {3}}}.serialize());
  CHECK(keys.keys.client == 2);
  CHECK(keys.keys.c_pk[1] == 2);
  const auto r = secagg::UnmaskRequest::parse(req);
  CHECK(r.survivors == std::vector<std::uint32_t>{0, 1, 2});
  CHECK(r.dropped == std::vector<std::uint32_t>{3});
  CHECK(D::parse(bytes).shares == s.deliveries[0].shares);
  const secagg::UnmaskResponse resp{1, 3, {{4, secagg::SecretKind::mask_key, {1, 2, 3, 4, 5}}}};
  CHECK(secagg::UnmaskResponse::parse(resp.serialize()).shares == resp.shares);
  std::vector<std::uint8_t> bad_kind = resp.serialize();
  bad_kind[32 + 4 + 4 + 4] = 9;  // the secret kind byte
  secagg::detail::store_le32(bad_kind.data() + 8,
                             secagg::detail::checksum(std::span<const std::uint8_t>(bad_kind).first(32),
                                                      std::span<const std::uint8_t>(bad_kind).subspan(32)));
  CHECK_THROWS_WITH(secagg::UnmaskResponse::parse(bad_kind), Contains("secret kind 9 for owner 4"));
}

TEST_CASE("protocol misuse is refused and leaves client and server unchanged", "[secagg][tamper]") {
  const std::uint32_t n = 5, t = 3;
  const auto x = random_inputs(n, 16, 13);
  Federation f(make_config(n, t, 16), 31);
  // Out of order.
  CHECK_THROWS_WITH(f.clients[0].unmask({}), Contains("SecAggClient 0: unmask called in phase 'created'"));
  CHECK_THROWS_WITH(f.server.unmask_request(), Contains("'unmask_request' in phase 'advertise_keys'"));
  // Round 0: wrong round, unknown sender, duplicate.
  auto a0 = f.clients[0].advertise_keys();
  auto wrong = a0;
  wrong.round_id = 9;
  CHECK_THROWS_WITH(f.server.receive(wrong), Contains("of round 9, expected round 1"));
  auto stranger = a0;
  stranger.keys.client = 7;
  CHECK_THROWS_WITH(f.server.receive(stranger), Contains("from client 7, expected ids < n = 5"));
  f.server.receive(a0);
  CHECK_THROWS_WITH(f.server.receive(a0), Contains("a second advertise_keys message from client 0"));
  auto copycat = f.clients[1].advertise_keys();
  copycat.keys.s_pk = a0.keys.s_pk;
  CHECK_THROWS_WITH(f.server.receive(copycat), Contains("client 1 advertises a public key of client 0"));
  for (std::uint32_t u = 2; u < n; ++u) f.server.receive(f.clients[u].advertise_keys());
  // Client 1's refused advertisement cannot be repeated: it is out of this aggregation (not in U1).
  CHECK_THROWS_WITH(f.clients[1].advertise_keys(), Contains("advertise_keys called in phase 'advertised'"));
  auto dir = f.server.key_directory();  // U1 = {0, 2, 3, 4}
  CHECK(f.server.advertised() == std::vector<std::uint32_t>{0, 2, 3, 4});
  // A directory that disagrees with the client's configuration, or misses it.
  auto bad_dir = dir;
  bad_dir.config.threshold = 4;
  CHECK_THROWS_WITH(f.clients[0].share_keys(bad_dir), Contains("the key directory announces n = 5, t = 4"));
  CHECK_THROWS_WITH(f.clients[1].share_keys(dir), Contains("the key directory does not list this client"));
  auto swapped = dir;
  std::swap(swapped.clients[0].c_pk, swapped.clients[0].s_pk);
  CHECK_THROWS_WITH(f.clients[0].share_keys(swapped), Contains("other public keys for this client than it advertised"));
  // Round 1: a share message that skips a recipient.
  auto sk0 = f.clients[0].share_keys(dir);
  auto partial = sk0;
  partial.shares.pop_back();
  CHECK_THROWS_WITH(f.server.receive(partial), Contains("client 0 sent 2 encrypted shares, expected 3"));
  auto misrouted = sk0;
  std::swap(misrouted.shares[0], misrouted.shares[1]);
  CHECK_THROWS_WITH(f.server.receive(misrouted), Contains("client 0's share 0 is addressed to client 3, expected client 2"));
  f.server.receive(sk0);
  CHECK_THROWS_WITH(f.server.receive(sk0), Contains("a second share_keys message from client 0"));
  for (std::uint32_t u : {2u, 3u, 4u}) f.server.receive(f.clients[u].share_keys(dir));
  const auto ds = f.server.share_deliveries();
  // Round 2: wrong input length, then a masked input from a client that did not share keys.
  CHECK_THROWS_WITH(f.clients[0].masked_input(ds[0], std::vector<std::uint32_t>(15)),
                    Contains("an input of 15 words, expected L = 16"));
  secagg::MaskedInput ghost{1, 1, std::vector<std::uint32_t>(16)};
  CHECK_THROWS_WITH(f.server.receive(ghost), Contains("masked_input from client 1, which did not share keys"));
  for (const auto& d : ds) f.server.receive(f.clients[d.recipient].masked_input(d, x[d.recipient]));
  CHECK_THROWS_WITH(f.server.receive(f.clients[0].unmask({})), Contains("an unmask request of round 0"));
  const auto req = f.server.unmask_request();
  // Round 3: inconsistent requests are refused by the client.
  auto both = req;
  both.dropped.push_back(2);
  CHECK_THROWS_WITH(f.clients[0].unmask(both), Contains("lists client 2 both as a survivor and as dropped"));
  auto missing = req;
  missing.survivors.erase(std::find(missing.survivors.begin(), missing.survivors.end(), 3u));
  CHECK_THROWS_WITH(f.clients[0].unmask(missing), Contains("lists client 3 (which shared keys with this client) neither"));
  auto phantom = req;
  phantom.survivors.insert(phantom.survivors.begin() + 1, 1u);
  CHECK_THROWS_WITH(f.clients[0].unmask(phantom), Contains("lists client 1 as a survivor, but its shares never reached"));
  auto resp0 = f.clients[0].unmask(req);
  CHECK_THROWS_WITH(f.clients[0].unmask(req), Contains("already answered an unmask request in round 1"));
  auto lying = resp0;
  lying.shares[1].kind = secagg::SecretKind::mask_key;
  CHECK_THROWS_WITH(f.server.receive(lying), Contains("revealed its share of client 2's mask key, expected its self-mask seed"));
  f.server.receive(resp0);
  CHECK_THROWS_WITH(f.server.receive(resp0), Contains("a second unmask_response message from client 0"));
  for (std::uint32_t u : {2u, 3u, 4u}) f.server.receive(f.clients[u].unmask(req));
  const SecAggResult r = f.server.finish();
  CHECK(r.contributors == std::vector<std::uint32_t>{0, 2, 3, 4});
  CHECK(r.sum == plain_sum(x, r.contributors));
  CHECK_THROWS_WITH(f.server.finish(), Contains("'finish' in phase 'done'"));
}

TEST_CASE("a wrong revealed share is detected at reconstruction", "[secagg][tamper]") {
  const std::uint32_t n = 6, t = 4;
  const auto x = random_inputs(n, 40, 14);
  Dropouts drop;
  drop.no_masked = {5};
  for (bool all_respond : {true, false}) {
    Federation f(make_config(n, t, 40), 41);
    f.advertise(drop);
    f.share(drop);
    f.mask(f.deliveries(), x, drop);
    const auto req = wire(f.server.unmask_request());
    REQUIRE(req.dropped == std::vector<std::uint32_t>{5});
    // Client 0 lies about its share of the dropped client 5's mask key.
    auto lie = f.clients[0].unmask(req);
    REQUIRE(lie.shares.back().owner == 5);
    lie.shares.back().y[0] = shamir::detail::add(lie.shares.back().y[0], 1);
    f.server.receive(wire(lie));
    // With 5 responders the extra share exposes the inconsistency; with exactly t = 4 the
    // reconstructed key fails the check against the advertised public key.
    for (std::uint32_t u = 1; u < (all_respond ? 5u : 4u); ++u) f.server.receive(wire(f.clients[u].unmask(req)));
    if (all_respond)
      CHECK_THROWS_WITH(f.server.finish(), Contains("reconstructing client 5's mask key") && Contains("is inconsistent"));
    else  // the forged key fails the 7-byte chunk check or the check against its public key
      CHECK_THROWS_WITH(f.server.finish(), Contains("client 5") && (Contains("does not match its advertised public key") ||
                                                                    Contains("is not a chunk of 7 bytes")));
  }
}
