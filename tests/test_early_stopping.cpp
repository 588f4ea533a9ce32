// Early stopping returns the BEST weights, not the last (PAPER.md defects 1 and 2): the
// EarlyStopping snapshot is a copy, patience counting, non-finite losses; fit() restores the
// best local weights; train_federated restores the best averaged global model.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/training/trainer.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

using test::same_vector;

/// A 2-class problem in 4 dimensions: x ~ U(-1, 1)^4, "true" label [x0 + 0.5 x1 > 0].
/// Region k of `sizes` has labels: 0 -> true, 1 -> flipped, 2 -> true with each label
/// flipped with probability 0.3 (label noise). Returns the dataset and the index ranges.
template <class S>
Dataset<S> rule_dataset(const std::vector<std::pair<Index, int>>& regions, std::uint64_t seed,
                        std::vector<std::vector<Index>>& ranges) {
  Index n = 0;
  for (const auto& r : regions) n += r.first;
  Rng rng(seed);
  Dataset<S> d{Matrix<S>(4, n), Labels(n), Shape{4, 1, 1}, 2};
  ranges.clear();
  Index j = 0;
  for (const auto& [size, kind] : regions) {
    ranges.emplace_back();
    for (Index t = 0; t < size; ++t, ++j) {
      for (Index r = 0; r < 4; ++r) d.inputs(r, j) = rng.uniform<S>(S(-1), S(1));
      bool label = d.inputs(0, j) + S(0.5) * d.inputs(1, j) > 0;
      if (kind == 1) label = !label;
      if (kind == 2 && rng.uniform01() < 0.3) label = !label;
      d.labels[j] = label ? 1 : 0;
      ranges.back().push_back(j);
    }
  }
  d.validate();
  return d;
}

Mlp<float> small_mlp(std::uint64_t seed) {
  Mlp<float> m = mlp<float>(Shape{4, 1, 1}, 2, 16, 0.0);
  Rng rng(seed);
  m.init(rng);
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("EarlyStopping restores a copy of the best parameters, not the live ones", "[early_stopping]",
                   float, double) {
  using S = TestType;
  EarlyStopping<S> stop(2);
  Vector<S> live(3), other(2);
  const double losses[5] = {5, 3, 2, 4, 6};
  const bool expected_stop[5] = {false, false, false, false, true};
  for (int i = 0; i < 5; ++i) {
    live.setConstant(S(10 + i));
    other.setConstant(S(-i));
    INFO("check " << i + 1 << ", loss " << losses[i]);
    CHECK(stop.observe(losses[i], {std::cref(live), std::cref(other)}) == expected_stop[i]);
  }
  CHECK(stop.checks() == 5);
  CHECK(stop.best_check() == 3);
  CHECK(stop.best_loss() == 2.0);
  // The live vectors moved on after the best check; the snapshot did not.
  live.setConstant(S(99));
  other.setConstant(S(99));
  CHECK(same_vector(stop.best(0), Vector<S>(Vector<S>::Constant(3, S(12)))));
  CHECK(same_vector(stop.best(1), Vector<S>(Vector<S>::Constant(2, S(-2)))));
  stop.restore({std::ref(live), std::ref(other)});
  CHECK(same_vector(live, Vector<S>(Vector<S>::Constant(3, S(12)))));
  CHECK(same_vector(other, Vector<S>(Vector<S>::Constant(2, S(-2)))));

  // restore() checks the count and sizes against what was observed.
  CHECK_THROWS_WITH(stop.restore({std::ref(live)}), Contains("expected 2 vectors") && Contains("got 1"));
  Vector<S> wrong(4);
  CHECK_THROWS_WITH(stop.restore({std::ref(live), std::ref(wrong)}),
                    Contains("vector 1 has size 4") && Contains("expected 2"));
  CHECK_THROWS_WITH(stop.best(2), Contains("< 2") && Contains("got 2"));
}

TEST_CASE("EarlyStopping counts checks without a strictly lower loss", "[early_stopping]") {
  const Vector<float> v = Vector<float>::Zero(1);
  SECTION("an improvement resets the count") {
    EarlyStopping<float> stop(2);
    CHECK_FALSE(stop.observe(5, {std::cref(v)}));
    CHECK_FALSE(stop.observe(6, {std::cref(v)}));  // 1 bad
    CHECK_FALSE(stop.observe(4, {std::cref(v)}));  // best: reset
    CHECK_FALSE(stop.observe(7, {std::cref(v)}));  // 1 bad
    CHECK(stop.observe(8, {std::cref(v)}));        // 2 bad: stop
    CHECK(stop.best_check() == 3);
  }
  SECTION("an equal loss is not an improvement") {
    EarlyStopping<float> stop(2);
    CHECK_FALSE(stop.observe(3, {std::cref(v)}));
    CHECK_FALSE(stop.observe(3, {std::cref(v)}));
    CHECK(stop.observe(3, {std::cref(v)}));
    CHECK(stop.best_check() == 1);
  }
  SECTION("patience 1 stops at the first bad check") {
    EarlyStopping<float> stop(1);
    CHECK_FALSE(stop.observe(3, {std::cref(v)}));
    CHECK_FALSE(stop.observe(2, {std::cref(v)}));
    CHECK(stop.observe(2.5, {std::cref(v)}));
  }
  CHECK_THROWS_WITH(EarlyStopping<float>(0), Contains("patience > 0") && Contains("got 0"));
}

TEST_CASE("a non-finite loss is never the best", "[early_stopping]") {
  EarlyStopping<double> stop(10);
  Vector<double> live = Vector<double>::Constant(2, 1.0);
  stop.observe(std::numeric_limits<double>::quiet_NaN(), {std::cref(live)});
  stop.observe(-std::numeric_limits<double>::infinity(), {std::cref(live)});
  CHECK_FALSE(stop.has_best());
  CHECK(stop.best_check() == 0);
  CHECK_THROWS_WITH(stop.restore({std::ref(live)}), Contains("no finite loss"));
  live.setConstant(2.0);
  stop.observe(1.0, {std::cref(live)});
  live.setConstant(3.0);
  stop.observe(std::numeric_limits<double>::quiet_NaN(), {std::cref(live)});
  stop.observe(-std::numeric_limits<double>::infinity(), {std::cref(live)});
  CHECK(stop.best_check() == 3);
  CHECK(stop.best_loss() == 1.0);
  stop.restore({std::ref(live)});
  CHECK(same_vector(live, Vector<double>(Vector<double>::Constant(2, 2.0))));
  // Non-finite checks count as checks without improvement.
  EarlyStopping<double> nan_stop(2);
  CHECK_FALSE(nan_stop.observe(std::numeric_limits<double>::quiet_NaN(), {std::cref(live)}));
  CHECK(nan_stop.observe(std::numeric_limits<double>::quiet_NaN(), {std::cref(live)}));
}

TEST_CASE("fit restores the starting weights when validation only gets worse", "[early_stopping]") {
  std::vector<std::vector<Index>> r;
  // Region 0: training (true labels); region 1: validation with the OPPOSITE labels.
  const Dataset<float> data = rule_dataset<float>({{200, 0}, {100, 1}}, 1, r);
  Mlp<float> model = small_mlp(2);
  const Vector<float> start = model.parameters();
  const double start_val = evaluate(model, data, r[1]).loss;
  FitConfig cfg;
  cfg.max_epochs = 60;
  cfg.check_every = 2;
  cfg.patience = 3;
  cfg.batch_size = 10;
  Adam<float> opt(1e-2);
  Rng rng(3);
  const FitResult res = fit(model, opt, data, r[0], r[1], cfg, rng);
  CHECK(res.best_epoch == 0);
  CHECK(res.epochs == cfg.patience * cfg.check_every);  // no check improved: stopped after patience checks
  CHECK(res.best_val_loss == start_val);
  CHECK(same_vector(model.parameters(), start));
  CHECK(evaluate(model, data, r[1]).loss == res.best_val_loss);

  // Without the restore the weights would have moved and the validation loss risen.
  Mlp<float> last = small_mlp(2);
  Adam<float> opt2(1e-2);
  Rng rng2(3);
  FitConfig no_val = cfg;
  no_val.max_epochs = res.epochs;
  fit(last, opt2, data, r[0], std::span<const Index>(), no_val, rng2);
  CHECK_FALSE(same_vector(last.parameters(), start));
  CHECK(evaluate(last, data, r[1]).loss > start_val);
}

TEST_CASE("fit restores the best weights, not the last, and reports them consistently", "[early_stopping]") {
  std::vector<std::vector<Index>> r;
  // Region 0: a small training set; region 1: a noisy validation set (30% flipped labels),
  // so that long training overfits and the validation loss turns up again.
  const Dataset<float> data = rule_dataset<float>({{40, 2}, {200, 2}}, 4, r);
  const Mlp<float> initial = small_mlp(5);
  Mlp<float> model = initial;
  const double start_val = evaluate(model, data, r[1]).loss;
  FitConfig cfg;
  cfg.max_epochs = 300;
  cfg.check_every = 3;
  cfg.patience = 4;
  cfg.batch_size = 5;
  Adam<float> opt(2e-2);
  Rng rng(6);
  const FitResult res = fit(model, opt, data, r[0], r[1], cfg, rng);
  INFO("epochs " << res.epochs << ", best epoch " << res.best_epoch << ", best val loss " << res.best_val_loss
                 << ", start val loss " << start_val);
  REQUIRE(res.best_epoch > 0);
  CHECK(res.best_val_loss < start_val);
  CHECK(res.best_epoch % cfg.check_every == 0);
  CHECK(res.epochs <= cfg.max_epochs);
  CHECK((res.epochs == cfg.max_epochs || res.epochs == res.best_epoch + cfg.patience * cfg.check_every));
  CHECK(evaluate(model, data, r[1]).loss == res.best_val_loss);
  REQUIRE(res.best_epoch < res.epochs);  // the scenario is built so that the best is not the last

  // Replay without validation (evaluation draws no randomness): after best_epoch epochs the
  // weights are bitwise the restored ones; after all the epochs they are not.
  auto replay = [&](int epochs) {
    Mlp<float> m = initial;
    Adam<float> o(2e-2);
    Rng g(6);
    FitConfig c = cfg;
    c.max_epochs = epochs;
    fit(m, o, data, r[0], std::span<const Index>(), c, g);
    return Vector<float>(m.parameters());
  };
  CHECK(same_vector(replay(res.best_epoch), model.parameters()));
  const Vector<float> last = replay(res.epochs);
  CHECK_FALSE(same_vector(last, model.parameters()));
}

namespace {
/// Clients over a rule dataset: client k trains on a block of region 0 and validates on a block
/// of region 1; `opt_out` clients are included but opted out.
std::vector<Client<float>> rule_clients(const Dataset<float>& data, const std::vector<std::vector<Index>>& r,
                                        Index clients, Index n_train, Index n_val, std::vector<bool> opt_out) {
  std::vector<Client<float>> out;
  for (Index k = 0; k < clients; ++k) {
    ClientSplit s;
    s.train.assign(r[0].begin() + k * n_train, r[0].begin() + (k + 1) * n_train);
    s.val.assign(r[1].begin() + k * n_val, r[1].begin() + (k + 1) * n_val);
    out.emplace_back(std::int64_t(k), data, std::move(s), bool(opt_out[std::size_t(k)]));
  }
  return out;
}

/// The sample-weighted validation loss over the opted-in clients, recomputed from scratch.
double federated_val_loss(Mlp<float>& model, const std::vector<Client<float>>& clients) {
  double sum = 0;
  Index n = 0;
  for (const auto& c : clients) {
    if (c.opted_out()) continue;
    const EvalResult e = evaluate(model, c.train_data(), c.split().val);
    sum += e.loss * double(e.samples);
    n += e.samples;
  }
  return sum / double(n);
}

auto rule_fedavg() { return fedavg<float>(3, LocalUpdateConfig{2, 5}, 2e-2); }

FederationConfig rule_federation_config() {
  FederationConfig cfg;
  cfg.max_rounds = 60;
  cfg.check_every = 1;
  cfg.patience = 4;
  cfg.seed = 8;
  return cfg;
}
}  // namespace

TEST_CASE("train_federated restores the initial model when validation only gets worse", "[early_stopping]") {
  std::vector<std::vector<Index>> r;
  const Dataset<float> data = rule_dataset<float>({{200, 0}, {100, 1}}, 7, r);  // opposite val labels
  const auto clients = rule_clients(data, r, 5, 40, 20, {false, false, true, false, false});
  Mlp<float> model = small_mlp(9);
  const Vector<float> start = model.parameters();
  const double start_val = federated_val_loss(model, clients);
  InProcessTransport<float> transport;
  const FederationConfig cfg = rule_federation_config();
  const FederationResult res = train_federated(model, clients, transport, cfg, rule_fedavg());
  CHECK(res.best_round == 0);
  CHECK(res.rounds == cfg.patience * cfg.check_every);
  CHECK(same_vector(model.parameters(), start));
  CHECK(res.best_val_loss == Approx(start_val).epsilon(1e-12));
  REQUIRE(res.val_history.size() == std::size_t(1 + res.rounds));
  for (std::size_t i = 1; i < res.val_history.size(); ++i) CHECK(res.val_history[i].second > res.best_val_loss);
}

TEST_CASE("train_federated restores the best averaged global model", "[early_stopping]") {
  std::vector<std::vector<Index>> r;
  // Small noisy training sets and noisy validation sets: FedAvg overfits eventually.
  const Dataset<float> data = rule_dataset<float>({{100, 2}, {300, 2}}, 10, r);
  const auto clients = rule_clients(data, r, 5, 20, 60, {false, true, false, false, false});
  const Mlp<float> initial = small_mlp(11);
  Mlp<float> model = initial;
  InProcessTransport<float> transport;
  const FederationConfig cfg = rule_federation_config();
  const FederationResult res = train_federated(model, clients, transport, cfg, rule_fedavg());

  INFO("rounds " << res.rounds << ", best round " << res.best_round << ", best val loss " << res.best_val_loss);
  REQUIRE(res.best_round > 0);
  REQUIRE(res.best_round < res.rounds);  // the scenario is built so that the best is not the last
  CHECK((res.rounds == cfg.max_rounds || res.rounds == res.best_round + cfg.patience * cfg.check_every));
  // best_val_loss is the minimum of the history, recorded at best_round ...
  double min_loss = std::numeric_limits<double>::infinity();
  for (const auto& [round, loss] : res.val_history) min_loss = std::min(min_loss, loss);
  CHECK(res.best_val_loss == min_loss);
  bool found = false;
  for (const auto& [round, loss] : res.val_history)
    if (round == res.best_round) found = (loss == res.best_val_loss);
  CHECK(found);
  // ... and the final parameters give exactly that loss on the opted-in clients' validation sets.
  CHECK(federated_val_loss(model, clients) == Approx(res.best_val_loss).epsilon(1e-12));

  // The restored parameters are the AVERAGED model after best_round rounds (defect 1 stored the
  // last client's local weights): replaying best_round rounds with checks only at 0 and the end
  // reproduces them bitwise, and the model after all rounds differs.
  auto replay = [&](int rounds) {
    Mlp<float> m = initial;
    InProcessTransport<float> t;
    FederationConfig c = cfg;
    c.max_rounds = rounds;
    c.check_every = rounds + 1;
    train_federated(m, clients, t, c, rule_fedavg());
    return Vector<float>(m.parameters());
  };
  CHECK(same_vector(replay(res.best_round), model.parameters()));
  CHECK_FALSE(same_vector(replay(res.rounds), model.parameters()));
}
