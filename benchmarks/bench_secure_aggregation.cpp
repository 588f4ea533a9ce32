// Secure aggregation (federated/secure/secure_aggregation.hpp, Bonawitz et al. 2017) of one round of N
// client updates of P floats, against the plain weighted sum of the same updates.
//
// Case names:
//   secagg/round/n<N>/p<P>             one full secure round on the complete graph, t = N/2 + 1: every
//                                      client's work (fixed-point encoding, keys, Shamir shares, sealing and
//                                      opening them, N masks of P + 1 words, unmasking) and the server's
//                                      (routing, summing, reconstruction, unmasking, decoding the mean),
//                                      every message serialized and parsed, all on one thread.
//   secagg/round-drop10/n<N>/p<P>      the same with N/10 clients dropping after key sharing: the server
//                                      then regenerates their pairwise masks with every survivor.
//   secaggplus/round/n<N>/k<K>/p<P>    the same on the SecAgg+ Harary graph of degree K (K = 2 ceil(log2 N),
//                                      t = K/2 + 1): an illustration of the sparse graph's cost, not a
//                                      parameter choice for any security level (Bell et al. 2020 size K from
//                                      the dropout and corruption rates).
//   plain/round/n<N>/p<P>              WeightedMean (FedAvg) of the same updates: what the server computes
//                                      without secure aggregation.
//   federated_round/{plain,secure}/n100/fashion_cnn
//                                      END TO END: one round of train_federated with 100 sampled clients of
//                                      the paper's Fashion CNN (P = 22,180), each training 3 local epochs of
//                                      Adam on 100 samples at batch 10, over InProcessTransport, or over
//                                      SecureAggregationTransport (t = 51, system CSPRNG); single thread.
// Counters: client_ms (one client's work, averaged: in a deployment clients run in parallel, so this is
// the latency a client adds), server_ms (the server's work), up_KiB / down_KiB (bytes one client sends and
// receives, averaged). Keys come from the system CSPRNG, as in a deployment.
//
// Full run:   fedmoe_bench_secure_aggregation
// Quick run:  fedmoe_bench_secure_aggregation --benchmark_filter='p10000$|p22180$'
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregators/mean.hpp>
#include <fedmoe/federated/secure/fixed_point.hpp>
#include <fedmoe/federated/secure/secure_aggregation.hpp>
#include <fedmoe/federated/secure/secure_transport.hpp>
#include <fedmoe/fedmoe.hpp>

#include "bench_common.hpp"

using namespace fedmoe;

namespace {

constexpr std::uint64_t seed = 2024;

std::vector<ClientUpdate<float>> make_updates(Index n, Index p) { return bench::random_updates(n, p, seed); }

struct Case {
  Index n = 0, p = 0;
  std::uint32_t k = 0;      // 0: complete graph
  Index drop = 0;           // clients that leave after sharing keys
  bool secure = true;
  std::string name() const {
    const std::string np = "/n" + std::to_string(n) + (k ? "/k" + std::to_string(k) : "") + "/p" + std::to_string(p);
    if (!secure) return "plain/round" + np;
    return std::string(k ? "secaggplus" : "secagg") + (drop ? "/round-drop" + std::to_string(100 * drop / n) : "/round") + np;
  }
};

using Clock = std::chrono::steady_clock;

/// Times the calls of fn into `acc` (seconds).
template <class Fn>
auto timed(double& acc, Fn&& fn) {
  const auto t0 = Clock::now();
  if constexpr (std::is_void_v<decltype(fn())>) {
    fn();
    acc += std::chrono::duration<double>(Clock::now() - t0).count();
  } else {
    auto r = fn();
    acc += std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
  }
}

void bench_secure(benchmark::State& st, const Case& c) {
  const auto updates = make_updates(c.n, c.p);
  const auto n = std::uint32_t(c.n);
  const std::uint32_t t = c.k ? c.k / 2 + 1 : n / 2 + 1;
  const FixedPointCodec codec(150.0, 150.0, n);  // |w delta| <= 149 * 1, w <= 149
  SecAggConfig cfg;
  cfg.num_clients = n;
  cfg.threshold = t;
  cfg.vector_length = FixedPointCodec::encoded_length(c.p);
  cfg.neighbours = c.k;
  cfg.graph_seed = seed;
  double client_s = 0, server_s = 0, up = 0, down = 0;
  std::uint64_t round = 0;
  Vector<double> mean;
  for (auto _ : st) {
    cfg.round_id = ++round;
    std::vector<SecAggClient> clients;
    clients.reserve(n);
    timed(client_s, [&] {
      for (std::uint32_t u = 0; u < n; ++u) clients.emplace_back(cfg, u);
    });
    SecAggServer server = timed(server_s, [&] { return SecAggServer(cfg); });
    // Round 0.
    for (auto& cl : clients) {
      auto bytes = timed(client_s, [&] { return cl.advertise_keys().serialize(); });
      up += double(bytes.size());
      timed(server_s, [&] { server.receive(secagg::AdvertiseKeys::parse(bytes)); });
    }
    // Round 1.
    const auto dir = timed(server_s, [&] { return server.key_directory().serialize(); });
    for (auto& cl : clients) {
      down += double(dir.size());
      auto bytes = timed(client_s, [&] { return cl.share_keys(secagg::KeyDirectory::parse(dir)).serialize(); });
      up += double(bytes.size());
      timed(server_s, [&] { server.receive(secagg::ShareKeys::parse(bytes)); });
    }
    // Round 2.
    std::vector<std::vector<std::uint8_t>> deliveries;
    timed(server_s, [&] {
      for (const auto& d : server.share_deliveries()) deliveries.push_back(d.serialize());
    });
    for (std::uint32_t u = 0; u < n; ++u) {
      down += double(deliveries[u].size());
      if (Index(u) % 10 == 0 && Index(u) / 10 < c.drop) continue;  // drops after sharing keys
      auto bytes = timed(client_s, [&] {
        const auto x = codec.encode(updates[u]);
        return clients[u].masked_input(secagg::ShareDelivery::parse(deliveries[u]), x).serialize();
      });
      up += double(bytes.size());
      timed(server_s, [&] { server.receive(secagg::MaskedInput::parse(bytes)); });
    }
    deliveries.clear();
    // Round 3.
    const auto request = timed(server_s, [&] { return server.unmask_request().serialize(); });
    for (auto u : server.masked()) {
      down += double(request.size());
      auto bytes = timed(client_s, [&] { return clients[u].unmask(secagg::UnmaskRequest::parse(request)).serialize(); });
      up += double(bytes.size());
      timed(server_s, [&] { server.receive(secagg::UnmaskResponse::parse(bytes)); });
    }
    timed(server_s, [&] {
      const SecAggResult r = server.finish();
      mean = codec.decode_sum(r.sum, std::uint32_t(r.contributors.size())).mean();
    });
    benchmark::DoNotOptimize(mean.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(st.iterations());
  st.counters["client_ms"] = 1e3 * client_s / iters / double(n);
  st.counters["server_ms"] = 1e3 * server_s / iters;
  st.counters["up_KiB"] = up / iters / double(n) / 1024.0;
  st.counters["down_KiB"] = down / iters / double(n) / 1024.0;
  st.SetItemsProcessed(st.iterations() * c.n * c.p);
}

void bench_plain(benchmark::State& st, const Case& c) {
  const auto updates = make_updates(c.n, c.p);
  Vector<float> out = Vector<float>::Zero(c.p);
  bool ok = true;
  for (auto _ : st) {
    ok = WeightedMean{}.aggregate(std::span<const ClientUpdate<float>>(updates), out).ok && ok;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  if (!ok) st.SkipWithError("aggregation reported ok = false");
  st.SetItemsProcessed(st.iterations() * c.n * c.p);
}

/// One federated round end to end (see the file comment): synthetic 28 x 28 images, 100 clients.
void bench_federated_round(benchmark::State& st, bool secure) {
  constexpr Index clients = 100, per_client = 100;
  Rng rng(7);
  Dataset<float> train{Matrix<float>(784, clients * per_client), Labels(clients * per_client), Shape{1, 28, 28}, 10};
  for (Index i = 0; i < train.inputs.size(); ++i) train.inputs.data()[i] = rng.uniform<float>(0.f, 1.f);
  for (Index j = 0; j < train.size(); ++j) train.labels[j] = std::int32_t(j % 10);
  const Partition part = partition_iid(train.labels, train.labels, 10, PartitionSpec{clients, per_client, 0, 1, 0}, rng);
  std::vector<Client<float>> cs;
  for (Index k = 0; k < clients; ++k) cs.emplace_back(k, train, part[k], false);
  auto model = fashion_cnn<float>(10, 0.5);
  model.init(rng);
  FederationConfig fc;
  fc.max_rounds = 1;
  fc.check_every = 1;
  fc.threads = 1;
  for (auto _ : st) {
    auto m = model;
    InProcessTransport<float> inner;
    if (secure) {
      SecureAggregationConfig sc;
      sc.threshold = 51;
      sc.max_clients = 100;
      sc.value_bound = 1e3;
      SecureAggregationTransport<InProcessTransport<float>> t(inner, sc);
      train_federated(m, cs, t, fc, fedavg<float>(clients, {3, 10}, 1e-3));
      if (!t.last_round().ok) st.SkipWithError(t.last_round().note.c_str());
    } else {
      train_federated(m, cs, inner, fc, fedavg<float>(clients, {3, 10}, 1e-3));
    }
    benchmark::DoNotOptimize(m.parameters().data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (bool secure : {false, true})
    benchmark::RegisterBenchmark(secure ? "federated_round/secure/n100/fashion_cnn" : "federated_round/plain/n100/fashion_cnn",
                                 [secure](benchmark::State& st) { bench_federated_round(st, secure); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(1);
  std::vector<Case> cases;
  const auto add = [&](Index n, Index p) {
    cases.push_back({n, p, 0, 0, false});
    cases.push_back({n, p, 0, 0, true});
  };
  for (Index n : {10, 100})
    for (Index p : {10000, 1000000}) add(n, p);
  add(100, 22180);  // the paper's Fashion-MNIST CNN
  for (Index p : {Index(22180), Index(1000000)}) {
    cases.push_back({100, p, 0, 10, true});
    const auto k = std::uint32_t(2 * std::ceil(std::log2(100.0)));  // 14
    cases.push_back({100, p, k, 0, true});
  }
  for (const Case& c : cases) {
    auto* b = benchmark::RegisterBenchmark(c.name().c_str(), [c](benchmark::State& st) {
      if (c.secure)
        bench_secure(st, c);
      else
        bench_plain(st, c);
    });
    b->Unit(benchmark::kMillisecond);
  }
  return bench::run(argc, argv);
}
