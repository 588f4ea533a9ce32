// The personal mixtures' pieces: the label-shift gate (moe/label_shift_gate.hpp; its prior is the
// label-shift posterior, its gradients pass the central-difference check, alone and inside a mixture
// with trainable experts), the gate AUC (training/metrics.hpp) against a brute-force count, and the
// generic client results' byte encoding (federated/client_result.hpp: round trip, and every truncation
// or corruption refused without reading past the end).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <fedmoe/fedmoe.hpp>

#include "gradient_check.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;
using fedmoe::test::gradient_error;
using fedmoe::test::GradTolerance;
using fedmoe::test::model_gradient_error;
using fedmoe::test::random_batch;

namespace {

constexpr Index kExpertClasses = 4;

/// Log-probabilities of `experts` experts for n samples (each column block a distribution).
Matrix<double> stacked_log_probs(Index experts, Index n, std::uint64_t seed) {
  Matrix<double> z = 3 * random_batch<double>(experts * kExpertClasses, n, seed);
  for (Index k = 0; k < experts; ++k)
    for (Index j = 0; j < n; ++j) {
      auto c = z.col(j).segment(k * kExpertClasses, kExpertClasses);
      const double lse = std::log(c.array().exp().sum());
      c.array() -= lse;
    }
  return z;
}

}  // namespace

TEST_CASE("the label-shift gate starts at the label-shift posterior r / (1 + r)", "[personal_mixtures]") {
  const std::vector<double> counts{40, 40, 15, 5};
  const auto lw = LabelShiftGate<double>::log_weights_from_counts(counts);
  REQUIRE(lw.size() == 4);
  CHECK(lw[0] == Approx(std::log((41.0 / 104) / 0.25)));
  CHECK(lw[3] == Approx(std::log((6.0 / 104) / 0.25)));
  const Matrix<double> x = stacked_log_probs(1, 5, 1);
  LabelShiftGate<double> fed({ExpertPrior::federation}, lw);
  const Matrix<double> h = fed.forward(x);
  for (Index j = 0; j < 5; ++j) {
    double r = 0;
    for (Index c = 0; c < kExpertClasses; ++c) r += std::exp(x(c, j)) * std::exp(lw[std::size_t(c)]);
    CHECK(h(0, j) == Approx(r / (1 + r)).epsilon(1e-12));
  }
  // An expert trained under the client's prior: p_fed(c|x) = p_loc(c|x) / w_c, normalised, gives the same r.
  Matrix<double> loc = x;
  for (Index j = 0; j < 5; ++j) {
    for (Index c = 0; c < kExpertClasses; ++c) loc(c, j) += lw[std::size_t(c)];
    loc.col(j).array() -= std::log(loc.col(j).array().exp().sum());
  }
  LabelShiftGate<double> client({ExpertPrior::client}, lw);
  CHECK((client.forward(loc) - h).cwiseAbs().maxCoeff() < 1e-12);
  CHECK_THROWS_WITH(LabelShiftGate<double>({ExpertPrior::client}, {0.0, std::nan("")}),
                    Contains("finite log weights"));
  CHECK_THROWS_WITH(fed.forward(stacked_log_probs(2, 3, 2)), Contains("expected input with 4 rows") && Contains("8"));
}

TEST_CASE("the label-shift gate passes the gradient check, alone and inside a mixture", "[personal_mixtures]") {
  const auto lw = LabelShiftGate<double>::log_weights_from_counts({30, 50, 15, 5});
  LabelShiftGate<double> gate({ExpertPrior::client, ExpertPrior::federation}, lw);
  gate.parameters() << 0.7, 1.3, -0.4;
  const auto e = model_gradient_error(gate, stacked_log_probs(2, 6, 3));
  CHECK(e.params < GradTolerance<double>::max_rel_error);
  CHECK(e.input < GradTolerance<double>::max_rel_error);

  // In a mixture whose experts train: their gradients include the path through the gate's input.
  Rng rng(4);
  auto a = mlp<double>(Shape{6, 1, 1}, kExpertClasses, 5), b = mlp<double>(Shape{6, 1, 1}, kExpertClasses, 7);
  a.init(rng);
  b.init(rng);
  ProbabilityGate<LabelShiftGate<double>> pg{LabelShiftGate<double>({ExpertPrior::client, ExpertPrior::federation}, lw)};
  pg.parameters() << 0.9, 1.1, 0.3;
  ExpertMixture mix(GateInput::expert_log_probs, pg, a, b);
  const Matrix<double> x = random_batch<double>(6, 7, 5);
  Labels y(7);
  for (Index j = 0; j < 7; ++j) y[j] = std::int32_t(j % kExpertClasses);
  auto f = [&] {
    Rng r(0);
    return double(mix.loss(x, y, Mode::eval, r));
  };
  Rng r(0);
  mix.loss_and_gradient(x, y, Mode::eval, r);
  const Vector<double> dg = pg.gradients(), da = a.gradients(), db = b.gradients();
  CHECK(gradient_error<double>(pg.parameters(), dg, f) < GradTolerance<double>::max_rel_error);
  CHECK(gradient_error<double>(a.parameters(), da, f) < GradTolerance<double>::max_rel_error);
  CHECK(gradient_error<double>(b.parameters(), db, f) < GradTolerance<double>::max_rel_error);
}

TEST_CASE("roc_auc is the fraction of (positive, negative) pairs ranked right, ties one half", "[personal_mixtures]") {
  Rng rng(6);
  for (int trial = 0; trial < 20; ++trial) {
    const std::size_t n = 1 + std::size_t(rng.uniform_int(40));
    std::vector<double> s(n);
    std::vector<std::uint8_t> pos(n);
    for (std::size_t i = 0; i < n; ++i) {
      s[i] = double(rng.uniform_int(6)) / 5;  // few distinct values: many ties
      pos[i] = std::uint8_t(rng.uniform_int(2));
    }
    double pairs = 0, right = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j)
        if (pos[i] && !pos[j]) {
          pairs += 1;
          right += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
        }
    const double auc = roc_auc(s, pos);
    INFO("trial " << trial << ", " << n << " samples");
    if (pairs == 0) CHECK(std::isnan(auc));
    else CHECK(auc == Approx(right / pairs).epsilon(1e-12));
  }
  CHECK(roc_auc(std::vector<double>{0.1, 0.9}, std::vector<std::uint8_t>{0, 1}) == 1.0);
  CHECK(roc_auc(std::vector<double>{0.9, 0.1}, std::vector<std::uint8_t>{0, 1}) == 0.0);
  CHECK_THROWS_WITH(roc_auc(std::vector<double>{0.1}, std::vector<std::uint8_t>{0, 1}),
                    Contains("expected 1 labels") && Contains("got 2"));
  CHECK_THROWS_WITH(roc_auc(std::vector<double>{std::nan("")}, std::vector<std::uint8_t>{1}),
                    Contains("finite scores"));
}

TEST_CASE("client results round-trip through their byte encoding, and corrupt records are refused",
          "[personal_mixtures]") {
  ClientResult r;
  r.client = 42;
  r.opted_out = true;
  r.add("global", 0.7, 0.65);
  MethodResult& m = r.add("mixture-shift", 0.9, 0.71);
  m.set("gate_auc", std::numeric_limits<double>::quiet_NaN());
  m.set("epochs", 35);
  m.set_series("gate_hist_majority", {1, 2, 3});
  const std::vector<std::uint8_t> bytes = encode_result(r);
  const ClientResult back = decode_result(bytes);
  CHECK(back.client == 42);
  CHECK(back.opted_out);
  REQUIRE(back.methods.size() == 2);
  CHECK(back.methods[1].method == "mixture-shift");
  CHECK(std::isnan(*back.methods[1].metric("gate_auc")));
  CHECK(back.methods[1].metric("epochs") == 35.0);
  CHECK(*back.methods[1].find_series("gate_hist_majority") == std::vector<double>{1, 2, 3});
  CHECK(encode_result(back) == bytes);

  for (std::size_t len = 0; len < bytes.size(); ++len) {  // every truncation: an error, no over-read
    INFO("truncated to " << len << " bytes");
    CHECK_THROWS_WITH(decode_result(std::span(bytes.data(), len)), Contains("decode_result"));
  }
  std::vector<std::uint8_t> longer = bytes;
  longer.push_back(0);
  CHECK_THROWS_WITH(decode_result(longer), Contains("1 bytes after the record"));
  std::vector<std::uint8_t> huge = bytes;  // the method count (after i64 + u8) announces 2^32 - 1 methods
  huge[9] = huge[10] = huge[11] = huge[12] = 0xff;
  CHECK_THROWS_WITH(decode_result(huge), Contains("4294967295 entries"));
  std::vector<std::uint8_t> flag = bytes;
  flag[8] = 7;
  CHECK_THROWS_WITH(decode_result(flag), Contains("opted_out 0 or 1") && Contains("got 7"));
}
