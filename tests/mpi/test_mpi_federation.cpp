// MPI test (run with mpirun -np N, N >= 2; CTest runs N = 3): a small synthetic federation
// (Gaussian blobs, label-skewed clients, two opted out) is trained with FedAvg over MpiTransport
// and every client personalised on its own rank; rank 0 then runs the same federation in process
// and checks that the global parameters (on every rank), the federation result and every
// client's metrics are BITWISE equal. Then malformed messages (corrupted, misrouted, wrong shape)
// sent by rank 1 must be rejected by rank 0 with an error naming rank 1.
// Exit code 0 on success; every failure is printed.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <fedmoe/distributed/mpi.hpp>
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
  cfg.clients_per_round = 4;
  cfg.max_rounds = 40;
  cfg.check_every = 2;
  cfg.patience = 2;
  cfg.local = {2, 10, 5e-2};  // a high rate: the validation loss turns up, early stopping restores
  cfg.threads = 2;  // uploads from worker threads
  cfg.seed = 3;
  auto model = mlp<float>(Shape{dim, 1, 1}, classes, 16);
  Rng init(5);
  model.init(init);
  Outcome out;
  out.fed = train_federated(model, f.clients, transport, cfg);
  out.global = model.parameters();

  PersonalizeConfig pc;
  pc.fit = {12, 2, 3, 10};
  pc.lr_specialist = 1e-2;
  pc.lr_finetune = 1e-3;
  pc.lr_gate = 1e-2;
  pc.seed = 17;
  std::vector<Index> global_test(std::size_t(f.test.size()));
  for (Index i = 0; i < f.test.size(); ++i) global_test[std::size_t(i)] = i;
  auto expert = model;
  auto gate = mlp_gate<float>(Shape{dim, 1, 1}, 16);
  const double global_acc = evaluate(expert, f.test, global_test).accuracy;
  out.results.resize(f.clients.size());
  for (const auto& c : f.clients)
    if (transport_owns(transport, c.id()))
      out.results[std::size_t(c.id())] = personalize(c, model, expert, gate, f.test, global_test, pc, global_acc);
  if constexpr (requires { transport.gather_results(out.results); }) transport.gather_results(out.results);
  return out;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

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
    bool ok = a.client == b.client && a.opted_out == b.opted_out && same_bits(a.mean_gate_local, b.mean_gate_local) &&
              same_bits(a.mean_gate_global, b.mean_gate_global);
    for (int m = 0; m < 4; ++m) ok = ok && same_bits(a.local_acc[m], b.local_acc[m]) && same_bits(a.global_acc[m], b.global_acc[m]);
    for (int m = 0; m < 3; ++m)
      ok = ok && a.fits[m].epochs == b.fits[m].epochs && a.fits[m].best_epoch == b.fits[m].best_epoch &&
           same_bits(a.fits[m].best_val_loss, b.fits[m].best_val_loss);
    expect(ok, "metrics of client " + std::to_string(k) + " differ");
  }
}

/// Rank 0 calls collect() on `t` while rank 1 has sent `frames`; expects an error containing both needles.
void expect_rejected(MpiTransport<float>& t, const std::vector<std::vector<std::byte>>& frames, const std::string& a,
                     const std::string& b) {
  if (t.rank() == 1)
    for (const auto& f : frames)
      MPI_Send(f.data(), int(f.size()), MPI_BYTE, 0, MpiTransport<float>::tag_uplink, MPI_COMM_WORLD);
  if (t.rank() == 0) {
    try {
      t.collect();
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
  // Wrong shape: one parameter short.
  expect_rejected(t, {head(1), encode_frame(FrameKind::update, 0, 20, std::span<const float>(params).first(n - 1))},
                  "rank 1", "wrong shape");
  // Misrouted: rank 1 sends an update for a client hosted by another rank.
  const std::int64_t foreign = 1;  // client 1 lives on rank 2 when N >= 3
  if (t.size() >= 3)
    expect_rejected(t, {head(1), encode_frame(FrameKind::update, foreign, 20, std::span<const float>(params))},
                    "rank 1", "hosted by rank 2");
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
    malformed_messages(over_mpi.global);
  } catch (const std::exception& e) {
    std::cerr << "mpi_federation: error on rank " << rank << ": " << e.what() << "\n";
    MpiSession::abort(1);
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::cout << "mpi_federation: " << (total == 0 ? "all checks passed" : "FAILED") << "\n";
  return total == 0 ? 0 : 1;
}
