// Federation: FedAvg arithmetic and rejection of bad updates, the opt-out guarantee (nothing of
// an opted-out client reaches the server), the specialist and gate never leaving the client,
// and bitwise determinism over thread counts and repeated personalisation.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fedmoe/federated/aggregator.hpp>
#include <fedmoe/fedmoe.hpp>
#include <fedmoe/federated/any_transport.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

static_assert(Aggregator<WeightedMean, float> && Aggregator<WeightedMean, double>);
static_assert(Transport<InProcessTransport<float>, float> && Transport<InProcessTransport<double>, double>);

namespace {

template <class S>
Dataset<S> blobs(Index n, Index dim, Index classes, double noise, std::uint64_t seed) {
  return test::gaussian_classes<S>(n, dim, classes, noise, seed);
}

bool contains(const std::vector<std::int64_t>& ids, std::int64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

/// A small label-skewed federation: `clients` clients of 4-class blobs in 8 dimensions
/// (20 train / 10 val / 10 test samples each); the clients listed in `opted_out` opt out.
struct SmallFederation {
  static constexpr Index dim = 8, classes = 4, n_train = 20, n_val = 10, n_test = 10;
  Dataset<float> train = blobs<float>(600, dim, classes, 0.9, 1);
  Dataset<float> test = blobs<float>(200, dim, classes, 0.9, 2);
  Partition partition;
  std::vector<Client<float>> clients;
  std::vector<std::int64_t> opted_out;

  SmallFederation(Index num_clients, std::vector<std::int64_t> opt_out) : opted_out(std::move(opt_out)) {
    Rng rng(11);
    partition = partition_majority(train.labels, test.labels, classes,
                                   PartitionSpec{num_clients, n_train, n_val, n_test, 0.8}, rng);
    for (Index k = 0; k < num_clients; ++k)
      clients.emplace_back(std::int64_t(k), train, partition[k], contains(opted_out, k));
  }

  Mlp<float> model(std::uint64_t seed = 5) const {
    Mlp<float> m = mlp<float>(Shape{dim, 1, 1}, classes, 16);
    Rng rng(seed);
    m.init(rng);
    return m;
  }
  MlpGate<float> gate() const { return mlp_gate<float>(Shape{dim, 1, 1}, 16); }
};

/// FedAvg with `per_round` clients, 1 local epoch of Adam(1e-2) at batch 10, every round run.
struct SmallConfig {
  FederationConfig fed;
  Index per_round = 2;
};
SmallConfig small_config(Index per_round, int rounds, std::size_t threads = 1) {
  SmallConfig cfg;
  cfg.per_round = per_round;
  cfg.fed.max_rounds = rounds;
  cfg.fed.check_every = 2;
  cfg.fed.patience = 1000;  // run every round
  cfg.fed.threads = threads;
  cfg.fed.seed = 3;
  return cfg;
}
auto small_fedavg(Index per_round) { return fedavg<float>(per_round, LocalUpdateConfig{1, 10}, 1e-2); }
template <class T, class... Progress>
FederationResult train_small(Mlp<float>& model, const std::vector<Client<float>>& clients, T& transport,
                             const SmallConfig& c, Progress&&... progress) {
  return train_federated(model, clients, transport, c.fed, small_fedavg(c.per_round), progress...);
}

PersonalizeConfig small_personalize_config() {
  PersonalizeConfig pc;
  pc.fit.max_epochs = 12;
  pc.fit.check_every = 2;
  pc.fit.patience = 3;
  pc.fit.batch_size = 10;
  pc.lr_specialist = 1e-2;
  pc.lr_finetune = 1e-3;
  pc.lr_gate = 1e-2;
  pc.seed = 17;
  return pc;
}

using test::same_vector;

std::vector<Index> iota_indices(Index n) {
  std::vector<Index> v(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) v[std::size_t(i)] = i;
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. FedAvg
// ---------------------------------------------------------------------------------------------

TEST_CASE("the weighted mean equals the hand-computed sample-weighted mean of the deltas", "[federated]") {
  using S = double;
  Vector<S> a(4), b(4), c(4);
  a << 1.0, -2.0, 3.0, 0.5;
  b << 4.0, 0.0, -1.0, 2.0;
  c << -3.0, 8.0, 5.0, 1.0;
  const std::vector<ClientUpdate<S>> updates{{10, a, 1, {}}, {11, b, 2, {}}, {12, c, 5, {}}};
  Vector<S> out = Vector<S>::Constant(4, 123.0);
  const AggregationReport report = WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(updates), out);
  CHECK(report.ok);
  CHECK(report.used == 3);
  CHECK(report.rejected.empty());
  // (1 a + 2 b + 5 c) / 8, element by element: weights 1/8, 2/8, 5/8 are exact in binary.
  const double expected[4] = {(1.0 * 1 + 2.0 * 4 + 5.0 * -3) / 8, (1.0 * -2 + 2.0 * 0 + 5.0 * 8) / 8,
                              (1.0 * 3 + 2.0 * -1 + 5.0 * 5) / 8, (1.0 * 0.5 + 2.0 * 2 + 5.0 * 1) / 8};
  for (Index i = 0; i < 4; ++i) {
    INFO("coordinate " << i);
    CHECK(out[i] == Approx(expected[i]).epsilon(1e-15));
  }
  // An unweighted mean would differ: the weights matter.
  CHECK(std::abs(out[0] - (a[0] + b[0] + c[0]) / 3) > 0.1);
}

TEST_CASE("the weighted mean rejects bad updates, names them, and averages the rest", "[federated]") {
  using S = double;
  const Vector<S> good = Vector<S>::Constant(4, 1.0), other = Vector<S>::Constant(4, 3.0);
  Vector<S> out = Vector<S>::Zero(4);
  auto aggregate = [&](const std::vector<ClientUpdate<S>>& ups) {
    return WeightedMean{}.aggregate(std::span<const ClientUpdate<S>>(ups), out);
  };
  auto one = [](std::int64_t client, const Vector<S>& d, Index n) { return ClientUpdate<S>{client, d, n, {}}; };
  Vector<S> nan = good, inf = good;
  nan[2] = std::numeric_limits<S>::quiet_NaN();
  inf[0] = -std::numeric_limits<S>::infinity();
  struct Case {
    const char* what;
    ClientUpdate<S> bad;
    Rejection reason;
  };
  const Case cases[] = {{"NaN", one(7, nan, 5), Rejection::non_finite},
                        {"infinity", one(7, inf, 5), Rejection::non_finite},
                        {"wrong size", one(7, Vector<S>::Constant(3, 1.0), 5), Rejection::wrong_size},
                        {"zero samples", one(7, good, 0), Rejection::bad_weight}};
  for (const Case& c : cases) {
    INFO(c.what);
    const AggregationReport r = aggregate({one(0, good, 5), c.bad, one(9, other, 15)});
    CHECK(r.ok);
    CHECK(r.used == 2);
    REQUIRE(r.rejected.size() == 1);
    CHECK(r.rejected[0].client == 7);
    CHECK(r.rejected[0].reason == c.reason);
    for (Index i = 0; i < 4; ++i) CHECK(out[i] == Approx((1.0 * 5 + 3.0 * 15) / 20));
  }
  // Nothing valid: not ok, `out` unchanged.
  out.setConstant(-2.0);
  const AggregationReport none = aggregate({one(3, nan, 5)});
  CHECK_FALSE(none.ok);
  CHECK(none.rejected.size() == 1);
  CHECK_THAT(none.note, Contains("no valid update"));
  CHECK((out.array() == -2.0).all());
  CHECK_FALSE(aggregate({}).ok);
}

TEST_CASE("the server drops a NaN upload through the transport and steps with the rest", "[federated]") {
  const Vector<float> initial = Vector<float>::LinSpaced(6, 0.0f, 1.0f);
  Server<float> server(initial);
  InProcessTransport<float> transport;
  server.publish(transport);
  Vector<float> bad = Vector<float>::Ones(6);
  bad[4] = std::numeric_limits<float>::quiet_NaN();
  transport.upload({9, bad, 10, {}});
  std::vector<ClientUpdate<float>> only_bad = transport.collect();
  const AggregationReport r0 = server.step(only_bad, 0);
  CHECK_FALSE(r0.ok);
  REQUIRE(r0.rejected.size() == 1);
  CHECK(r0.rejected[0].client == 9);
  CHECK(same_vector(server.global(), initial));  // no valid update: no step
  // FedAvg's server step (SGD, lr 1, on the pseudo-gradient -Delta): x + the weighted mean of the deltas.
  transport.upload({2, Vector<float>::Constant(6, 3.0f), 30, {}});
  transport.upload({1, Vector<float>::Constant(6, -1.0f), 10, {}});
  transport.upload({5, bad, 10, {}});
  std::vector<ClientUpdate<float>> updates = transport.collect();
  const AggregationReport r = server.step(updates, 0);
  CHECK(r.ok);
  CHECK(r.used == 2);
  CHECK(r.rejected.size() == 1);
  CHECK(server.accepted(updates).size() == 2);
  for (Index i = 0; i < 6; ++i) CHECK(server.global()[i] == Approx(initial[i] + (3.0 * 30 - 1.0 * 10) / 40));
  // An update with extras the algorithm does not exchange is rejected too.
  transport.upload({4, Vector<float>::Ones(6), 10, {Vector<float>::Ones(6)}});
  std::vector<ClientUpdate<float>> with_extras = transport.collect();
  const AggregationReport r2 = server.step(with_extras, 0);
  CHECK_FALSE(r2.ok);
  REQUIRE(r2.rejected.size() == 1);
  CHECK(r2.rejected[0].reason == Rejection::wrong_extras);
  CHECK_THROWS_WITH(server.set_global(Vector<float>::Zero(5)), Contains("expected 6") && Contains("got 5"));
}

// ---------------------------------------------------------------------------------------------
// 2. Opt-out
// ---------------------------------------------------------------------------------------------

TEST_CASE("opted-out clients' data and parameters never reach the server", "[federated]") {
  const SmallFederation f(8, {1, 4, 6});
  Mlp<float> model = f.model();
  const Index num_params = model.num_params();

  struct Upload {
    std::int64_t client;
    Index size, samples;
  };
  std::vector<Upload> uploads;  // the observers run under the transport's lock
  std::vector<ValidationReport> reports;
  InProcessTransport<float> transport(
      [&](const ClientUpdate<float>& u) { uploads.push_back({u.client, u.delta.size(), u.num_samples}); },
      [&](const ValidationReport& r) { reports.push_back(r); });

  const Index per_round = 3;
  const int rounds = 6;
  std::vector<std::size_t> uploads_after_round;
  const FederationResult result = train_small(model, f.clients, transport, small_config(per_round, rounds, 2),
                                                  [&](int, int, double) { uploads_after_round.push_back(uploads.size()); });

  REQUIRE(result.rounds == rounds);
  CHECK(uploads.size() == std::size_t(rounds * per_round));
  for (const Upload& u : uploads) {
    INFO("upload from client " << u.client);
    CHECK_FALSE(contains(f.opted_out, u.client));
    CHECK(u.size == num_params);
    CHECK(u.samples == SmallFederation::n_train);
  }
  // Each round: exactly per_round uploads, from distinct clients.
  REQUIRE(uploads_after_round.size() == std::size_t(rounds));
  std::size_t start = 0;
  for (std::size_t r = 0; r < uploads_after_round.size(); ++r) {
    INFO("round " << r + 1);
    CHECK(uploads_after_round[r] - start == std::size_t(per_round));
    std::set<std::int64_t> round_clients;
    for (std::size_t i = start; i < uploads_after_round[r]; ++i) round_clients.insert(uploads[i].client);
    CHECK(round_clients.size() == std::size_t(per_round));
    start = uploads_after_round[r];
  }
  // Validation reports: at every check, one from each opted-in client and none from the others.
  const std::size_t opted_in = f.clients.size() - f.opted_out.size();
  CHECK(result.val_history.size() == std::size_t(1 + rounds / 2));
  CHECK(reports.size() == result.val_history.size() * opted_in);
  std::set<std::int64_t> reporters;
  for (const ValidationReport& r : reports) {
    INFO("report from client " << r.client);
    CHECK_FALSE(contains(f.opted_out, r.client));
    CHECK(r.samples == SmallFederation::n_val);
    reporters.insert(r.client);
  }
  CHECK(reporters.size() == opted_in);
  CHECK(transport.collect().empty());
  CHECK(transport.collect_reports().empty());
}

TEST_CASE("an opted-out client refuses to participate or report", "[federated]") {
  const SmallFederation f(5, {3});
  Mlp<float> workspace = f.model();
  std::size_t sent = 0;
  InProcessTransport<float> transport([&](const ClientUpdate<float>&) { ++sent; },
                                      [&](const ValidationReport&) { ++sent; });
  transport.broadcast(workspace.parameters());
  Rng rng(1);
  const Client<float>& out = f.clients[3];
  REQUIRE(out.opted_out());
  const auto algorithm = small_fedavg(1).algorithm;
  NoClientState state;
  CHECK_THROWS_WITH(out.participate(transport, workspace, algorithm, state, rng),
                    Contains("Client 3") && Contains("opted out"));
  CHECK_THROWS_WITH(out.report_validation(transport, workspace), Contains("Client 3") && Contains("opted out"));
  CHECK(sent == 0);
  // An opted-in client does send (so the count above can move).
  f.clients[2].participate(transport, workspace, algorithm, state, rng);
  f.clients[2].report_validation(transport, workspace);
  CHECK(sent == 2);

  // The federation needs opted-in clients, and at most that many per round.
  const SmallFederation all_out(3, {0, 1, 2});
  Mlp<float> model = all_out.model();
  CHECK_THROWS_WITH(train_small(model, all_out.clients, transport, small_config(1, 1)),
                    Contains("did not opt out") && Contains("got 0 of 3"));
  CHECK_THROWS_WITH(train_small(model, f.clients, transport, small_config(5, 1)),
                    Contains("[1, 4]") && Contains("got 5"));
}

TEST_CASE("a client refuses a broadcast of the wrong size instead of resizing its workspace", "[federated]") {
  const SmallFederation f(3, {});
  Mlp<float> workspace = f.model();
  const Index n = workspace.num_params();
  std::size_t sent = 0;
  InProcessTransport<float> transport([&](const ClientUpdate<float>&) { ++sent; },
                                      [&](const ValidationReport&) { ++sent; });
  Rng rng(1);
  const auto algorithm = small_fedavg(1).algorithm;
  NoClientState state;
  // Nothing broadcast yet: an empty global model (assigning it would empty the workspace).
  CHECK_THROWS_WITH(f.clients[0].participate(transport, workspace, algorithm, state, rng),
                    Contains("Client 0") && Contains("expected a broadcast global model of " + std::to_string(n)) &&
                        Contains("got 0"));
  CHECK_THROWS_WITH(f.clients[1].report_validation(transport, workspace),
                    Contains("Client 1") && Contains(std::to_string(n)) && Contains("got 0"));
  transport.broadcast(Vector<float>::Zero(n + 1));
  CHECK_THROWS_WITH(f.clients[2].participate(transport, workspace, algorithm, state, rng),
                    Contains("Client 2") && Contains("got " + std::to_string(n + 1)));
  CHECK(workspace.parameters().size() == n);
  CHECK(sent == 0);
}

// ---------------------------------------------------------------------------------------------
// 3. The specialist and the gate never leave the client
// ---------------------------------------------------------------------------------------------

TEST_CASE("personalisation uploads nothing and the specialist and gate never equal an upload", "[federated]") {
  const SmallFederation f(6, {2});
  Mlp<float> model = f.model();
  std::vector<Vector<float>> uploaded;
  std::size_t reports = 0;
  InProcessTransport<float> transport([&](const ClientUpdate<float>& u) { uploaded.push_back(u.delta); },
                                      [&](const ValidationReport&) { ++reports; });
  train_small(model, f.clients, transport, small_config(2, 4));
  const std::size_t fed_uploads = uploaded.size(), fed_reports = reports;
  REQUIRE(fed_uploads == 8);

  const std::vector<Index> global_test = iota_indices(f.test.size());
  const double global_acc = evaluate(model, f.test, global_test).accuracy;
  // Client 0 opted in, client 2 opted out; the mixture's expert from the fine-tuned model or from scratch.
  const std::pair<ExpertInit, std::int64_t> cases[] = {
      {ExpertInit::finetuned, 0}, {ExpertInit::finetuned, 2}, {ExpertInit::scratch, 0}, {ExpertInit::scratch, 2}};
  for (const auto& [init, id] : cases) {
    INFO("client " << id << ", mixture expert " << to_string(init));
    PersonalizeConfig pc = small_personalize_config();
    pc.expert_init = init;
    pc.methods = {"global", "specialist", "finetuned", "mixture", "mixture-heldout", "mixture-stacked",
                  "mixture-stacked3", "mixture-prior", "mixture-shift"};
    PersonalWorkspace ws(f.model(100), f.gate());
    const ClientResult r = personalize(f.clients[std::size_t(id)], model, ws, f.test, global_test, pc, global_acc);
    CHECK(r.methods.size() == pc.methods.size());
    CHECK(r.client == id);
    CHECK(r.opted_out == (id == 2));
    CHECK(uploaded.size() == fed_uploads);
    CHECK(reports == fed_reports);
    CHECK(transport.collect().empty());
    CHECK(transport.collect_reports().empty());
    // The personalised models' parameters (compared by size and values) were never uploaded.
    for (std::size_t u = 0; u < uploaded.size(); ++u) {
      INFO("upload " << u);
      for (const auto* personal : {&ws.specialist, &ws.finetuned, &ws.expert})
        CHECK_FALSE(same_vector(uploaded[u], personal->parameters()));
      CHECK_FALSE(same_vector(uploaded[u], ws.gate.parameters()));
      CHECK_FALSE(same_vector(uploaded[u], ws.heldout_gate.parameters()));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 6. Determinism
// ---------------------------------------------------------------------------------------------

TEST_CASE("train_federated is bitwise identical for any thread count", "[federated]") {
  const SmallFederation f(7, {5});
  std::set<std::thread::id> uploaders;
  auto run = [&](std::size_t threads, std::uint64_t seed) {
    Mlp<float> model = f.model();
    // The observer runs in the uploading worker, under the transport's lock: sleeping there keeps
    // that worker busy, so the other workers take tasks too (tiny tasks could otherwise all be
    // done by the first worker before the others start, and the test would not exercise them).
    uploaders.clear();
    InProcessTransport<float> transport([&](const ClientUpdate<float>&) {
      uploaders.insert(std::this_thread::get_id());
      std::this_thread::sleep_for(std::chrono::milliseconds(4));
    });
    SmallConfig cfg = small_config(4, 5, threads);
    cfg.fed.seed = seed;
    const FederationResult r = train_small(model, f.clients, transport, cfg);
    return std::make_pair(Vector<float>(model.parameters()), r);
  };
  const auto [p1, r1] = run(1, 3);
  CHECK(uploaders.size() == 1);
  for (const std::size_t threads : {std::size_t(2), std::size_t(3)}) {
    INFO(threads << " threads");
    const auto [p, r] = run(threads, 3);
    CHECK(uploaders.size() > 1);  // several workers did run clients
    CHECK(same_vector(p, p1));
    CHECK(r.rounds == r1.rounds);
    CHECK(r.best_round == r1.best_round);
    CHECK(r.best_val_loss == r1.best_val_loss);
    CHECK(r.val_history == r1.val_history);
  }
  // The seed does matter (so equality above is not vacuous).
  CHECK_FALSE(same_vector(run(1, 4).first, p1));
  CHECK_FALSE(same_vector(p1, f.model().parameters()));
}

namespace {
/// A transport of a process that is not the server and hosts the odd clients (its roles are what
/// AnyTransport must forward), with no protocol messages.
struct OddClientsTransport {
  InProcessTransport<float> inner;
  void broadcast(const Vector<float>& g, const std::vector<Vector<float>>& e = {}) { inner.broadcast(g, e); }
  const Vector<float>& global() const { return inner.global(); }
  const std::vector<Vector<float>>& extras() const { return inner.extras(); }
  void upload(ClientUpdate<float> u) { inner.upload(std::move(u)); }
  std::vector<ClientUpdate<float>> collect() { return inner.collect(); }
  void report(const ValidationReport& r) { inner.report(r); }
  std::vector<ValidationReport> collect_reports() { return inner.collect_reports(); }
  bool is_server() const { return false; }
  bool owns(std::int64_t client) const { return client % 2 == 1; }
  double share(double v) { return v + 1; }
  void gather_results(std::vector<ClientResult>& results) { results.resize(3); }
};
}  // namespace

TEST_CASE("AnyTransport runs a federation bitwise as the transport it wraps, and forwards roles and messages",
          "[federated]") {
  const SmallFederation f(7, {5});
  const SmallConfig cfg = small_config(4, 4, 2);
  Mlp<float> direct_model = f.model();
  int direct_uploads = 0;
  InProcessTransport<float> direct([&](const ClientUpdate<float>&) { ++direct_uploads; });
  const FederationResult direct_result = train_small(direct_model, f.clients, direct, cfg);

  Mlp<float> any_model = f.model();
  int any_uploads = 0;
  AnyTransport<float> any(std::in_place_type<InProcessTransport<float>>,
                          [&](const ClientUpdate<float>&) { ++any_uploads; });
  const FederationResult any_result = train_small(any_model, f.clients, any, cfg);
  CHECK(any_uploads == direct_uploads);
  CHECK(any_uploads == 4 * 4);  // the wrapped transport carried every upload
  CHECK(same_vector(any_model.parameters(), direct_model.parameters()));
  CHECK(any_result.val_history == direct_result.val_history);
  CHECK_FALSE(same_vector(any_model.parameters(), f.model().parameters()));

  // An in-process transport's roles are transport.hpp's defaults; another's are its own.
  CHECK(any.is_server());
  CHECK(any.owns(0));
  CHECK(any.share(2.5) == 2.5);
  AnyTransport<float> odd{std::in_place_type<OddClientsTransport>};
  CHECK_FALSE(odd.is_server());
  CHECK(odd.owns(3));
  CHECK_FALSE(odd.owns(4));
  CHECK(odd.share(2.5) == 3.5);
  std::vector<ClientResult> results(1);
  any.gather_results(results);  // one process holds every client's results: nothing to gather
  CHECK(results.size() == 1);
  odd.gather_results(results);
  CHECK(results.size() == 3);

  // Protocol messages pass when the wrapped transport carries them, and are refused when it does not.
  REQUIRE(any.carries_messages());
  any.post(ClientMessage{3, {1, 2}});
  any.post(ClientMessage{1, {7}});
  const std::vector<ClientMessage> posts = any.collect_posts();
  REQUIRE(posts.size() == 2);
  CHECK((posts[0].client == 1 && posts[0].bytes == std::vector<std::uint8_t>{7}));
  CHECK((posts[1].client == 3 && posts[1].bytes == std::vector<std::uint8_t>{1, 2}));
  CHECK_FALSE(odd.carries_messages());
  CHECK_THROWS_WITH(odd.post(ClientMessage{1, {7}}),
                    Catch::Matchers::Contains("AnyTransport::post: expected a transport that carries protocol "
                                              "messages") &&
                        Catch::Matchers::Contains("got one that does not"));
  CHECK_THROWS_WITH(odd.deliver({}), Catch::Matchers::Contains("AnyTransport::deliver"));
}

TEST_CASE("personalize with the same seed gives an identical ClientResult", "[federated]") {
  const SmallFederation f(4, {});
  Mlp<float> model = f.model();
  InProcessTransport<float> transport;
  train_small(model, f.clients, transport, small_config(2, 2));
  const std::vector<Index> global_test = iota_indices(f.test.size());
  PersonalizeConfig pc = small_personalize_config();
  pc.methods = {"global", "specialist", "finetuned", "mixture", "mixture-heldout", "mixture-stacked",
                "mixture-stacked3", "mixture-prior", "mixture-shift"};
  auto run = [&](std::uint64_t workspace_seed, std::uint64_t seed) {
    // Workspaces in different prior states: personalize must not depend on them.
    PersonalWorkspace ws(f.model(workspace_seed), f.gate());
    Rng rng(workspace_seed);
    ws.gate.init(rng);
    ws.heldout_gate.init(rng);
    ws.finetuned.init(rng);
    PersonalizeConfig c = pc;
    c.seed = seed;
    const ClientResult r = personalize(f.clients[1], model, ws, f.test, global_test, c, 0.5);
    return std::make_tuple(r, Vector<float>(ws.expert.parameters()), Vector<float>(ws.gate.parameters()));
  };
  const auto [a, ea, ga] = run(1, 17);
  const auto [b, eb, gb] = run(2, 17);
  CHECK(a.client == b.client);
  CHECK(a.opted_out == b.opted_out);
  REQUIRE(a.methods.size() == pc.methods.size());
  // Every method, accuracy, metric (gate diagnostics, fit summaries) and series, bitwise (NaN-free here:
  // the partition has majority classes, so the gate AUC is a number).
  CHECK(a == b);
  for (const MethodResult& m : a.methods) {
    INFO(m.method);
    if (m.method.rfind("mixture", 0) == 0) {
      CHECK(m.metric("gate_auc").has_value());
      CHECK(m.metric("mean_gate_local").has_value());
      CHECK(m.find_series("gate_hist_majority") != nullptr);
    }
  }
  CHECK(same_vector(ea, eb));
  CHECK(same_vector(ga, gb));
  // A different seed gives a different personalisation.
  const auto [c, ec, gc] = run(1, 18);
  CHECK_FALSE(same_vector(gc, ga));
}

TEST_CASE("a reused specialist gives bitwise the results of one trained afresh, and personalize times its phases",
          "[federated]") {
  // The specialist depends on the client's data and the seed only: two different global models (two
  // settings of a sweep at one p) share it.
  const SmallFederation f(4, {});
  Mlp<float> first = f.model(), second = f.model();
  InProcessTransport<float> transport;
  train_small(first, f.clients, transport, small_config(2, 2));
  train_small(second, f.clients, transport, small_config(3, 3));
  REQUIRE_FALSE(same_vector(first.parameters(), second.parameters()));
  const std::vector<Index> global_test = iota_indices(f.test.size());
  PersonalizeConfig pc = small_personalize_config();
  pc.methods = {"global", "specialist", "finetuned", "mixture", "mixture-stacked3"};
  PersonalWorkspace ws(f.model(100), f.gate());
  TrainedSpecialist<float> cache;
  PhaseTimes times;
  (void)personalize(f.clients[1], first, ws, f.test, global_test, pc, 0.5, &cache, &times);
  REQUIRE(cache.parameters.size() == first.num_params());
  CHECK(same_vector(cache.parameters, ws.specialist.parameters()));
  CHECK(cache.fit.epochs > 0);
  std::vector<std::string> phases;
  for (const auto& [name, seconds] : times.phases) {
    phases.push_back(name);
    CHECK(seconds >= 0);
  }
  CHECK(phases == std::vector<std::string>{"specialist", "finetuned", "mixture", "held_out_gates", "evaluation"});
  CHECK(times["specialist"] > 0);

  PersonalWorkspace fresh_ws(f.model(200), f.gate());
  const ClientResult fresh = personalize(f.clients[1], second, fresh_ws, f.test, global_test, pc, 0.5);
  const TrainedSpecialist<float> before = cache;
  PersonalWorkspace reuse_ws(f.model(300), f.gate());
  const ClientResult reused = personalize(f.clients[1], second, reuse_ws, f.test, global_test, pc, 0.5, &cache);
  CHECK(reused == fresh);  // every method, accuracy, metric and series, bitwise
  CHECK(same_vector(cache.parameters, before.parameters));  // a filled cache is only read
  CHECK(same_vector(reuse_ws.specialist.parameters(), fresh_ws.specialist.parameters()));
  // A cache from another architecture is refused, not resized.
  TrainedSpecialist<float> wrong{Vector<float>::Zero(3), {}};
  CHECK_THROWS_WITH(personalize(f.clients[1], second, reuse_ws, f.test, global_test, pc, 0.5, &wrong),
                    Contains("reused specialist of " + std::to_string(first.num_params())) && Contains("got 3"));
}

TEST_CASE("personalize rejects an expert workspace of another size instead of resizing it", "[federated]") {
  const SmallFederation f(2, {});
  Mlp<float> model = f.model();
  Mlp<float> wider = mlp<float>(Shape{SmallFederation::dim, 1, 1}, SmallFederation::classes, 32);  // same type
  PersonalWorkspace ws(wider, f.gate());
  const std::vector<Index> global_test = iota_indices(f.test.size());
  CHECK_THROWS_WITH(personalize(f.clients[0], model, ws, f.test, global_test, small_personalize_config(), 0.5),
                    Contains("expected a workspace of " + std::to_string(model.num_params())) &&
                        Contains("got " + std::to_string(wider.num_params())));
}

TEST_CASE("personalize refuses unknown methods and held-out gates without validation data", "[federated]") {
  const SmallFederation f(2, {});
  Mlp<float> model = f.model();
  PersonalWorkspace ws(model, f.gate());
  const std::vector<Index> global_test = iota_indices(f.test.size());
  PersonalizeConfig pc = small_personalize_config();
  pc.methods = {"global", "mixture-best"};
  CHECK_THROWS_WITH(personalize(f.clients[0], model, ws, f.test, global_test, pc, 0.5),
                    Contains("unknown method 'mixture-best'"));
  ClientSplit s = f.clients[0].split();
  s.val.resize(1);
  const Client<float> one_val(0, f.train, s, false);
  pc.methods = {"global", "mixture-prior"};  // needs no validation data
  CHECK(personalize(one_val, model, ws, f.test, global_test, pc, 0.5).methods.size() == 2);
  pc.methods = {"global", "mixture-shift"};
  CHECK_THROWS_WITH(personalize(one_val, model, ws, f.test, global_test, pc, 0.5),
                    Contains("at least 2 validation samples") && Contains("has 1"));
}

TEST_CASE("without validation data the federation runs every round and keeps the last model", "[federated]") {
  SmallFederation f(3, {});
  std::vector<Client<float>> no_val;
  for (const auto& c : f.clients) {
    ClientSplit s = c.split();
    s.val.clear();
    no_val.emplace_back(c.id(), f.train, s, false);
  }
  Mlp<float> model = f.model();
  InProcessTransport<float> transport;
  SmallConfig cfg = small_config(2, 7);
  cfg.fed.check_every = 1;
  cfg.fed.patience = 1;  // with NaN losses counted as "no improvement" this would stop after 1 check
  const FederationResult r = train_small(model, no_val, transport, cfg);
  CHECK(r.rounds == 7);
  CHECK(r.best_round == 0);
}

TEST_CASE("train_federated rejects client ids outside the random-stream range", "[federated]") {
  SmallFederation f(2, {});
  std::vector<Client<float>> clients{Client<float>(std::int64_t(1) << 20, f.train, f.clients[0].split(), false)};
  Mlp<float> model = f.model();
  InProcessTransport<float> transport;
  CHECK_THROWS_WITH(train_small(model, clients, transport, small_config(1, 1)),
                    Contains("client ids in [0, 2^20)") && Contains("got 1048576"));
}
