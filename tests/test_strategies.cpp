// Federated strategies: samplers, client algorithms (FedProx, SCAFFOLD), simulated attacks and
// failures, hostile updates dropped while the round proceeds, client state, and determinism of every
// strategy for any thread count. (Aggregators: test_aggregators.cpp; server optimizers:
// test_server_optimizer.cpp; over MPI: mpi/test_mpi_federation.cpp.)
#include <catch2/catch.hpp>

#include <Eigen/Dense>
#include <cmath>
#include <set>
#include <vector>

#include <fedmoe/federated/aggregators/any_aggregator.hpp>
#include <fedmoe/federated/attacks.hpp>
#include <fedmoe/federated/local_training.hpp>
#include <fedmoe/federated/sampler.hpp>
#include <fedmoe/fedmoe.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

static_assert(ClientSampler<UniformSampler> && ClientSampler<PoissonSampler>);

namespace {

using test::Blobs;
using test::same_vector;

FederationConfig strategy_config(int rounds, std::size_t threads = 1) {
  FederationConfig c;
  c.max_rounds = rounds;
  c.check_every = 3;
  c.patience = 1000;
  c.threads = threads;
  c.seed = 4;
  return c;
}

using test::one_epoch;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------

TEST_CASE("UniformSampler draws m distinct eligible clients, sorted, and refuses m > eligible", "[strategies]") {
  const std::vector<std::size_t> eligible{0, 2, 3, 5, 8, 9, 11};
  const UniformSampler s(4);
  std::set<std::vector<std::size_t>> seen;
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    Rng rng(seed);
    const auto got = s.sample(eligible, rng);
    REQUIRE(got.size() == 4);
    CHECK(std::is_sorted(got.begin(), got.end()));
    CHECK(std::adjacent_find(got.begin(), got.end()) == got.end());
    for (std::size_t i : got) CHECK(std::find(eligible.begin(), eligible.end(), i) != eligible.end());
    seen.insert(got);
  }
  CHECK(seen.size() > 20);  // it does depend on the stream
  Rng rng(1);
  CHECK_THROWS_WITH(UniformSampler(8).sample(eligible, rng), Contains("<= 7") && Contains("got 8"));
  CHECK_THROWS_WITH(UniformSampler(0), Contains("got 0"));
  CHECK(s.expected(7) == 4);
}

TEST_CASE("PoissonSampler takes each client with probability q, independently", "[strategies]") {
  std::vector<std::size_t> eligible(200);
  for (std::size_t i = 0; i < eligible.size(); ++i) eligible[i] = i;
  const PoissonSampler s(0.1);
  Rng rng(3);
  double total = 0;
  std::vector<int> hits(eligible.size(), 0);
  const int rounds = 500;
  bool some_empty_or_varying = false;
  std::size_t first = 0;
  for (int r = 0; r < rounds; ++r) {
    const auto got = s.sample(eligible, rng);
    CHECK(std::is_sorted(got.begin(), got.end()));
    if (r == 0) first = got.size();
    else if (got.size() != first) some_empty_or_varying = true;
    total += double(got.size());
    for (std::size_t i : got) ++hits[i];
  }
  // Mean count 20 per round; the standard error of the mean over 500 rounds is sqrt(200 q (1-q) / 500) = 0.19.
  CHECK(total / rounds == Approx(20).margin(1.0));
  CHECK(some_empty_or_varying);  // the count varies from round to round
  for (int h : hits) CHECK(h < rounds / 3);  // no client is taken far more often than q
  CHECK(s.expected(200) == Approx(20));
  CHECK_THROWS_WITH(PoissonSampler(0), Contains("(0, 1]") && Contains("got 0"));
  CHECK_THROWS_WITH(PoissonSampler(std::nan("")), Contains("(0, 1]"));
  // A round may sample nobody: the federation then changes nothing that round.
  const Blobs b(4);
  Mlp<float> model = b.model();
  const Vector<float> start = model.parameters();
  InProcessTransport<float> t;
  auto strategy = Strategy<PoissonSampler, LocalTraining<Adam<float>>, WeightedMean, Sgd<float>>{
      PoissonSampler(1e-9), LocalTraining<Adam<float>>(one_epoch, Adam<float>(1e-2)), WeightedMean{}, Sgd<float>(1)};
  const FederationResult r = train_federated(model, b.clients, t, strategy_config(3), strategy);
  CHECK(r.rounds == 3);
  for (const RoundRecord& rec : r.history) CHECK((rec.sampled == 0 && !rec.stepped));
  CHECK(same_vector(model.parameters(), start));
}

// ---------------------------------------------------------------------------------------------
// Client algorithms
// ---------------------------------------------------------------------------------------------

TEST_CASE("FedProx with mu = 0 is plain local training, bitwise, and mu > 0 pulls towards the global model",
          "[strategies]") {
  const Blobs b(6);
  auto run = [&](auto algorithm) {
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    train_federated(model, b.clients, t, strategy_config(4),
                    Strategy<UniformSampler, decltype(algorithm), WeightedMean, Sgd<float>>{
                        UniformSampler(3), algorithm, WeightedMean{}, Sgd<float>(1)});
    return Vector<float>(model.parameters());
  };
  const Vector<float> plain = run(LocalTraining<Adam<float>>(one_epoch, Adam<float>(1e-2)));
  CHECK(same_vector(run(FedProx<Adam<float>>(0.0, one_epoch, Adam<float>(1e-2))), plain));
  CHECK_FALSE(same_vector(run(FedProx<Adam<float>>(1.0, one_epoch, Adam<float>(1e-2))), plain));

  // One client's update: with a strong proximal term (SGD, so the step is linear in the gradient) the
  // local model stays closer to the global one.
  Mlp<float> w = b.model();
  InProcessTransport<float> t;
  t.broadcast(w.parameters());
  auto delta_norm = [&](auto algorithm) {
    Rng rng(9);
    typename decltype(algorithm)::State st;
    b.clients[0].participate(t, w, algorithm, st, rng);
    return double(t.collect().at(0).delta.norm());
  };
  const double free = delta_norm(FedProx<Sgd<float>>(0.0, LocalUpdateConfig{5, 10}, Sgd<float>(0.1)));
  const double held = delta_norm(FedProx<Sgd<float>>(5.0, LocalUpdateConfig{5, 10}, Sgd<float>(0.1)));
  CHECK(held < 0.8 * free);
  CHECK_THROWS_WITH(FedProx<Adam<float>>(-1.0), Contains("mu >= 0") && Contains("got -1"));
}

namespace {
/// Least squares with the "label" of a sample being its index into `targets`: the Loss concept
/// with real-valued targets, 0.5 mean (y - t)^2.
struct IndexedSquaredError {
  using scalar_type = double;
  using target_type = Labels;
  const Eigen::VectorXd* targets = nullptr;
  double value(const Matrix<double>& out, const Labels& idx) const {
    double s = 0;
    for (Index j = 0; j < idx.size(); ++j) s += 0.5 * std::pow(out(0, j) - (*targets)[idx[j]], 2);
    return s / double(idx.size());
  }
  double gradient(const Matrix<double>& out, const Labels& idx, Matrix<double>& grad) const {
    grad.resize(1, idx.size());
    for (Index j = 0; j < idx.size(); ++j) grad(0, j) = (out(0, j) - (*targets)[idx[j]]) / double(idx.size());
    return value(out, idx);
  }
};
static_assert(Loss<IndexedSquaredError>);

/// Four clients with different input scales (different Hessians) and different optimal weights:
/// FedAvg with several local steps converges to a biased fixed point (client drift); SCAFFOLD's
/// control variates remove the drift and reach the minimiser of the sum of the clients' losses.
struct DriftProblem {
  static constexpr Index dim = 3, per_client = 16, clients = 4;
  Dataset<double> data;
  Eigen::VectorXd targets;
  std::vector<Client<double>> members;
  DriftProblem() {
    const Index n = per_client * clients;
    data = Dataset<double>{Matrix<double>(dim, n), Labels(n), Shape{dim, 1, 1}, n};
    targets.resize(n);
    Rng rng(21);
    for (Index k = 0; k < clients; ++k) {
      Eigen::Vector3d w_k(1.0 + k, -2.0 * k, 0.5 - k);  // the client's own optimum
      const double scale = 0.3 + 0.6 * double(k);       // the client's Hessian scale
      ClientSplit split;
      for (Index i = 0; i < per_client; ++i) {
        const Index j = k * per_client + i;
        for (Index d = 0; d < dim; ++d) data.inputs(d, j) = scale * rng.normal();
        data.labels[j] = int(j);
        targets[j] = w_k.dot(data.inputs.col(j)) + (k - 1.5);
        split.train.push_back(j);
      }
      members.emplace_back(k, data, split, false);
    }
  }
  using LinearModel = Sequential<double, Dense<double>>;
  LinearModel model() const {
    LinearModel m(Shape{dim, 1, 1}, Dense<double>(1));
    m.parameters().setZero();
    return m;
  }
  /// The minimiser of the sum of all clients' losses, in the model's parameter order (W, then b).
  Vector<double> optimum() const {
    Matrix<double> z(dim + 1, data.size());
    z.topRows(dim) = data.inputs;
    z.row(dim).setOnes();
    return (z * z.transpose()).ldlt().solve(z * targets);
  }
  /// FedAvg's fixed point with K full-batch GD steps of rate eta per round and every client taking
  /// part: each client maps w to M_k^K w + (I - M_k^K) w_k*, M_k = I - eta H_k, so the fixed point is
  /// (I - mean M_k^K)^-1 mean (I - M_k^K) w_k*.
  Vector<double> fedavg_fixed_point(double eta, int K) const {
    Matrix<double> a = Matrix<double>::Zero(dim + 1, dim + 1);
    Vector<double> c = Vector<double>::Zero(dim + 1);
    for (Index k = 0; k < clients; ++k) {
      Matrix<double> z(dim + 1, per_client);
      z.topRows(dim) = data.inputs.middleCols(k * per_client, per_client);
      z.row(dim).setOnes();
      const Matrix<double> h = z * z.transpose() / double(per_client);
      const Vector<double> w_k = h.ldlt().solve(z * targets.segment(k * per_client, per_client) / double(per_client));
      Matrix<double> mk = Matrix<double>::Identity(dim + 1, dim + 1) - eta * h, mk_pow = mk;
      for (int s = 1; s < K; ++s) mk_pow = mk_pow * mk;
      a += mk_pow / double(clients);
      c += (Matrix<double>::Identity(dim + 1, dim + 1) - mk_pow) * w_k / double(clients);
    }
    return (Matrix<double>::Identity(dim + 1, dim + 1) - a).partialPivLu().solve(c);
  }
};
}  // namespace

TEST_CASE("SCAFFOLD removes the client drift that biases FedAvg on heterogeneous least squares", "[strategies]") {
  const DriftProblem prob;
  const IndexedSquaredError loss{&prob.targets};
  const double eta = 0.05;
  const int K = 10;  // local steps per round: 10 epochs of one full batch
  const LocalUpdateConfig local{K, DriftProblem::per_client};
  FederationConfig cfg = strategy_config(400);
  cfg.check_every = 1000;  // no validation data: every round runs
  auto run = [&](auto algorithm) {
    auto model = prob.model();
    InProcessTransport<double> t;
    train_federated(model, prob.members, t, cfg,
                    Strategy<UniformSampler, decltype(algorithm), WeightedMean, Sgd<double>>{
                        UniformSampler(DriftProblem::clients), algorithm, WeightedMean{}, Sgd<double>(1)});
    return Vector<double>(model.parameters());
  };
  const Vector<double> fedavg = run(LocalTraining<Sgd<double>, IndexedSquaredError>(local, Sgd<double>(eta), loss));
  const Vector<double> scaffold = run(Scaffold<double, IndexedSquaredError>(eta, local, loss));
  const Vector<double> opt = prob.optimum(), fixed = prob.fedavg_fixed_point(eta, K);
  INFO("optimum " << opt.transpose() << "\nFedAvg fixed point " << fixed.transpose() << "\nFedAvg " << fedavg.transpose()
                  << "\nSCAFFOLD " << scaffold.transpose());
  REQUIRE((fixed - opt).norm() > 0.1);            // the drift is real ...
  CHECK((fedavg - fixed).norm() < 1e-6);          // ... FedAvg converges to its biased fixed point ...
  CHECK((scaffold - opt).norm() < 1e-6);          // ... and SCAFFOLD to the true optimum.
}

TEST_CASE("SCAFFOLD's control variates: one extra vector each way, the client's c_i stays in its state",
          "[strategies]") {
  const Blobs b(5);
  Mlp<float> model = b.model();
  std::vector<std::size_t> extras_seen;
  InProcessTransport<float> t([&](const ClientUpdate<float>& u) {
    extras_seen.push_back(u.extras.size());
    CHECK(u.extras.at(0).size() == u.delta.size());
  });
  auto strategy = Strategy<UniformSampler, Scaffold<float>, WeightedMean, Sgd<float>>{
      UniformSampler(2), Scaffold<float>(5e-2, one_epoch), WeightedMean{}, Sgd<float>(1)};
  std::vector<ScaffoldState<float>> states;
  const FederationResult r = train_federated(model, b.clients, t, strategy_config(4), strategy, states);
  REQUIRE(states.size() == b.clients.size());
  CHECK(extras_seen.size() == 8);
  for (std::size_t e : extras_seen) CHECK(e == 1);
  Index with_state = 0;
  for (const auto& s : states) with_state += s.control.size() > 0;
  CHECK(with_state >= 2);                     // the participants keep a control variate ...
  CHECK(with_state <= 5);
  CHECK(t.extras().size() == 1);              // ... and the server broadcasts its own c
  for (const RoundRecord& rec : r.history) CHECK(rec.used == 2);
  CHECK_THROWS_WITH(Scaffold<float>(0.0), Contains("learning rate > 0") && Contains("got 0"));
}

// ---------------------------------------------------------------------------------------------
// Hostile updates, attacks and failures
// ---------------------------------------------------------------------------------------------

namespace {
/// Plain training, except that one client's upload is NaN (a broken or hostile client).
struct NanFromOneClient {
  using State = NoClientState;
  static constexpr std::size_t uplink_extras = 0;
  LocalTraining<Adam<float>> inner{one_epoch, Adam<float>(1e-2)};
  const Index* bad_first_index = nullptr;
  template <Model M>
  ClientUpdate<float> train(M& m, const GlobalView<float>& g, const LocalData<float>& d, State& s, Rng& rng) const {
    ClientUpdate<float> u = inner.train(m, g, d, s, rng);
    if (d.train.data() == bad_first_index) u.delta[3] = std::numeric_limits<float>::quiet_NaN();
    return u;
  }
  std::vector<Vector<float>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<float>>, Index) {}
};
}  // namespace

TEST_CASE("a NaN update is dropped and counted, and the round proceeds with the rest", "[strategies]") {
  const Blobs b(4);
  for (const char* agg : {"mean", "median", "trimmed-mean", "geometric-median"}) {
    INFO(agg);
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    AggregatorSpec spec;
    spec.name = agg;
    NanFromOneClient alg;
    alg.bad_first_index = b.clients[2].split().train.data();
    auto strategy = Strategy<UniformSampler, NanFromOneClient, AnyAggregator, Sgd<float>>{
        UniformSampler(4), alg, make_aggregator(spec), Sgd<float>(1)};
    const FederationResult r = train_federated(model, b.clients, t, strategy_config(3), strategy);
    for (const RoundRecord& rec : r.history) {
      CHECK(rec.received == 4);
      CHECK(rec.rejected == 1);
      CHECK(rec.stepped);
    }
    CHECK(model.parameters().allFinite());
    CHECK_FALSE(same_vector(model.parameters(), b.model().parameters()));
  }
}

TEST_CASE("attackers and failures: per round counts, and what each attack sends", "[strategies]") {
  SECTION("roles: round(fraction x sampled) attackers among the sampled, failures with probability d") {
    AttackConfig a;
    a.kind = AttackKind::sign_flip;
    a.fraction = 0.2;
    a.failure = 0.25;
    const std::vector<std::size_t> sampled{1, 4, 5, 7, 8, 10, 12, 13, 15, 19};
    double failed = 0;
    for (std::uint64_t seed = 0; seed < 400; ++seed) {
      Rng rng(seed);
      const RoundRoles roles = draw_roles(a, sampled, rng);
      REQUIRE(roles.attackers.size() == 2);
      for (std::size_t i : roles.attackers) CHECK(std::binary_search(sampled.begin(), sampled.end(), i));
      CHECK(std::is_sorted(roles.attackers.begin(), roles.attackers.end()));
      failed += double(roles.failed.size());
    }
    CHECK(failed / 400 == Approx(2.5).margin(0.25));  // sd of the mean: sqrt(10 * 0.25 * 0.75 / 400) = 0.07
  }
  SECTION("model poisoning replaces exactly the attackers' deltas") {
    std::vector<ClientUpdate<double>> honest;
    Rng rng(2);
    for (int k = 0; k < 6; ++k) {
      Vector<double> d(5);
      for (Index i = 0; i < 5; ++i) d[i] = rng.normal();
      honest.push_back({k, d, 10, {}});
    }
    auto attacked = [&](AttackKind kind) {
      AttackConfig a;
      a.kind = kind;
      a.fraction = 0.3;
      a.scale = 3;
      std::vector<ClientUpdate<double>> u = honest;
      Rng noise(7);
      poison_updates(a, u, [](std::int64_t c) { return c == 1 || c == 4; }, noise);
      return u;
    };
    const auto flipped = attacked(AttackKind::sign_flip), scaled = attacked(AttackKind::scale);
    const auto noisy = attacked(AttackKind::noise), alie = attacked(AttackKind::alie);
    const auto labels = attacked(AttackKind::label_flip);
    for (int k : {0, 2, 3, 5}) {
      CHECK(same_vector(flipped[std::size_t(k)].delta, honest[std::size_t(k)].delta));
      CHECK(same_vector(alie[std::size_t(k)].delta, honest[std::size_t(k)].delta));
    }
    for (int k : {1, 4}) {
      const auto& d = honest[std::size_t(k)].delta;
      CHECK(same_vector(flipped[std::size_t(k)].delta, Vector<double>(-3.0 * d)));
      CHECK(same_vector(scaled[std::size_t(k)].delta, Vector<double>(3.0 * d)));
      CHECK_FALSE(same_vector(noisy[std::size_t(k)].delta, d));
      CHECK(same_vector(labels[std::size_t(k)].delta, d));  // label flipping acts on the client's data
    }
    // ALIE: mu - z sigma of the four honest deltas, with z for n = 6 updates of which f = 2 attack.
    const double z = alie_z(6, 2);  // s = floor(6/2 + 1) - 2 = 2, z = Phi^-1((6 - 2) / 6)
    CHECK(z == Approx(0.4307272992954576).epsilon(1e-12));
    for (Index i = 0; i < 5; ++i) {
      double m = 0, sq = 0;
      for (int k : {0, 2, 3, 5}) m += honest[std::size_t(k)].delta[i] / 4;
      for (int k : {0, 2, 3, 5}) sq += std::pow(honest[std::size_t(k)].delta[i] - m, 2) / 4;
      CHECK(alie[1].delta[i] == Approx(m - z * std::sqrt(sq)).epsilon(1e-12));
      CHECK(alie[4].delta[i] == alie[1].delta[i]);
    }
  }
  SECTION("the standard normal quantile") {
    CHECK(detail::normal_quantile(0.975) == Approx(1.959963984540054).epsilon(1e-14));
    CHECK(detail::normal_quantile(0.5) == Approx(0.0).margin(1e-15));
    CHECK(detail::normal_quantile(1e-10) == Approx(-6.361340902404056).epsilon(1e-12));
    CHECK_THROWS_WITH(detail::normal_quantile(1.0), Contains("(0, 1)"));
  }
  SECTION("in a federation: failed clients send nothing, the records add up") {
    const Blobs b(10);
    Mlp<float> model = b.model();
    std::size_t uploads = 0;
    InProcessTransport<float> t([&](const ClientUpdate<float>&) { ++uploads; });
    FederationConfig cfg = strategy_config(12);
    cfg.attack.kind = AttackKind::scale;
    cfg.attack.fraction = 0.2;
    cfg.attack.failure = 0.3;
    const FederationResult r = train_federated(model, b.clients, t, cfg, fedavg<float>(5, one_epoch, 1e-2));
    Index failed = 0, received = 0;
    for (const RoundRecord& rec : r.history) {
      CHECK(rec.sampled == 5);
      CHECK(rec.attackers == 1);
      CHECK(rec.received == rec.sampled - rec.failed);
      CHECK(rec.used == rec.received);  // the mean uses every well-formed update
      failed += rec.failed;
      received += rec.received;
    }
    CHECK(failed > 0);
    CHECK(std::size_t(received) == uploads);
  }
  SECTION("bad attack settings are refused before any round") {
    const Blobs b(4);
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    FederationConfig cfg = strategy_config(1);
    cfg.attack.kind = AttackKind::alie;
    CHECK_THROWS_WITH(train_federated(model, b.clients, t, cfg, fedavg<float>(2)), Contains("fraction > 0"));
    cfg.attack.fraction = std::nan("");
    CHECK_THROWS_WITH(train_federated(model, b.clients, t, cfg, fedavg<float>(2)), Contains("[0, 1)"));
    CHECK_THROWS_WITH(attack_from_string("flood"), Contains("sign-flip") && Contains("'flood'"));
  }
}

TEST_CASE("under a sign-flip attack the median keeps learning where the mean collapses", "[strategies]") {
  const Blobs b(10);
  FederationConfig cfg = strategy_config(15);
  cfg.attack.kind = AttackKind::sign_flip;  // 2 of 10 send -10 d: the mean moves by about -1.2 d each round
  cfg.attack.fraction = 0.2;
  cfg.attack.scale = 10;
  auto accuracy = [&](const char* agg) {
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    AggregatorSpec spec;
    spec.name = agg;
    auto strategy = Strategy<UniformSampler, LocalTraining<Adam<float>>, AnyAggregator, Sgd<float>>{
        UniformSampler(10), LocalTraining<Adam<float>>(one_epoch, Adam<float>(1e-2)), make_aggregator(spec),
        Sgd<float>(1)};
    FederationConfig c = cfg;
    c.check_every = 1000;  // keep the last model: the attack's effect, not early stopping's rescue
    train_federated(model, b.clients, t, c, strategy);
    std::vector<Index> all(std::size_t(b.train.size()));
    for (Index i = 0; i < b.train.size(); ++i) all[std::size_t(i)] = i;
    return evaluate(model, b.train, all).accuracy;
  };
  const double median = accuracy("median"), mean = accuracy("mean");
  INFO("median " << median << ", mean " << mean);
  CHECK(median > 0.7);
  CHECK(mean < 0.5);
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

TEST_CASE("every strategy is bitwise identical for 1 and 2 threads", "[strategies]") {
  const Blobs b(8, {false, true});
  auto run = [&](std::size_t threads, auto strategy, AttackConfig attack) {
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    FederationConfig cfg = strategy_config(6, threads);
    cfg.attack = attack;
    const FederationResult r = train_federated(model, b.clients, t, cfg, strategy);
    return std::make_pair(Vector<float>(model.parameters()), r);
  };
  auto server = [](const char* name, double lr) {
    ServerOptimizerSpec s;
    s.name = name;
    s.lr = lr;
    return make_server_optimizer<float>(s);
  };
  auto agg = [](const char* name, Index f = 0) {
    AggregatorSpec a;
    a.name = name;
    a.byzantine_bound = f;
    return make_aggregator(a);
  };
  AttackConfig alie;
  alie.kind = AttackKind::alie;
  alie.fraction = 0.2;
  alie.failure = 0.1;
  using Any = Strategy<UniformSampler, LocalTraining<Adam<float>>, AnyAggregator, AnyOptimizer<float>>;
  const LocalTraining<Adam<float>> adam(one_epoch, Adam<float>(1e-2));
  auto check_same = [&](const char* name, auto strategy, AttackConfig attack) {
    INFO(name);
    const auto [p1, r1] = run(1, strategy, attack);
    const auto [p2, r2] = run(2, strategy, attack);
    CHECK(same_vector(p1, p2));
    CHECK(r1.val_history == r2.val_history);
    CHECK_FALSE(same_vector(p1, b.model().parameters()));
  };
  check_same("fedavg", fedavg<float>(4, one_epoch, 1e-2), AttackConfig{});
  check_same("fedprox", Strategy<UniformSampler, FedProx<Adam<float>>, WeightedMean, Sgd<float>>{
                            UniformSampler(4), FedProx<Adam<float>>(0.1, one_epoch, Adam<float>(1e-2)), {}, Sgd<float>(1)},
             AttackConfig{});
  check_same("scaffold", Strategy<UniformSampler, Scaffold<float>, WeightedMean, Sgd<float>>{
                             UniformSampler(4), Scaffold<float>(5e-2, one_epoch), {}, Sgd<float>(1)},
             AttackConfig{});
  check_same("fedadam + median, alie", Any{UniformSampler(5), adam, agg("median"), server("fedadam", 1e-2)}, alie);
  check_same("fedyogi + krum", Any{UniformSampler(7), adam, agg("krum", 1), server("fedyogi", 1e-2)}, alie);
  check_same("fedavgm + bulyan", Any{UniformSampler(7), adam, agg("bulyan", 1), server("fedavgm", 0.1)}, AttackConfig{});
  check_same("fedadagrad + multi-krum", Any{UniformSampler(6), adam, agg("multi-krum", 1), server("fedadagrad", 1e-2)},
             AttackConfig{});
}

TEST_CASE("the README's strategy example runs: SCAFFOLD, the median, FedAdam", "[strategies]") {
  const Blobs b(6);
  Mlp<float> model = b.model();
  InProcessTransport<float> transport;
  const FederationConfig cfg = strategy_config(3);
  // As in the README, section "Federated strategies".
  auto strategy = Strategy<UniformSampler, Scaffold<float>, AnyAggregator, AnyOptimizer<float>>{
      UniformSampler(4), Scaffold<float>(0.05, {3, 10}), make_aggregator({.name = "median"}),
      make_server_optimizer<float>({.name = "fedadam", .lr = 1e-2})};
  std::vector<ScaffoldState<float>> states;
  const FederationResult r = train_federated(model, b.clients, transport, cfg, strategy, states);
  CHECK(r.rounds == 3);
  REQUIRE(r.history.size() == 3);
  for (const RoundRecord& rec : r.history) CHECK((rec.used == 4 && rec.stepped));
  CHECK_FALSE(same_vector(model.parameters(), b.model().parameters()));
}
