// MPI test (run with mpirun -np N, N >= 2; CTest runs N = 3): a small synthetic federation
// (Gaussian blobs, label-skewed clients, two opted out) is trained with FedAvg over MpiTransport
// and every client personalised on its own rank; rank 0 then runs the same federation in process
// and checks that the global parameters (on every rank), the federation result and every
// client's metrics are BITWISE equal. The same comparison runs for every kind of strategy part
// (server optimizers, FedProx, SCAFFOLD with its extra vectors both ways, robust aggregators,
// attacks and client failures). Then malformed messages (corrupted, truncated, misrouted) sent by
// rank 1 must be rejected by rank 0 with an error naming rank 1, while an update of the wrong
// length is delivered and then rejected by the server like any hostile update.
// Exit code 0 on success; every failure is printed.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <fedmoe/distributed/mpi.hpp>
#include <fedmoe/federated/aggregators/any_aggregator.hpp>
#include <fedmoe/fedmoe.hpp>

#include "../synthetic_data.hpp"

using namespace fedmoe;

namespace {

int failures = 0;
void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "FAILED (rank " << MpiSession::rank() << "): " << what << "\n";
  }
}

template <class S>
Dataset<S> blobs(Index n, Index dim, Index classes, double noise, std::uint64_t seed) {
  return test::gaussian_classes<S>(n, dim, classes, noise, seed);
}

constexpr Index dim = 8, classes = 4, num_clients = 9;

struct Federation {
  Dataset<float> train = blobs<float>(600, dim, classes, 0.9, 1);
  Dataset<float> test = blobs<float>(200, dim, classes, 0.9, 2);
  std::vector<Client<float>> clients;
  Federation() {
    Rng rng(11);
    Partition part = partition_majority(train.labels, test.labels, classes,
                                         PartitionSpec{num_clients, 20, 10, 10, 0.8}, rng);
    for (Index k = 0; k < num_clients; ++k) clients.emplace_back(k, train, part[k], k == 1 || k == 4);
  }
};

struct Outcome {
  Vector<float> global;
  FederationResult fed;
  std::vector<ClientResult> results;
};

/// The whole pipeline on any transport: FedAvg, then personalisation of the hosted clients.
template <class T>
Outcome run(const Federation& f, T& transport) {
  FederationConfig cfg;
  cfg.max_rounds = 40;
  cfg.check_every = 2;
  cfg.patience = 2;
  cfg.threads = 2;  // uploads from worker threads
  cfg.seed = 3;
  auto model = mlp<float>(Shape{dim, 1, 1}, classes, 16);
  Rng init(5);
  model.init(init);
  Outcome out;
  // a high rate: the validation loss turns up, early stopping restores
  out.fed = train_federated(model, f.clients, transport, cfg, fedavg<float>(4, LocalUpdateConfig{2, 10}, 5e-2));
  out.global = model.parameters();

  PersonalizeConfig pc;
  pc.fit = {12, 2, 3, 10};
  pc.lr_specialist = 1e-2;
  pc.lr_finetune = 1e-3;
  pc.lr_gate = 1e-2;
  pc.seed = 17;
  std::vector<Index> global_test(std::size_t(f.test.size()));
  for (Index i = 0; i < f.test.size(); ++i) global_test[std::size_t(i)] = i;
  // Every method, so that every metric and series crosses the wire (client_result.hpp's encoding).
  pc.methods = {"global", "specialist", "finetuned", "mixture", "mixture-heldout", "mixture-stacked",
                "mixture-stacked3", "mixture-prior", "mixture-shift"};
  PersonalWorkspace ws(model, mlp_gate<float>(Shape{dim, 1, 1}, 16));
  const double global_acc = evaluate(ws.finetuned, f.test, global_test).accuracy;
  out.results.resize(f.clients.size());
  for (const auto& c : f.clients)
    if (transport_owns(transport, c.id()))
      out.results[std::size_t(c.id())] = personalize(c, model, ws, f.test, global_test, pc, global_acc);
  if constexpr (requires { transport.gather_results(out.results); }) transport.gather_results(out.results);
  return out;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

/// The federation alone with `strategy` and `attack`, on any transport.
template <class T, class Strat>
std::pair<Vector<float>, FederationResult> federate(const Federation& f, T& transport, Strat strategy,
                                                    AttackConfig attack) {
  FederationConfig cfg;
  cfg.max_rounds = 8;
  cfg.check_every = 4;
  cfg.patience = 2;
  cfg.threads = 2;
  cfg.seed = 9;
  cfg.attack = attack;
  auto model = mlp<float>(Shape{dim, 1, 1}, classes, 16);
  Rng init(5);
  model.init(init);
  std::vector<typename decltype(strategy.algorithm)::State> states;
  FederationResult r = train_federated(model, f.clients, transport, cfg, strategy, states);
  return {model.parameters(), r};
}

/// Every strategy part over MPI against the in-process run: global model, validation history and
/// per-round counts bitwise equal.
void compare_strategies(const Federation& f) {
  const LocalUpdateConfig local{2, 10};
  auto adam = LocalTraining<Adam<float>>(local, Adam<float>(5e-2));
  auto spec = [](const char* name, Index f = 0) {
    AggregatorSpec a;
    a.name = name;
    a.byzantine_bound = f;
    return a;
  };
  auto server = [](const char* name, double lr) {
    ServerOptimizerSpec s;
    s.name = name;
    s.lr = lr;
    return make_server_optimizer<float>(s);
  };
  auto attack = [](AttackKind kind, double fraction, double failure) {
    AttackConfig a;
    a.kind = kind;
    a.fraction = fraction;
    a.failure = failure;
    return a;
  };
  using Any = Strategy<UniformSampler, LocalTraining<Adam<float>>, AnyAggregator, AnyOptimizer<float>>;
  struct Case {
    std::string name;
    std::function<std::pair<Vector<float>, FederationResult>(bool)> run;
  };
  // Through AnyTransport, as fedmoe-paper-mpi runs them (one federation loop compiled for both transports).
  auto run_on = [&](bool mpi, auto strategy, AttackConfig a) {
    AnyTransport<float> t = mpi ? AnyTransport<float>(std::in_place_type<MpiTransport<float>>, MPI_COMM_WORLD)
                                : AnyTransport<float>(std::in_place_type<InProcessTransport<float>>);
    return federate(f, t, std::move(strategy), a);
  };
  const std::vector<Case> cases{
      {"scaffold", [&](bool mpi) {
         return run_on(mpi, Strategy<UniformSampler, Scaffold<float>, WeightedMean, Sgd<float>>{
                                UniformSampler(4), Scaffold<float>(5e-2, local), WeightedMean{}, Sgd<float>(1.0)},
                       AttackConfig{});
       }},
      {"fedprox + median", [&](bool mpi) {
         return run_on(mpi, Strategy<UniformSampler, FedProx<Adam<float>>, AnyAggregator, AnyOptimizer<float>>{
                                UniformSampler(5), FedProx<Adam<float>>(0.1, local, Adam<float>(5e-2)),
                                make_aggregator(spec("median")), server("fedavg", 1)},
                       AttackConfig{});
       }},
      {"fedadam + krum, sign-flip, failures", [&](bool mpi) {
         return run_on(mpi, Any{UniformSampler(7), adam, make_aggregator(spec("krum", 1)), server("fedadam", 1e-2)},
                       attack(AttackKind::sign_flip, 0.15, 0.1));
       }},
      {"fedyogi + trimmed mean, ALIE", [&](bool mpi) {
         return run_on(mpi, Any{UniformSampler(6), adam, make_aggregator(spec("trimmed-mean")), server("fedyogi", 1e-2)},
                       attack(AttackKind::alie, 0.2, 0));
       }},
      {"fedavgm + geometric median, noise", [&](bool mpi) {
         return run_on(mpi, Any{UniformSampler(6), adam, make_aggregator(spec("geometric-median")),
                                server("fedavgm", 0.1)},
                       attack(AttackKind::noise, 0.2, 0));
       }},
      {"fedadagrad + bulyan, label flip", [&](bool mpi) {
         return run_on(mpi, Any{UniformSampler(7), adam, make_aggregator(spec("bulyan", 1)), server("fedadagrad", 1e-2)},
                       attack(AttackKind::label_flip, 0.15, 0));
       }},
  };
  for (const Case& c : cases) {
    const auto [mpi_global, mpi_fed] = c.run(true);
    if (MpiSession::rank() != 0) continue;
    const auto [local_global, local_fed] = c.run(false);
    const bool same_model = mpi_global.size() == local_global.size() &&
                            std::memcmp(mpi_global.data(), local_global.data(), sizeof(float) * std::size_t(mpi_global.size())) == 0;
    expect(same_model, c.name + ": global parameters differ between MPI and in-process runs");
    bool same_history = mpi_fed.history.size() == local_fed.history.size() && mpi_fed.rounds == local_fed.rounds;
    for (std::size_t i = 0; same_history && i < mpi_fed.history.size(); ++i) {
      const RoundRecord &a = mpi_fed.history[i], &b = local_fed.history[i];
      same_history = a.sampled == b.sampled && a.failed == b.failed && a.attackers == b.attackers &&
                     a.received == b.received && a.rejected == b.rejected && a.discarded == b.discarded &&
                     a.used == b.used && a.stepped == b.stepped;
    }
    expect(same_history, c.name + ": per-round records differ");
    bool same_val = mpi_fed.val_history.size() == local_fed.val_history.size();
    for (std::size_t i = 0; same_val && i < mpi_fed.val_history.size(); ++i)
      same_val = same_bits(mpi_fed.val_history[i].second, local_fed.val_history[i].second);
    expect(same_val, c.name + ": validation history differs");
    // The case must have done something: the model moved.
    auto initial = mlp<float>(Shape{dim, 1, 1}, classes, 16);
    Rng init(5);
    initial.init(init);
    expect(!(local_global.array() == initial.parameters().array()).all(), c.name + ": the model never changed");
    std::cout << "mpi_federation: " << c.name << ": " << local_fed.rounds << " rounds, MPI vs in-process "
              << (same_model && same_history && same_val ? "BITWISE EQUAL" : "DIFFERENT") << "\n";
  }
}

void compare(const Outcome& mpi, const Outcome& local) {
  expect(mpi.global.size() == local.global.size() &&
             std::memcmp(mpi.global.data(), local.global.data(), sizeof(float) * std::size_t(local.global.size())) == 0,
         "global parameters differ between MPI and in-process runs");
  expect(mpi.fed.rounds == local.fed.rounds && mpi.fed.best_round == local.fed.best_round &&
             same_bits(mpi.fed.best_val_loss, local.fed.best_val_loss),
         "federation result (rounds, best round, best loss) differs");
  expect(mpi.fed.val_history.size() == local.fed.val_history.size(), "validation history length differs");
  for (std::size_t i = 0; i < std::min(mpi.fed.val_history.size(), local.fed.val_history.size()); ++i)
    expect(mpi.fed.val_history[i].first == local.fed.val_history[i].first &&
               same_bits(mpi.fed.val_history[i].second, local.fed.val_history[i].second),
           "validation history entry " + std::to_string(i) + " differs");
  for (std::size_t k = 0; k < local.results.size(); ++k) {
    const ClientResult &a = mpi.results[k], &b = local.results[k];
    // Bitwise: the encodings are equal (a NaN metric compares equal to itself there, unlike with ==).
    expect(!a.methods.empty() && encode_result(a) == encode_result(b), "metrics of client " + std::to_string(k) + " differ");
  }
}

/// Rank 0 calls collect() on `t` while rank 1 has sent `frames`; expects an error containing both needles.
void expect_rejected(MpiTransport<float>& t, const std::vector<std::vector<std::byte>>& frames, const std::string& a,
                     const std::string& b, bool reports = false) {
  if (t.rank() == 1)
    for (const auto& f : frames)
      MPI_Send(f.data(), int(f.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
  if (t.rank() == 0) {
    try {
      if (reports) t.collect_reports();
      else t.collect();
      expect(false, "a malformed message was accepted (expected: " + b + ")");
    } catch (const Error& e) {
      const std::string msg = e.what();
      expect(msg.find(a) != std::string::npos && msg.find(b) != std::string::npos,
             "error '" + msg + "' should contain '" + a + "' and '" + b + "'");
      std::cout << "mpi_federation: rejected as expected: " << msg << "\n";
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

void malformed_messages(const Vector<float>& global) {
  MpiTransport<float> t;
  t.broadcast(global);  // sizes rank 0's expectation of an update
  const auto n = std::size_t(global.size());
  std::vector<float> params(global.data(), global.data() + n);
  auto head = [](std::int64_t count) { return encode_frame(FrameKind::count, -1, count, std::span<const double>()); };
  // Corrupted: a flipped byte in the payload of a valid update of rank 1's client 0.
  auto corrupted = encode_frame(FrameKind::update, 0, 20, std::span<const float>(params));
  corrupted[frame_header_bytes + 3] ^= std::byte{0x40};
  expect_rejected(t, {head(1), corrupted}, "rank 1", "checksum mismatch");
  // Truncated.
  auto truncated = encode_frame(FrameKind::update, 0, 20, std::span<const float>(params));
  truncated.resize(truncated.size() - 8);
  expect_rejected(t, {head(1), truncated}, "rank 1", "truncated");
  // Wrong shape: one parameter short. Not a framing error: the update arrives, and the server rejects it.
  if (t.rank() == 1) {
    for (const auto& frame : {head(1), encode_frame(FrameKind::update, 0, 20, std::span<const float>(params).first(n - 1))})
      MPI_Send(frame.data(), int(frame.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
  } else if (t.rank() > 1) {
    const auto none = head(0);
    MPI_Send(none.data(), int(none.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
  } else {
    std::vector<ClientUpdate<float>> updates = t.collect();
    expect(updates.size() == 1 && updates[0].delta.size() == global.size() - 1, "a short update is delivered as such");
    Server<float> server(global);
    const AggregationReport r = server.step(updates, 0);
    expect(!r.ok && r.rejected.size() == 1 && r.rejected[0].client == 0 && r.rejected[0].reason == Rejection::wrong_size,
           "the server rejects the short update as wrong_size");
    expect(std::memcmp(server.global().data(), global.data(), sizeof(float) * n) == 0, "and keeps its model");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // A validation report over a negative number of samples.
  const double loss = 1.5;
  expect_rejected(t, {head(1), encode_frame(FrameKind::report, 0, -5, std::span<const double>(&loss, 1))}, "rank 1",
                  "over -5 samples, expected >= 0", true);
  // Misrouted: rank 1 sends an update for a client hosted by another rank.
  const std::int64_t foreign = 1;  // client 1 lives on rank 2 when N >= 3
  if (t.size() >= 3)
    expect_rejected(t, {head(1), encode_frame(FrameKind::update, foreign, 20, std::span<const float>(params))},
                    "rank 1", "hosted by rank 2");
}

/// Protocol messages: every rank's hosted clients post (two each, in order), rank 0 receives all of them
/// sorted by client (stably), answers each client, and each rank receives exactly its clients' answers;
/// a message misrouted by rank 1 is rejected naming rank 1.
void protocol_messages() {
  MpiTransport<float> t;
  const std::int64_t clients = 7;
  auto payload = [](std::int64_t c, int k) {
    return std::vector<std::uint8_t>{std::uint8_t(c), std::uint8_t(k), std::uint8_t(0xA5 ^ c), 0, 255};
  };
  for (std::int64_t c = 0; c < clients; ++c)
    if (t.owns(c))
      for (int k = 0; k < 2; ++k) t.post({c, payload(c, k)});
  std::vector<ClientMessage> got = t.collect_posts();
  std::vector<ClientMessage> answers;
  if (t.is_server()) {
    bool ok = got.size() == std::size_t(2 * clients);
    for (std::size_t i = 0; ok && i < got.size(); ++i)
      ok = got[i].client == std::int64_t(i / 2) && got[i].bytes == payload(std::int64_t(i / 2), int(i % 2));
    expect(ok, "collect_posts: every client's two messages, sorted by client, in posting order");
    for (std::int64_t c = clients - 1; c >= 0; --c) answers.push_back({c, std::vector<std::uint8_t>(std::size_t(c) + 1, 7)});
  } else {
    expect(got.empty(), "collect_posts returns nothing on a client rank");
  }
  const std::vector<ClientMessage> mine = t.deliver(answers);
  if (!t.is_server()) {
    std::int64_t expected = 0;
    for (std::int64_t c = 0; c < clients; ++c) expected += t.owns(c) ? 1 : 0;
    bool ok = std::int64_t(mine.size()) == expected;
    for (std::size_t i = 0; ok && i < mine.size(); ++i)
      ok = t.owns(mine[i].client) && mine[i].bytes == std::vector<std::uint8_t>(std::size_t(mine[i].client) + 1, 7) &&
           (i == 0 || mine[i - 1].client < mine[i].client);
    expect(ok, "deliver: each rank receives exactly its own clients' messages, sorted");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // Misrouted: rank 1 sends a message of a client hosted by rank 2.
  if (t.size() >= 3) {
    auto head = encode_frame(FrameKind::count, -1, 1, std::span<const double>());
    const std::vector<std::uint8_t> bytes{1, 2, 3};
    auto bad = encode_frame(FrameKind::message, 1, 0, std::span<const std::uint8_t>(bytes));
    if (t.rank() == 1)
      for (const auto& f : {head, bad}) MPI_Send(f.data(), int(f.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
    else if (t.rank() > 1) {
      auto none = encode_frame(FrameKind::count, -1, 0, std::span<const double>());
      MPI_Send(none.data(), int(none.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
    }
    if (t.rank() == 0) {
      try {
        t.collect_posts();
        expect(false, "a misrouted protocol message was accepted");
      } catch (const Error& e) {
        const std::string msg = e.what();
        expect(msg.find("rank 1") != std::string::npos && msg.find("hosted by rank 2") != std::string::npos,
               "error '" + msg + "' should name rank 1 and rank 2");
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(argc, argv);
  const int rank = MpiSession::rank(), size = MpiSession::size();
  try {
    Federation f;
    MpiTransport<float> transport;
    for (const auto& c : f.clients)
      expect(transport.owns(c.id()) == (rank == 1 + int(c.id() % (size - 1))), "client placement");
    const Outcome over_mpi = run(f, transport);

    // Every rank holds the same final global model: compare with rank 0's.
    Vector<float> root_global = over_mpi.global;
    MPI_Bcast(root_global.data(), int(root_global.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
    expect(std::memcmp(root_global.data(), over_mpi.global.data(), sizeof(float) * std::size_t(root_global.size())) == 0,
           "this rank's final global model differs from rank 0's");

    if (rank == 0) {
      InProcessTransport<float> local_transport;
      const Outcome in_process = run(f, local_transport);
      compare(over_mpi, in_process);
      expect(over_mpi.fed.best_round < over_mpi.fed.rounds,
             "the setup should make early stopping restore an earlier model (best round " +
                 std::to_string(over_mpi.fed.best_round) + ", rounds " + std::to_string(over_mpi.fed.rounds) + ")");
      std::cout << "mpi_federation: " << size << " processes, " << num_clients << " clients (2 opted out), "
                << over_mpi.fed.rounds << " rounds (best " << over_mpi.fed.best_round << "), "
                << over_mpi.global.size() << " parameters: MPI vs in-process "
                << (failures == 0 ? "BITWISE EQUAL" : "DIFFERENT") << "\n";
    }
    MPI_Barrier(MPI_COMM_WORLD);
    compare_strategies(f);
    MPI_Barrier(MPI_COMM_WORLD);
    malformed_messages(over_mpi.global);
    MPI_Barrier(MPI_COMM_WORLD);
    protocol_messages();
  } catch (const std::exception& e) {
    std::cerr << "mpi_federation: error on rank " << rank << ": " << e.what() << "\n";
    MpiSession::abort(1);
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::cout << "mpi_federation: " << (total == 0 ? "all checks passed" : "FAILED") << "\n";
  return total == 0 ? 0 : 1;
}
