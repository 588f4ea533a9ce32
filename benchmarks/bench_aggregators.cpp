// The aggregation rules of federated/aggregators/ on one round of N client deltas of P floats, and the
// copy bandwidth they are compared with.
//
// Case names:
//   aggregate/<rule>/n<N>/p<P>   <rule>.aggregate of N deltas of P floats (single thread); bytes/s counts
//                                the compulsory traffic, (N + 1) * P * 4 bytes (each delta read once, the
//                                result written once), whatever the rule reads more.
//                                rules: mean (WeightedMean, FedAvg), median, trimmed-mean (beta 0.1),
//                                krum (f = N/10), multi-krum (f = N/10, m = N - f), bulyan (f = N/10 - 1
//                                for N = 10: f = 1 needs N >= 7), geometric-median (RFA, max 10 iterations),
//                                norm-bounded-mean (clip half the updates, then the mean).
//   copy/p<P>                    the N = 1 baseline: std::copy of P floats; bytes/s = read + written.
//   memcpy/<MiB>MiB              std::memcpy bandwidth (1 MiB: cache, 256 MiB: DRAM).
//
// Full run:   fedmoe_bench_aggregators --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// CI smoke:   fedmoe_bench_aggregators --benchmark_filter='/t16/|copy' --benchmark_min_time=0.01  (copy only)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregators/any_aggregator.hpp>

#include "bench_common.hpp"

using namespace fedmoe;

namespace {

constexpr std::uint64_t seed = 2024;

std::vector<ClientUpdate<float>> make_updates(Index n, Index p) { return bench::random_updates(n, p, seed); }

void set_traffic(benchmark::State& st, Index n, Index p) {
  st.SetItemsProcessed(st.iterations() * n * p);
  st.SetBytesProcessed(static_cast<int64_t>(double(st.iterations()) * double(n + 1) * double(p) * sizeof(float)));
}

template <class Rule>
void bench_rule(benchmark::State& st, const Rule& rule, Index n, Index p) {
  const std::vector<ClientUpdate<float>> updates = make_updates(n, p);
  Vector<float> global = Vector<float>::Zero(p);
  bool ok = true;
  for (auto _ : st) {
    ok = rule.aggregate(std::span<const ClientUpdate<float>>(updates), global).ok && ok;
    benchmark::DoNotOptimize(global.data());
    benchmark::ClobberMemory();
  }
  if (!ok) st.SkipWithError("aggregation reported ok = false");
  set_traffic(st, n, p);
}

void bench_copy(benchmark::State& st, Index p) {
  const Vector<float> a = Vector<float>::Constant(p, 1.f);
  Vector<float> b = Vector<float>::Zero(p);
  for (auto _ : st) {
    std::copy(a.data(), a.data() + p, b.data());
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(double(st.iterations()) * 2.0 * double(p) * sizeof(float)));
}

template <class Rule>
void add_rule(const std::string& name, Rule rule, Index n, Index p) {
  bench::add("aggregate/" + name + "/n" + std::to_string(n) + "/p" + std::to_string(p),
             [rule, n, p](benchmark::State& st) { bench_rule(st, rule, n, p); });
}

}  // namespace

int main(int argc, char** argv) {
  for (Index n : {10, 100}) {
    const Index f = n / 10;
    for (Index p : {10000, 1000000}) {
      add_rule("mean", WeightedMean{}, n, p);
      add_rule("median", CoordinateMedian{}, n, p);
      add_rule("trimmed-mean", TrimmedMean(0.1), n, p);
      add_rule("krum", Krum(f), n, p);
      add_rule("multi-krum", MultiKrum(f), n, p);
      add_rule("bulyan", Bulyan(std::min<Index>(f, (n - 3) / 4)), n, p);
      add_rule("geometric-median", GeometricMedian(10), n, p);
      // Every delta has norm ~ sqrt(P / 3): a bound at that value clips about half of them.
      add_rule("norm-bounded-mean", NormBounded<WeightedMean>(std::sqrt(double(p) / 3.0)), n, p);
    }
  }
  for (Index p : {10000, 1000000})
    bench::add("copy/p" + std::to_string(p), [p](benchmark::State& st) { bench_copy(st, p); });
  bench::add_memcpy({1, 256});
  return bench::run(argc, argv);
}
