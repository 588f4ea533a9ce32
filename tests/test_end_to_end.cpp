// End to end on a small synthetic non-IID problem: partition_majority label skew, FedAvg with
// opt-out, then personalisation of every client. The mixture of experts must match or beat
// both of its experts (the global model and the local specialist) on mean local-test accuracy.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include <fedmoe/fedmoe.hpp>

#include "synthetic_data.hpp"

using namespace fedmoe;

TEST_CASE("end to end: the mixture matches or beats the global model and the specialist on local test",
          "[end_to_end]") {
  constexpr Index dim = 32, classes = 10, num_clients = 10, hidden = 64;
  constexpr double noise = 1.6;
  const Dataset<float> train = test::gaussian_classes<float>(3000, dim, classes, noise, 1, 77);
  const Dataset<float> test = test::gaussian_classes<float>(2000, dim, classes, noise, 2, 77);

  Rng part_rng(3);
  const Partition partition = partition_majority(train.labels, test.labels, classes,
                                                 PartitionSpec{num_clients, 100, 100, 200, 0.9}, part_rng);
  partition.validate();
  std::vector<Client<float>> clients;
  for (Index k = 0; k < num_clients; ++k)
    clients.emplace_back(std::int64_t(k), train, partition[k], /*opt_out=*/k % 5 == 4);  // 2 of 10 opt out

  Mlp<float> global = mlp<float>(Shape{dim, 1, 1}, classes, hidden);
  Rng init_rng(4);
  global.init(init_rng);
  FederationConfig fcfg;
  fcfg.max_rounds = 40;
  fcfg.check_every = 5;
  fcfg.patience = 3;
  fcfg.seed = 5;
  InProcessTransport<float> transport;
  const FederationResult fres = train_federated(global, clients, transport, fcfg, fedavg<float>(4, LocalUpdateConfig{3, 10}, 1e-3));

  std::vector<Index> global_test(static_cast<std::size_t>(test.size()));
  for (Index i = 0; i < test.size(); ++i) global_test[std::size_t(i)] = i;
  const double global_acc = evaluate(global, test, global_test).accuracy;

  PersonalizeConfig pcfg;
  pcfg.fit = FitConfig{100, 5, 4, 10};
  pcfg.seed = 6;
  PersonalWorkspace ws(mlp<float>(Shape{dim, 1, 1}, classes, hidden), mlp_gate<float>(Shape{dim, 1, 1}, hidden));
  double local[4] = {0, 0, 0, 0}, glob[4] = {0, 0, 0, 0};
  const char* methods[4] = {"global", "specialist", "finetuned", "mixture"};
  for (const auto& client : clients) {
    const ClientResult r = personalize(client, global, ws, test, global_test, pcfg, global_acc);
    for (int m = 0; m < 4; ++m) {
      const MethodResult* mr = r.find(methods[m]);
      REQUIRE(mr != nullptr);
      local[m] += mr->local_acc / double(num_clients);
      glob[m] += mr->global_acc / double(num_clients);
    }
  }

  INFO("FedAvg: " << fres.rounds << " rounds, best round " << fres.best_round << ", val loss "
                  << fres.best_val_loss);
  INFO("mean local-test accuracy: global " << local[0] << ", specialist " << local[1] << ", finetuned " << local[2]
                                           << ", mixture " << local[3]);
  INFO("mean global-test accuracy: global " << glob[0] << ", specialist " << glob[1] << ", finetuned " << glob[2]
                                            << ", mixture " << glob[3]);
  // Sanity: the problem is learnable but not trivial, and label skew helps the specialist locally.
  CHECK(local[0] > 0.3);
  CHECK(local[0] < 0.95);
  CHECK(glob[1] < glob[0]);  // the specialist generalises worse than the global model
  // The claim: the mixture is at least as good as either of its experts on the client's own distribution.
  CHECK(local[3] >= local[1]);
  CHECK(local[3] >= local[0]);
}
