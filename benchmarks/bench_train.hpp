#pragma once
// Shared by bench_train.cpp (fedmoe) and bench_train_torch.cpp (libtorch peer): the case grid, case
// names, seeded inputs and the timed step with its heap-allocation counter, so that both binaries
// benchmark identical cases under identical names:
//     <model>/train/b<batch>   one training step: forward (Mode::train), loss, backward, Adam step
//     <model>/infer/b1         one evaluation forward at batch 1 (latency; counter heap_allocs)
// Models (models/paper.hpp): fashion_cnn (1x28x28, 10 classes), cifar_cnn (3x32x32), mlp (784 inputs),
// mixture (the paper's Fashion-MNIST mixture: fashion_cnn_gate + fashion_cnn specialist, both trained
// with Adam, and a frozen fashion_cnn global expert run in eval mode).
// items/s counts samples; counter heap_allocs counts heap allocations per step (bench_common.hpp).
#include <cstdint>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/core/tensor.hpp>

#include "bench_common.hpp"

namespace fedmoe::bench {

struct TrainCase {
  std::string model;  // fashion_cnn, cifar_cnn, mlp, mixture
  bool train = true;  // false: inference (eval forward)
  Index batch = 1;
  std::string name() const { return model + (train ? "/train/b" : "/infer/b") + std::to_string(batch); }
  Shape input() const {
    if (model == "cifar_cnn") return Shape{3, 32, 32};
    if (model == "mlp") return Shape{784, 1, 1};
    return Shape{1, 28, 28};
  }
};

inline const std::vector<std::string>& model_names() {
  static const std::vector<std::string> v{"fashion_cnn", "cifar_cnn", "mlp", "mixture"};
  return v;
}

inline std::vector<TrainCase> all_cases() {
  std::vector<TrainCase> cases;
  for (const std::string& m : model_names()) {
    for (Index b : {1, 10, 64, 256}) cases.push_back(TrainCase{m, true, b});
    cases.push_back(TrainCase{m, false, 1});
  }
  return cases;
}

constexpr Index classes = 10;
constexpr double learning_rate = 1e-3;
constexpr double dropout = 0.5;
constexpr std::uint64_t x_seed = 21, label_seed = 22, param_seed = 23;

/// Seeded uniform(0, 1) pixels; (features x batch) column-major = row-major NCHW [batch, C, H, W].
inline std::vector<float> input_data(Index n, std::uint64_t seed = x_seed) {
  Rng r(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& a : v) a = r.uniform<float>(0.f, 1.f);
  return v;
}
inline std::vector<std::int64_t> label_data(Index n, std::uint64_t seed = label_seed) {
  Rng r(seed);
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (auto& a : v) a = static_cast<std::int64_t>(r.uniform_int(static_cast<std::uint64_t>(classes)));
  return v;
}

/// Runs `step` once (sizing every buffer and optimizer state), then times it: the steady state.
/// Reports samples/s and counter heap_allocs, the heap allocations per step.
template <class Step>
void measure_steps(benchmark::State& st, const TrainCase& c, Step&& step) {
  step();
  const long before = g_mallocs.load();
  for (auto _ : st) {
    step();
    benchmark::ClobberMemory();
  }
  st.counters["heap_allocs"] = per_iteration(st, g_mallocs.load() - before);
  st.SetItemsProcessed(st.iterations() * c.batch);
}

}  // namespace fedmoe::bench
