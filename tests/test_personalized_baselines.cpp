// Personalised-FL baselines as client algorithms (federated/personalization/): APFL (apfl.hpp), Ditto
// (ditto.hpp), FedPer, FedRep and LG-FedAvg (partial_sharing.hpp). Their contracts (what is uploaded, what stays personal, what is frozen), APFL's
// gradients against central differences, a heterogeneous federation where every personal model beats
// FedAvg's global one on its client's data, and determinism for any thread count.
#include <catch2/catch.hpp>

#include <Eigen/Dense>
#include <cmath>
#include <vector>

#include <fedmoe/data/partition.hpp>
#include <fedmoe/federated/federation.hpp>
#include <fedmoe/federated/personalization/personalization.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/optimizers/adam.hpp>
#include <fedmoe/optimizers/sgd.hpp>

#include "gradient_check.hpp"
#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

using test::Blobs;
using test::same_vector;

FederationConfig baseline_config(int rounds, std::size_t threads = 1) {
  FederationConfig c;
  c.max_rounds = rounds;
  c.check_every = 1000;  // no early stopping: every round runs, the last model is kept
  c.patience = 1000;
  c.threads = threads;
  c.seed = 4;
  return c;
}

using test::one_epoch;

template <class Alg>
using Plain = Strategy<UniformSampler, Alg, WeightedMean, Sgd<float>>;

/// One client's upload and its state after one round from `global`.
template <class Alg>
std::pair<Vector<float>, typename Alg::State> one_round(const Alg& alg, const Client<float>& client, Mlp<float>& ws,
                                                        const Vector<float>& global, std::uint64_t seed = 9) {
  InProcessTransport<float> t;
  t.broadcast(global);
  Rng rng(seed);
  typename Alg::State state;
  client.participate(t, ws, alg, state, rng);
  return {t.collect().at(0).delta, state};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parameter ranges
// ---------------------------------------------------------------------------------------------

TEST_CASE("head_range, body_range and layer_range split an MLP's parameter vector by layers",
          "[personalization]") {
  const Mlp<float> m = mlp<float>(Shape{8, 1, 1}, 4, 16);  // Dense 8->16 (144), ReLU, Dropout, Dense 16->4 (68)
  CHECK(m.num_params() == 212);
  CHECK(head_range(m) == ParamRange{144, 68});
  CHECK(body_range(m) == ParamRange{0, 144});
  CHECK(layer_range(m, 0, 3) == ParamRange{0, 144});  // ReLU and Dropout have no parameters
  CHECK(layer_range(m, 3, 4) == head_range(m, 1));
  const std::vector<TensorInfo> tensors = m.tensors();
  CHECK(tensors.at(2).offset == head_range(m).begin);  // "3.weight": the last Dense starts the head
  const FashionCnn<float> cnn = fashion_cnn<float>();
  CHECK(head_range(cnn, 1).size == 42 * 10 + 10);
  CHECK(head_range(cnn, 2).size == 42 * 10 + 10 + 84 * 42 + 42);
  CHECK(head_range(cnn, 2).end() == cnn.num_params());
  CHECK_THROWS_WITH(head_range(m, 2), Contains("1 <= k < 2") && Contains("got 2"));
  CHECK_THROWS_WITH(head_range(m, 0), Contains("got 0"));
  CHECK_THROWS_WITH(layer_range(m, 3, 5), Contains("<= 4") && Contains("last 5"));
}

// ---------------------------------------------------------------------------------------------
// Ditto
// ---------------------------------------------------------------------------------------------

TEST_CASE("Ditto's global-copy update is LocalTraining's, bitwise, in one round and in a federation",
          "[personalization]") {
  const Blobs b(6);
  Mlp<float> ws = b.model();
  const Vector<float> start = ws.parameters();
  const LocalTraining<Adam<float>> plain(one_epoch, Adam<float>(1e-2));
  const Ditto<Adam<float>> ditto(DittoConfig{0.1, one_epoch, LocalUpdateConfig{2, 5}, 5}, Adam<float>(1e-2));
  const auto [plain_delta, no_state] = one_round(plain, b.clients[0], ws, start);
  const auto [ditto_delta, state] = one_round(ditto, b.clients[0], ws, start);
  CHECK(same_vector(plain_delta, ditto_delta));
  REQUIRE(state.personal.size() == start.size());
  CHECK_FALSE(same_vector(state.personal, start));  // the personal model trained too ...
  CHECK_FALSE(same_vector(Vector<float>(state.personal - start), ditto_delta));  // ... on its own objective

  auto run = [&](auto algorithm) {
    Mlp<float> model = b.model();
    InProcessTransport<float> t;
    auto strategy = Plain<decltype(algorithm)>{UniformSampler(3), algorithm, WeightedMean{}, Sgd<float>(1)};
    train_federated(model, b.clients, t, baseline_config(4), strategy);
    return Vector<float>(model.parameters());
  };
  CHECK(same_vector(run(plain), run(ditto)));
}

TEST_CASE("Ditto with a large lambda keeps the personal model near the global one", "[personalization]") {
  const Blobs b(4);
  Mlp<float> ws = b.model();
  const Vector<float> global = ws.parameters();
  // SGD at rate 0.02 for 20 steps: the proximal step is stable for lr * lambda < 2 (here at most 1). Each
  // step maps v - w to (1 - lr lambda)(v - w) - lr g: with lr lambda = 1 the personal model stays one
  // gradient step from w, without the proximal term it drifts for all 20 steps.
  auto ditto_with = [](double lambda) {
    return Ditto<Sgd<float>>(DittoConfig{lambda, one_epoch, LocalUpdateConfig{10, 10}, 10}, Sgd<float>(0.02));
  };
  auto distance = [&](double lambda) {
    const auto [delta, state] = one_round(ditto_with(lambda), b.clients[1], ws, global);
    return double((state.personal - global).norm());
  };
  const double free = distance(0), mild = distance(1), held = distance(10), tight = distance(50);
  INFO("|v - w| for lambda 0, 1, 10, 50: " << free << ", " << mild << ", " << held << ", " << tight);
  CHECK(free > 0);
  CHECK(mild < free);
  CHECK(held < 0.6 * free);
  CHECK(tight < 0.5 * held);
  CHECK(tight < 0.15 * free);
  CHECK(tight < 0.02 * double(global.norm()));

  // Post-hoc Ditto (a client without state) starts from the global model and is held near it the same way.
  auto post_hoc = [&](double lambda) {
    Rng rng(3);
    const Vector<float> v =
        ditto_with(lambda).personal_parameters(ws, global, {}, detail::local_data_of(b.clients[1]), rng);
    return double((v - global).norm());
  };
  const double post_free = post_hoc(0), post_tight = post_hoc(50);
  INFO("post hoc |v - w| for lambda 0, 50: " << post_free << ", " << post_tight);
  CHECK(post_free > 0);
  CHECK(post_tight < 0.15 * post_free);
  // A client with state gets its v as it is.
  const Ditto<Sgd<float>> ditto(DittoConfig{1.0, one_epoch, one_epoch, 5}, Sgd<float>(0.05));
  const auto [delta, state] = one_round(ditto, b.clients[1], ws, global);
  Rng rng(3);
  CHECK(same_vector(ditto.personal_parameters(ws, global, state, detail::local_data_of(b.clients[1]), rng),
                    state.personal));
  CHECK_THROWS_WITH(Ditto<Sgd<float>>(DittoConfig{-1.0}), Contains("lambda >= 0") && Contains("got -1"));
  CHECK_THROWS_WITH(Ditto<Sgd<float>>(DittoConfig{0.1, {-1, 10}}), Contains("epochs >= 0") && Contains("global -1"));
}

// ---------------------------------------------------------------------------------------------
// FedPer, FedRep, LG-FedAvg
// ---------------------------------------------------------------------------------------------

TEST_CASE("FedPer, FedRep and LG-FedAvg upload exactly zero on the personal part, and the server's "
          "personal part never changes",
          "[personalization]") {
  const Blobs b(6);
  const Mlp<float> proto = b.model();
  const ParamRange head = head_range(proto), body = body_range(proto);
  auto check = [&](const PartialSharing<Adam<float>>& alg) {
    INFO(alg.name());
    const ParamRange r = alg.config().personal;
    Mlp<float> model = b.model();
    const Vector<float> start = model.parameters();
    std::size_t uploads = 0;
    InProcessTransport<float> t([&](const ClientUpdate<float>& u) {
      ++uploads;
      CHECK(u.extras.empty());  // nothing but the delta: the state never travels
      REQUIRE(u.delta.size() == start.size());  // the transport still carries the whole vector
      CHECK((u.delta.segment(r.begin, r.size).array() == 0).all());
      CHECK_FALSE((u.delta.array() == 0).all());  // the shared part did train
    });
    auto strategy = Plain<PartialSharing<Adam<float>>>{UniformSampler(3), alg, WeightedMean{}, Sgd<float>(1)};
    std::vector<PartialSharingState<float>> states;
    train_federated(model, b.clients, t, baseline_config(4), strategy, states);
    CHECK(uploads == 12);
    CHECK(same_vector(Vector<float>(model.parameters().segment(r.begin, r.size)),
                      Vector<float>(start.segment(r.begin, r.size))));
    for (const ParamRange& s : detail::complement(r, start.size()))
      CHECK_FALSE(same_vector(Vector<float>(model.parameters().segment(s.begin, s.size)),
                              Vector<float>(start.segment(s.begin, s.size))));
    Index with_state = 0;
    for (const auto& s : states) {
      if (s.personal.size() == 0) continue;
      ++with_state;
      CHECK(s.personal.size() == r.size);
      CHECK_FALSE(same_vector(s.personal, Vector<float>(start.segment(r.begin, r.size))));
    }
    CHECK(with_state >= 3);
  };
  check(fedper(head, one_epoch, Adam<float>(1e-2)));
  check(fedrep(head, 2, 1, 10, Adam<float>(1e-2)));
  check(lg_fedavg(body, one_epoch, Adam<float>(1e-2)));

  Mlp<float> ws = b.model();
  const auto bad = [&](ParamRange r) {
    return one_round(fedper(r, one_epoch, Adam<float>(1e-2)), b.clients[0], ws, proto.parameters());
  };
  CHECK_THROWS_WITH(bad(ParamRange{200, 20}), Contains("212 parameters") && Contains("[200, 220)"));
  CHECK_THROWS_WITH(bad(ParamRange{0, 212}), Contains("smaller than all of them") && Contains("[0, 212)"));
  CHECK_THROWS_WITH(fedper(ParamRange{0, 0}, one_epoch, Adam<float>(1e-2)), Contains("non-empty personal part"));
  CHECK_THROWS_WITH(fedrep(head, -1, 1, 10, Adam<float>(1e-2)), Contains("epochs >= 0") && Contains("personal -1"));
  PartialSharingState<float> wrong{Vector<float>::Zero(5)};
  Rng rng(1);
  CHECK_THROWS_WITH(fedper(head, one_epoch, Adam<float>(1e-2))
                        .personal_parameters(ws, proto.parameters(), wrong, detail::local_data_of(b.clients[0]), rng),
                    Contains("personal part of 68") && Contains("got 5"));
}

TEST_CASE("FedRep's body is untouched during its head phase and its head during its body phase",
          "[personalization]") {
  const Blobs b(4);
  Mlp<float> ws = b.model();
  const Vector<float> global = ws.parameters();
  const ParamRange head = head_range(ws);
  const Vector<float> global_head = global.segment(head.begin, head.size);
  // AdamW's decoupled weight decay would shrink every parameter it is handed: the frozen part is not.
  SECTION("head phase only: the upload is all zeros, the head trained") {
    const auto [delta, state] = one_round(fedrep(head, 3, 0, 10, AdamW<float>(1e-2)), b.clients[0], ws, global);
    CHECK((delta.array() == 0).all());
    CHECK_FALSE(same_vector(state.personal, global_head));
  }
  SECTION("body phase only: the head is the global one, bitwise, the body trained") {
    const auto [delta, state] = one_round(fedrep(head, 0, 2, 10, AdamW<float>(1e-2)), b.clients[0], ws, global);
    CHECK(same_vector(state.personal, global_head));
    CHECK_FALSE((delta.array() == 0).all());
  }
  SECTION("both: the head phase's head goes into the body phase, which leaves it alone") {
    const auto [delta_head, head_only] = one_round(fedrep(head, 3, 0, 10, AdamW<float>(1e-2)), b.clients[0], ws, global);
    const auto [delta_both, both] = one_round(fedrep(head, 3, 1, 10, AdamW<float>(1e-2)), b.clients[0], ws, global);
    CHECK(same_vector(both.personal, head_only.personal));  // same stream: the head phase is identical
    CHECK_FALSE((delta_both.array() == 0).all());
  }
  SECTION("post-hoc FedRep trains the head on the frozen global body") {
    const auto alg = fedrep(head, 10, 1, 10, AdamW<float>(1e-2), CrossEntropy<float>(), 3);
    Rng rng(2);
    const Vector<float> p = alg.personal_parameters(ws, global, {}, detail::local_data_of(b.clients[0]), rng);
    CHECK(same_vector(Vector<float>(p.head(head.begin)), Vector<float>(global.head(head.begin))));
    CHECK_FALSE(same_vector(Vector<float>(p.segment(head.begin, head.size)), global_head));
  }
}

// ---------------------------------------------------------------------------------------------
// APFL
// ---------------------------------------------------------------------------------------------

TEST_CASE("APFL: the upload is LocalTraining's bitwise, and with alpha fixed at 0 the personal model is the "
          "local w",
          "[personalization]") {
  const Blobs b(4);
  Mlp<float> ws = b.model();
  const Vector<float> global = ws.parameters();
  const LocalData<float> data = detail::local_data_of(b.clients[2]);
  const LocalTraining<Adam<float>> plain(LocalUpdateConfig{2, 10}, Adam<float>(1e-2));
  const auto [plain_delta, no_state] = one_round(plain, b.clients[2], ws, global);

  const Apfl<Adam<float>> fixed(ApflConfig{LocalUpdateConfig{2, 10}, 0.0, 0.0, 5}, Adam<float>(1e-2));
  ApflState<float> state;
  Rng rng(9);
  const ClientUpdate<float> u = fixed.train(ws, GlobalView<float>{global, {}}, data, state, rng);
  const Vector<float> w_local = ws.parameters();
  CHECK(same_vector(u.delta, plain_delta));
  CHECK(state.alpha == 0.0);
  CHECK(same_vector(state.personal, global));         // grad_v = alpha grad f = 0: v never moves
  CHECK(same_vector(fixed.personalized(state, w_local), w_local));  // 0 v + 1 w = w
  Rng unused(1);
  CHECK(same_vector(fixed.personal_parameters(ws, global, state, data, unused), global));

  // Adaptive alpha from 0.5: the same upload; v and alpha move.
  const Apfl<Adam<float>> adaptive(ApflConfig{LocalUpdateConfig{2, 10}, 0.5, 0.1, 5}, Adam<float>(1e-2));
  const auto [delta, learned] = one_round(adaptive, b.clients[2], ws, global);
  CHECK(same_vector(delta, plain_delta));
  CHECK(learned.alpha != 0.5);
  CHECK(learned.alpha >= 0.0);
  CHECK(learned.alpha <= 1.0);
  CHECK_FALSE(same_vector(learned.personal, global));

  CHECK_THROWS_WITH(Apfl<Adam<float>>(ApflConfig{one_epoch, 1.5}), Contains("[0, 1]") && Contains("got 1.5"));
  CHECK_THROWS_WITH(Apfl<Adam<float>>(ApflConfig{one_epoch, 0.5, -1.0}), Contains("alpha_lr >= 0"));
  ApflState<float> bad{global, 2.0};
  CHECK_THROWS_WITH(adaptive.personalized(bad, global), Contains("alpha in [0, 1]") && Contains("got 2"));
}

TEST_CASE("APFL's gradients with respect to alpha and v match central differences", "[personalization]") {
  Mlp<double> model = mlp<double>(Shape{6, 1, 1}, 4, 10);
  Rng init(5);
  model.init(init);
  const Vector<double> w = model.parameters();
  model.init(init);
  Vector<double> v = model.parameters();
  const Matrix<double> x = test::random_batch<double>(6, 12, 3);
  Labels y(12);
  for (Index j = 0; j < y.size(); ++j) y[j] = std::int32_t((j * 7) % 4);
  CrossEntropy<double> ce;
  for (const double alpha : {0.0, 0.3, 0.85}) {
    INFO("alpha " << alpha);
    Rng rng(1);
    const ApflGradients<double> g = apfl_gradients(model, ce, w, v, alpha, x, y, Mode::eval, rng);
    CHECK(same_vector(model.parameters(), w));  // the workspace is left at w
    auto f = [&](double a, const Vector<double>& personal) {
      model.parameters() = detail::apfl_mix(a, personal, w);
      return double(ce.value(model.forward(x), y));
    };
    CHECK(g.loss == Approx(f(alpha, v)).epsilon(1e-12));
    const double h = test::GradTolerance<double>::step;
    const double numeric = (f(alpha + h, v) - f(alpha - h, v)) / (2 * h);
    INFO("d/d alpha: analytic " << g.alpha << ", central difference " << numeric);
    CHECK(std::abs(g.alpha - numeric) / (std::abs(g.alpha) + std::abs(numeric)) <= 1e-6);
    if (alpha > 0) {
      const double err = test::gradient_error<double>(v, g.personal, [&] { return f(alpha, v); });
      CHECK(err <= test::GradTolerance<double>::max_rel_error);
    } else {
      CHECK((g.personal.array() == 0).all());  // alpha = 0: v does not enter vbar
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A heterogeneous federation
// ---------------------------------------------------------------------------------------------

namespace {
/// Concept shift: the same four Gaussian classes everywhere, but client k sees class c labelled
/// (c + k) mod 4. No single model fits more than about a quarter of every client's labels, a personal
/// one can fit all. 10 clients, 30 training samples each and 20 local test samples (split.test, indexing
/// the client's own dataset); clients 8 and 9 opt out (post-hoc personalisation only).
struct ShiftedLabels {
  static constexpr Index dim = 8, classes = 4, clients = 10, train = 30, test = 20;
  std::vector<Dataset<float>> shifted;
  std::vector<Client<float>> members;
  ShiftedLabels() {
    const Dataset<float> base = test::gaussian_classes<float>(clients * (train + test), dim, classes, 0.6, 1);
    for (Index s = 0; s < classes; ++s) {
      Dataset<float> d = base;
      for (Index j = 0; j < d.size(); ++j) d.labels[j] = std::int32_t((d.labels[j] + s) % classes);
      shifted.push_back(std::move(d));
    }
    for (Index k = 0; k < clients; ++k) {
      ClientSplit split;
      for (Index i = 0; i < train + test; ++i) (i < train ? split.train : split.test).push_back(k * (train + test) + i);
      members.emplace_back(k, shifted[std::size_t(k % classes)], split, k >= 8);
    }
  }
  Mlp<float> model() const {
    Mlp<float> m = mlp<float>(Shape{dim, 1, 1}, classes, 32, 0.0);
    Rng rng(5);
    m.init(rng);
    return m;
  }
  double accuracy(Mlp<float>& ws, const Vector<float>& params, std::size_t k) const {
    ws.parameters() = params;
    return evaluate(ws, members[k].train_data(), members[k].split().test).accuracy;
  }
};
}  // namespace

TEST_CASE("in a heterogeneous federation every personal model beats FedAvg's global model on its client's "
          "local test data",
          "[personalization]") {
  const ShiftedLabels fx;
  const LocalUpdateConfig local{2, 10};
  const FederationConfig cfg = baseline_config(30);
  Mlp<float> ws = fx.model();

  Mlp<float> fedavg_model = fx.model();
  {
    InProcessTransport<float> t;
    train_federated(fedavg_model, fx.members, t, cfg, fedavg<float>(4, local, 1e-2));
  }
  std::vector<double> global_acc;
  for (std::size_t k = 0; k < fx.members.size(); ++k) global_acc.push_back(fx.accuracy(ws, fedavg_model.parameters(), k));

  auto check = [&](const char* name, auto algorithm) {
    using Alg = decltype(algorithm);
    Mlp<float> model = fx.model();
    InProcessTransport<float> t;
    auto strategy = Plain<Alg>{UniformSampler(4), algorithm, WeightedMean{}, Sgd<float>(1)};
    std::vector<typename Alg::State> states;
    train_federated(model, fx.members, t, cfg, strategy, states);
    const auto personal = personal_parameters_of(algorithm, fx.model(), model.parameters(), fx.members, states, 3);
    double mean = 0;
    for (std::size_t k = 0; k < fx.members.size(); ++k) {
      const double acc = fx.accuracy(ws, personal[k], k);
      INFO(name << ", client " << k << (fx.members[k].opted_out() ? " (opted out)" : "") << ": personal " << acc
                << ", FedAvg global " << global_acc[k]);
      CHECK(acc > global_acc[k]);
      mean += acc / double(fx.members.size());
    }
    INFO(name << ": mean personal accuracy " << mean);
    CHECK(mean > 0.8);
  };
  const Mlp<float> proto = fx.model();
  check("Ditto", Ditto<Adam<float>>(DittoConfig{0.1, local, local, 30}, Adam<float>(1e-2)));
  check("APFL", Apfl<Adam<float>>(ApflConfig{local, 0.5, 0.05, 30}, Adam<float>(1e-2)));
  check("FedPer", fedper(head_range(proto), local, Adam<float>(1e-2), CrossEntropy<float>(), 30));
  check("FedRep", fedrep(head_range(proto), 4, 1, 10, Adam<float>(1e-2), CrossEntropy<float>(), 30));
  check("LG-FedAvg", lg_fedavg(body_range(proto), local, Adam<float>(1e-2), CrossEntropy<float>(), 30));
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

TEST_CASE("every personalised baseline gives bitwise the same global and personal parameters for 1 and 2 threads",
          "[personalization]") {
  const Blobs b(8, {false, true});  // client 1 opts out: post-hoc personalisation
  const Mlp<float> proto = b.model();
  auto run = [&](auto algorithm, std::size_t threads) {
    using Alg = decltype(algorithm);
    Mlp<float> model = b.model();
    std::size_t with_extras = 0;  // counted here (uploads are serialised), checked on the test's thread
    InProcessTransport<float> t([&](const ClientUpdate<float>& u) { with_extras += !u.extras.empty(); });
    auto strategy = Plain<Alg>{UniformSampler(4), algorithm, WeightedMean{}, Sgd<float>(1)};
    std::vector<typename Alg::State> states;
    train_federated(model, b.clients, t, baseline_config(5, threads), strategy, states);
    auto personal = personal_parameters_of(algorithm, proto, model.parameters(), b.clients, states, 7, threads);
    CHECK(with_extras == 0);  // nothing but the delta travels: the state never does
    personal.push_back(model.parameters());
    return personal;
  };
  auto check_same = [&](const char* name, auto algorithm) {
    INFO(name);
    const auto one = run(algorithm, 1), two = run(algorithm, 2);
    REQUIRE(one.size() == b.clients.size() + 1);
    REQUIRE(two.size() == one.size());
    for (std::size_t k = 0; k < one.size(); ++k) {
      INFO("client " << k << " (" << b.clients.size() << ": the global model)");
      CHECK(same_vector(one[k], two[k]));
    }
    CHECK_FALSE(same_vector(one[1], one.back()));  // the opted-out client was personalised post hoc
  };
  const LocalUpdateConfig local{1, 10};
  check_same("Ditto", Ditto<Adam<float>>(DittoConfig{0.1, local, local, 2}, Adam<float>(1e-2)));
  check_same("APFL", Apfl<Adam<float>>(ApflConfig{local, 0.5, 0.05, 2}, Adam<float>(1e-2)));
  check_same("FedPer", fedper(head_range(proto), local, Adam<float>(1e-2), CrossEntropy<float>(), 2));
  check_same("FedRep", fedrep(head_range(proto), 2, 1, 10, Adam<float>(1e-2), CrossEntropy<float>(), 2));
  check_same("LG-FedAvg", lg_fedavg(body_range(proto), local, Adam<float>(1e-2), CrossEntropy<float>(), 2));

  const auto alg = fedper(head_range(proto), local, Adam<float>(1e-2));
  const std::vector<PartialSharingState<float>> two_states(2);
  CHECK_THROWS_WITH(personal_parameters_of(alg, proto, proto.parameters(), b.clients, two_states, 1),
                    Contains("one state per client (8)") && Contains("got 2"));
}
