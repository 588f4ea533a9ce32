// libtorch peer of bench_train: the paper's models written with torch::nn, trained with
// torch::optim::Adam on the same shapes, batches, inputs and labels, single-threaded
// (torch::set_num_threads(1); run with OPENBLAS_NUM_THREADS=1), under the same case names.
//
//   <model>/train/b<B>  zero_grad, forward (train mode: dropout active), cross-entropy (or the
//                       mixture loss), backward, Adam step.
//   <model>/infer/b1    eval() forward under torch::NoGradGuard at batch 1; counter heap_allocs counts
//                       malloc and posix_memalign (c10's CPU allocator) calls per forward.
//
// Full run:  fedmoe_bench_train_torch --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// CI smoke:  fedmoe_bench_train_torch --benchmark_filter='b1$' --benchmark_min_time=0.01
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "bench_train.hpp"

using fedmoe::Index;
using fedmoe::bench::TrainCase;
namespace nn = torch::nn;

namespace {

/// The paper's trunks, in the layer order of models/paper.hpp (so "0.weight" etc. match fedmoe's names).
nn::Sequential fashion_cnn(Index outputs, bool sigmoid = false) {
  nn::Sequential s(nn::Conv2d(nn::Conv2dOptions(1, 6, 5)), nn::ReLU(), nn::MaxPool2d(2),
                   nn::Conv2d(nn::Conv2dOptions(6, 12, 5)), nn::ReLU(), nn::MaxPool2d(2), nn::Flatten(),
                   nn::Linear(192, 84), nn::ReLU(), nn::Dropout(fedmoe::bench::dropout), nn::Linear(84, 42),
                   nn::ReLU(), nn::Linear(42, outputs));
  if (sigmoid) s->push_back(nn::Sigmoid());
  return s;
}
nn::Sequential cifar_cnn() {
  return nn::Sequential(nn::Conv2d(nn::Conv2dOptions(3, 6, 5)), nn::ReLU(), nn::MaxPool2d(2),
                        nn::Conv2d(nn::Conv2dOptions(6, 16, 5)), nn::ReLU(), nn::MaxPool2d(2), nn::Flatten(),
                        nn::Linear(400, 120), nn::ReLU(), nn::Linear(120, 84), nn::ReLU(),
                        nn::Linear(84, fedmoe::bench::classes));
}
nn::Sequential mlp() {
  return nn::Sequential(nn::Flatten(), nn::Linear(784, 200), nn::ReLU(), nn::Dropout(fedmoe::bench::dropout),
                        nn::Linear(200, fedmoe::bench::classes));
}

struct Data {
  torch::Tensor x, y;
};
Data make_batch(const TrainCase& c) {
  const fedmoe::Shape in = c.input();
  std::vector<float> xv = fedmoe::bench::input_data(in.size() * c.batch);
  std::vector<std::int64_t> yv = fedmoe::bench::label_data(c.batch);
  std::vector<std::int64_t> dims{c.batch, in.channels, in.height, in.width};
  if (c.model == "mlp") dims = {c.batch, in.size()};
  return {torch::from_blob(xv.data(), dims, torch::kFloat32).clone(),
          torch::from_blob(yv.data(), {c.batch}, torch::kInt64).clone()};
}

void run_model(benchmark::State& st, const TrainCase& c, nn::Sequential net) {
  const Data d = make_batch(c);
  if (!c.train) {
    net->eval();
    torch::NoGradGuard no_grad;
    return fedmoe::bench::measure_steps(st, c, [&] { benchmark::DoNotOptimize(net->forward(d.x).data_ptr()); });
  }
  net->train();
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(fedmoe::bench::learning_rate));
  fedmoe::bench::measure_steps(st, c, [&] {
    adam.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(d.x), d.y);
    loss.backward();
    adam.step();
  });
}

/// The paper's mixture: -mean log(h s_y + (1 - h) g_y), computed with logaddexp as fedmoe does.
void run_mixture(benchmark::State& st, const TrainCase& c) {
  nn::Sequential gate = fashion_cnn(1, true), spec = fashion_cnn(fedmoe::bench::classes),
                 global = fashion_cnn(fedmoe::bench::classes);
  global->eval();
  for (auto& p : global->parameters()) p.requires_grad_(false);
  const Data d = make_batch(c);
  if (!c.train) {
    gate->eval();
    spec->eval();
    torch::NoGradGuard no_grad;
    return fedmoe::bench::measure_steps(st, c, [&] {
      const torch::Tensor h = gate->forward(d.x);
      const torch::Tensor out =
          h * torch::softmax(spec->forward(d.x), 1) + (1 - h) * torch::softmax(global->forward(d.x), 1);
      benchmark::DoNotOptimize(out.data_ptr());
    });
  }
  gate->train();
  spec->train();
  torch::optim::Adam adam_gate(gate->parameters(), torch::optim::AdamOptions(fedmoe::bench::learning_rate));
  torch::optim::Adam adam_spec(spec->parameters(), torch::optim::AdamOptions(fedmoe::bench::learning_rate));
  const torch::Tensor y = d.y.unsqueeze(1);
  fedmoe::bench::measure_steps(st, c, [&] {
    adam_gate.zero_grad();
    adam_spec.zero_grad();
    const torch::Tensor h = gate->forward(d.x);
    const torch::Tensor ls = torch::log_softmax(spec->forward(d.x), 1).gather(1, y);
    torch::Tensor lg;
    {
      torch::NoGradGuard no_grad;
      lg = torch::log_softmax(global->forward(d.x), 1).gather(1, y);
    }
    const torch::Tensor loss = -torch::logaddexp(torch::log(h) + ls, torch::log1p(-h) + lg).mean();
    loss.backward();
    adam_gate.step();
    adam_spec.step();
  });
}

void run_case(benchmark::State& st, const TrainCase& c) {
  torch::manual_seed(fedmoe::bench::param_seed);
  if (c.model == "fashion_cnn") return run_model(st, c, fashion_cnn(fedmoe::bench::classes));
  if (c.model == "cifar_cnn") return run_model(st, c, cifar_cnn());
  if (c.model == "mlp") return run_model(st, c, mlp());
  return run_mixture(st, c);
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  at::set_num_interop_threads(1);
  fedmoe::bench::add_cases(fedmoe::bench::all_cases(), run_case);
  return fedmoe::bench::run(argc, argv);
}
