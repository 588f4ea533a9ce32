// libtorch peer of bench_gates: the same gates written with libtorch ops, on the same inputs and
// parameters, single-threaded (torch::set_num_threads(1)), under the same case names.
//
// fwd cases run under torch::NoGradGuard (inference only, which favours libtorch); fwd_bwd cases
// build the graph and call torch::autograd::grad for dL/dx and dL/dparams given dL/dweights and the
// weighted auxiliary losses, as fedmoe's backward does. x is [tokens, width] row-major, which is
// byte-identical to fedmoe's (width x tokens) column-major matrix.
//
// Full sweep:  fedmoe_bench_gates_torch
// CI smoke:    fedmoe_bench_gates_torch --benchmark_filter='t16/e8/w64' --benchmark_min_time=0.01
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cmath>

#include "bench_gates.hpp"

using fedmoe::Index;
using fedmoe::bench::GateCase;

namespace {

torch::Tensor cv_squared(const torch::Tensor& v) { return v.var() / (v.mean().pow(2) + 1e-10); }
torch::Tensor normal_cdf(const torch::Tensor& z) { return 0.5 * torch::erfc(-z * M_SQRT1_2); }

struct TorchGate {
  GateCase c;
  torch::Tensor x, wg, bg, wn, bn;
  std::vector<torch::Tensor> inputs;  // x and the parameters (for autograd::grad)

  explicit TorchGate(const GateCase& cs, const std::vector<float>& xv, const std::vector<float>& p) : c(cs) {
    const auto opt = torch::TensorOptions().dtype(torch::kFloat32);
    const Index e = c.experts, w = c.width;
    x = torch::from_blob(const_cast<float*>(xv.data()), {c.tokens, w}, opt).clone().requires_grad_(true);
    wg = torch::from_blob(const_cast<float*>(p.data()), {e, w}, opt).clone().requires_grad_(true);
    bg = torch::from_blob(const_cast<float*>(p.data()) + e * w, {e}, opt).clone().requires_grad_(true);
    inputs = {x, wg, bg};
    if (c.gate == "noisy_top_k_gate") {
      wn = torch::from_blob(const_cast<float*>(p.data()) + e * w + e, {e, w}, opt).clone().requires_grad_(true);
      bn = torch::from_blob(const_cast<float*>(p.data()) + 2 * e * w + e, {e}, opt).clone().requires_grad_(true);
      inputs.push_back(wn);
      inputs.push_back(bn);
    }
  }

  Index capacity(Index choices) const {
    return std::max<Index>(1, Index(std::ceil(double(choices * c.tokens) * fedmoe::bench::capacity_factor /
                                              double(c.experts) - 1e-9)));
  }

  /// Returns {combine weights, weighted auxiliary loss}.
  std::pair<torch::Tensor, torch::Tensor> forward() const {
    const Index e = c.experts, k = c.k, t = c.tokens;
    const float aw = fedmoe::bench::aux_weight, zw = fedmoe::bench::z_weight;
    const torch::Tensor logits = torch::linear(x, wg, bg);
    const torch::Tensor z = torch::logsumexp(logits, 1).pow(2).mean();
    if (c.gate == "softmax_gate") return {torch::softmax(logits, 1), zw * z};
    if (c.gate == "noisy_top_k_gate") {
      const torch::Tensor sd = torch::softplus(torch::linear(x, wn, bn));
      const torch::Tensor h = logits + torch::randn({t, e}) * sd;
      const Index kk = std::min(k + 1, e);
      auto [vals, idx] = h.topk(kk, 1);
      const torch::Tensor w = torch::softmax(vals.narrow(1, 0, k), 1);
      const torch::Tensor gates = torch::zeros_like(h).scatter(1, idx.narrow(1, 0, k), w);
      torch::Tensor aux = aw * cv_squared(gates.sum(0)) + zw * z;
      if (k < e) {
        const torch::Tensor thr_in = vals.narrow(1, k, 1), thr_out = vals.narrow(1, k - 1, 1);
        const torch::Tensor prob =
            torch::where(h > thr_in, normal_cdf((logits - thr_in) / sd), normal_cdf((logits - thr_out) / sd));
        aux = aux + aw * cv_squared(prob.sum(0));
      }
      return {w, aux};
    }
    const torch::Tensor probs = torch::softmax(logits, 1);
    if (c.gate == "switch_gate") {
      const torch::Tensor mask = torch::one_hot(probs.argmax(1), e).to(torch::kFloat32);
      const torch::Tensor pos = torch::cumsum(mask, 0) * mask;
      const torch::Tensor kept = mask * (pos <= double(capacity(1))).to(torch::kFloat32);
      const torch::Tensor w = (probs * kept).sum(1, true);
      const torch::Tensor balance = double(e) * (mask.mean(0) * probs.mean(0)).sum();
      return {w, aw * balance + zw * z};
    }
    if (c.gate == "top2_gate") {
      const torch::Tensor idx = std::get<1>(probs.topk(2, 1));
      torch::Tensor m1 = torch::one_hot(idx.select(1, 0), e).to(torch::kFloat32);
      torch::Tensor m2 = torch::one_hot(idx.select(1, 1), e).to(torch::kFloat32);
      const torch::Tensor balance = double(e) * (m1.mean(0) * probs.mean(0)).sum();
      const torch::Tensor loc1 = torch::cumsum(m1, 0) - 1;
      const torch::Tensor loc2 = torch::cumsum(m2, 0) - 1 + m1.sum(0, true);
      const double cap = double(capacity(2));
      m1 = m1 * (loc1 < cap).to(torch::kFloat32);
      m2 = m2 * (loc2 < cap).to(torch::kFloat32);
      const torch::Tensor g1 = (probs * m1).sum(1), g2 = (probs * m2).sum(1);
      const torch::Tensor d = (g1 + g2).clamp_min(1e-9);
      return {torch::stack({g1 / d, g2 / d}, 1), aw * balance + zw * z};
    }
    // expert choice: each expert takes its top-c tokens by probability
    const Index cap = std::min(t, std::max<Index>(1, Index(std::ceil(double(t) * fedmoe::bench::capacity_factor /
                                                                     double(e) - 1e-9))));
    return {std::get<0>(probs.t().topk(cap, 1)), zw * z};
  }
};

void run_case(benchmark::State& st, const GateCase& c) {
  torch::manual_seed(static_cast<std::uint64_t>(fedmoe::bench::x_seed + 1));
  const std::vector<float> xv = fedmoe::bench::uniform_data(c.width * c.tokens, fedmoe::bench::x_seed);
  const std::vector<float> p = fedmoe::bench::make_params(c.num_params(), c.width);
  TorchGate g(c, xv, p);
  torch::Tensor dw;
  {
    torch::NoGradGuard no_grad;
    const auto out = g.forward().first;
    const std::vector<float> dwv = fedmoe::bench::uniform_data(out.numel(), fedmoe::bench::grad_seed);
    dw = torch::from_blob(const_cast<float*>(dwv.data()), out.sizes(), torch::kFloat32).clone();
  }
  const torch::Tensor one = torch::ones({});
  for (auto _ : st) {
    if (c.backward) {
      auto [w, aux] = g.forward();
      auto grads = torch::autograd::grad({w, aux}, g.inputs, {dw, one});
      benchmark::DoNotOptimize(grads[0].data_ptr());
    } else {
      torch::NoGradGuard no_grad;
      auto out = g.forward();
      benchmark::DoNotOptimize(out.first.data_ptr());
    }
    benchmark::ClobberMemory();
  }
  fedmoe::bench::report_throughput(st, c);
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  at::set_num_interop_threads(1);
  fedmoe::bench::add_cases(fedmoe::bench::all_cases(), run_case);
  return fedmoe::bench::run(argc, argv);
}
