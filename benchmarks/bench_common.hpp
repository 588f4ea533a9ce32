#pragma once
// Shared by the four benchmark binaries (bench_gates, bench_gates_torch, bench_train, bench_train_torch):
// the heap-allocation counters, the registration and run boilerplate of main, and the memory-copy
// bandwidth case the kernels are compared with.
//
// The allocation counters replace malloc (glibc interposition: catches Eigen's and every operator new's
// allocations), posix_memalign (libtorch's CPU allocator) and the global operator new: include this
// header from exactly ONE translation unit per binary (every benchmark binary is one source file).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/federated/aggregator.hpp>

namespace fedmoe::bench {

/// One round of n client updates of p floats: uniform(-1, 1) deltas, 50..149 samples each, from Rng(seed)
/// (the aggregator and secure-aggregation benchmarks measure the same inputs).
inline std::vector<ClientUpdate<float>> random_updates(Index n, Index p, std::uint64_t seed) {
  std::vector<ClientUpdate<float>> updates(static_cast<std::size_t>(n));
  Rng r(seed);
  for (Index k = 0; k < n; ++k) {
    auto& u = updates[static_cast<std::size_t>(k)];
    u.client = k;
    u.num_samples = 50 + static_cast<Index>(r.uniform_int(100));
    u.delta.resize(p);
    for (Index i = 0; i < p; ++i) u.delta[i] = r.uniform<float>(-1.f, 1.f);
  }
  return updates;
}

inline std::atomic<long> g_mallocs{0};  // every heap allocation (malloc, hence also operator new)
inline std::atomic<long> g_news{0};     // operator new calls only

/// A count observed over the timed loop, per iteration (the value of a per-step counter).
inline double per_iteration(const benchmark::State& st, long count) {
  return double(count) / double(std::max<benchmark::IterationCount>(1, st.iterations()));
}

/// Registers the benchmark `name` running fn(state), reported in microseconds.
template <class Fn>
void add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::move(fn))->Unit(benchmark::kMicrosecond);
}

/// Registers one benchmark per case, named case.name(), running run(state, case).
template <class Case, class Run>
void add_cases(const std::vector<Case>& cases, Run run) {
  for (const Case& c : cases) add(c.name(), [c, run](benchmark::State& st) { run(st, c); });
}

/// Copies `mib` MiB between two buffers: bytes/s counts read + written bytes (2 x the copied size).
inline void bench_memcpy(benchmark::State& st, int mib) {
  const auto n = static_cast<std::size_t>(mib) << 20;
  std::unique_ptr<char[]> a(new char[n]), b(new char[n]);
  std::memset(a.get(), 1, n);
  std::memset(b.get(), 2, n);
  for (auto _ : st) {
    std::memcpy(b.get(), a.get(), n);
    benchmark::DoNotOptimize(b.get());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * static_cast<int64_t>(2 * n));
}

/// Registers memcpy/<MiB>MiB for each size.
inline void add_memcpy(std::initializer_list<int> sizes_mib) {
  for (int mib : sizes_mib)
    add("memcpy/" + std::to_string(mib) + "MiB", [mib](benchmark::State& st) { bench_memcpy(st, mib); });
}

/// The end of every main: parses the benchmark flags, runs the registered benchmarks, returns the exit code.
inline int run(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace fedmoe::bench

// ---- heap allocation counting (this header is included by exactly one translation unit per binary).
#if defined(__GLIBC__)
extern "C" void* __libc_malloc(std::size_t);
extern "C" void* __libc_memalign(std::size_t, std::size_t);
extern "C" void* malloc(std::size_t n) {
  fedmoe::bench::g_mallocs.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(n);
}
// libtorch's CPU allocator uses posix_memalign: count it too.
extern "C" int posix_memalign(void** out, std::size_t align, std::size_t n) {
  fedmoe::bench::g_mallocs.fetch_add(1, std::memory_order_relaxed);
  void* p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
#endif
// Not inlined (as libstdc++'s own): GCC's -Wmismatched-new-delete would otherwise see free() applied to
// what operator new returned, and delete[] to what operator new (called by new[]) returned; both are
// correct here, every form allocates with malloc.
[[gnu::noinline]] void* operator new(std::size_t n) {
  fedmoe::bench::g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) { return ::operator new(n); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
