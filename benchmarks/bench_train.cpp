// Training and inference of the paper's models, and memory-copy bandwidth (the aggregation rules,
// FedAvg's mean included, are measured by bench_aggregators.cpp).
//
// Case names (shared with bench_train_torch, see bench_train.hpp):
//   <model>/train/b<B>   forward (Mode::train) + cross-entropy (or mixture loss) + backward + Adam step,
//                        single thread; items/s = samples/s. Counter heap_allocs: allocations per step
//                        in the steady state (must read 0).
//   <model>/infer/b1     evaluation forward at batch 1; the time is the latency, heap_allocs the
//                        heap allocations per call (malloc and operator new, counted by replacement).
//   memcpy/<MiB>MiB      std::memcpy; bytes/s = read + written bytes (2 x the copied size), the
//                        bandwidth the kernels are compared with (16 MiB ~ the 4 MB global vector in
//                        cache-ish regime, 256 MiB = DRAM).
//
// Full run:   fedmoe_bench_train --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// CI smoke:   fedmoe_bench_train --benchmark_filter='b1$' --benchmark_min_time=0.01
#include <benchmark/benchmark.h>

#include <fedmoe/losses/cross_entropy.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/moe/mixture.hpp>
#include <fedmoe/optimizers/adam.hpp>

#include "bench_train.hpp"

using namespace fedmoe;
using fedmoe::bench::TrainCase;

namespace {

struct Batch {
  Matrix<float> x;
  Labels y;
};

Batch make_batch(Shape in, Index n) {
  const std::vector<float> xv = bench::input_data(in.size() * n);
  const std::vector<std::int64_t> yv = bench::label_data(n);
  Batch b{ConstMatrixMap<float>(xv.data(), in.size(), n), Labels(n)};
  for (Index j = 0; j < n; ++j) b.y[j] = static_cast<std::int32_t>(yv[static_cast<std::size_t>(j)]);
  return b;
}

template <class M>
void run_model(benchmark::State& st, const TrainCase& c, M model) {
  Rng init(bench::param_seed);
  model.init(init);
  const Batch b = make_batch(c.input(), c.batch);
  Rng rng(bench::x_seed + 1);
  if (!c.train) return bench::measure_steps(st, c, [&] { benchmark::DoNotOptimize(model.forward(b.x).data()); });
  Adam<float> adam(bench::learning_rate);
  CrossEntropy<float> loss;
  Matrix<float> dy;
  bench::measure_steps(st, c, [&] {
    const Matrix<float>& out = model.forward(b.x, Mode::train, rng);
    benchmark::DoNotOptimize(loss.gradient(out, b.y, dy));
    model.backward(b.x, dy);
    adam.step(model.parameters(), model.gradients());
    benchmark::DoNotOptimize(model.parameters().data());
  });
}

void run_mixture(benchmark::State& st, const TrainCase& c) {
  auto gate = fashion_cnn_gate<float>(bench::dropout);
  auto spec = fashion_cnn<float>(bench::classes, bench::dropout);
  auto global = fashion_cnn<float>(bench::classes, bench::dropout);
  Rng init(bench::param_seed);
  gate.init(init);
  spec.init(init);
  global.init(init);
  Mixture mix(gate, spec, global);
  const Batch b = make_batch(c.input(), c.batch);
  Rng rng(bench::x_seed + 1);
  if (!c.train) return bench::measure_steps(st, c, [&] { benchmark::DoNotOptimize(mix.forward(b.x).data()); });
  Adam<float> adam_gate(bench::learning_rate), adam_spec(bench::learning_rate);
  bench::measure_steps(st, c, [&] {
    benchmark::DoNotOptimize(mix.loss_and_gradient(b.x, b.y, Mode::train, rng));
    adam_gate.step(gate.parameters(), gate.gradients());
    adam_spec.step(spec.parameters(), spec.gradients());
    benchmark::DoNotOptimize(spec.parameters().data());
  });
}

void run_case(benchmark::State& st, const TrainCase& c) {
  if (c.model == "fashion_cnn") return run_model(st, c, fashion_cnn<float>(bench::classes, bench::dropout));
  if (c.model == "cifar_cnn") return run_model(st, c, cifar_cnn<float>(bench::classes));
  if (c.model == "mlp") return run_model(st, c, mlp<float>(Shape{784, 1, 1}, bench::classes, 200, bench::dropout));
  return run_mixture(st, c);
}

}  // namespace

int main(int argc, char** argv) {
  bench::add_cases(bench::all_cases(), run_case);
  bench::add_memcpy({1, 16, 256});
  return bench::run(argc, argv);
}
