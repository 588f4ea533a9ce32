#pragma once
// Shared by bench_gates.cpp (fedmoe + plain reference) and bench_gates_torch.cpp (libtorch peer):
// the case grid, case names, seeded inputs and parameters, and the per-token traffic model, so that both binaries
// benchmark identical cases under identical names:
//     <gate>/<fwd|fwd_bwd>/t<tokens>/e<experts>/w<width>/k<k>
// Reference (plain loops) cases are named ref/<same name>.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/core/tensor.hpp>

#include "bench_common.hpp"

namespace fedmoe::bench {

struct GateCase {
  std::string gate;  // softmax_gate, noisy_top_k_gate, switch_gate, top2_gate, expert_choice_gate
  bool backward = false;
  Index tokens = 0, experts = 0, width = 0, k = 1;

  std::string name() const {
    return gate + (backward ? "/fwd_bwd" : "/fwd") + "/t" + std::to_string(tokens) + "/e" + std::to_string(experts) +
           "/w" + std::to_string(width) + "/k" + std::to_string(k);
  }
  /// Compulsory float traffic per token: x read (fwd); x read twice and dx written (fwd+bwd).
  /// The experts-sized terms (logits, weights) are ignored: < 3% at width 512, 8 experts.
  double bytes_per_token() const { return double(sizeof(float)) * double(width) * (backward ? 3.0 : 1.0); }
  /// Floating-point operations per token of the router products (the bulk of the work): 2 W E per
  /// router for the logits, and 4 W E more for dW and dx (noisy top-k runs two routers). The gates'
  /// elementwise work (softmax, noise, selection) is not counted.
  double flops_per_token() const {
    const double routers = gate == "noisy_top_k_gate" ? 2.0 : 1.0;
    return 2.0 * double(width) * double(experts) * routers * (backward ? 3.0 : 1.0);
  }
  /// Parameters of the gate: one linear router (width x experts + experts), two for noisy top-k.
  Index num_params() const { return (width * experts + experts) * (gate == "noisy_top_k_gate" ? 2 : 1); }
};

inline const std::vector<Index>& token_grid() {
  static const std::vector<Index> v{1, 16, 256, 4096, 65536};
  return v;
}

/// Every case of the sweep. k is meaningful for noisy top-k (1, 2); softmax, switch and expert choice
/// are labelled k1, GShard top-2 k2.
inline std::vector<GateCase> all_cases() {
  std::vector<GateCase> cases;
  for (const char* gate : {"softmax_gate", "noisy_top_k_gate", "switch_gate", "top2_gate", "expert_choice_gate"})
    for (bool bwd : {false, true})
      for (Index t : token_grid())
        for (Index e : {2, 8, 64})
          for (Index w : {64, 512})
            for (Index k : {1, 2}) {
              const std::string g = gate;
              if ((g == "softmax_gate" || g == "switch_gate" || g == "expert_choice_gate") && k != 1) continue;
              if (g == "top2_gate" && k != 2) continue;
              if (k > e) continue;
              cases.push_back(GateCase{g, bwd, t, e, w, k});
            }
  return cases;
}

/// Seeded uniform(-1, 1) data; x (width x tokens, column-major) is byte-identical to a row-major
/// [tokens, width] tensor.
inline std::vector<float> uniform_data(Index n, std::uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& a : v) a = r.uniform<float>(-1.f, 1.f);
  return v;
}

constexpr std::uint64_t x_seed = 11, param_seed = 12, grad_seed = 13;
constexpr double capacity_factor = 1.25;
constexpr float aux_weight = 0.01f, z_weight = 0.001f;

/// Seeded gate parameters: uniform(-1, 1) / sqrt(width).
inline std::vector<float> make_params(Index n, Index width) {
  std::vector<float> p = uniform_data(n, param_seed);
  const float scale = 1.f / std::sqrt(float(width));
  for (auto& v : p) v *= scale;
  return p;
}

/// Reports tokens/s, the compulsory traffic (bytes_per_token, bytes/s) and the router FLOP rate
/// (flops, compared with the fma_peak benchmark) of the timed loop.
inline void report_throughput(benchmark::State& st, const GateCase& c) {
  st.counters["bytes_per_token"] = c.bytes_per_token();
  st.counters["flops"] = benchmark::Counter(double(st.iterations()) * double(c.tokens) * c.flops_per_token(),
                                            benchmark::Counter::kIsRate);
  st.SetItemsProcessed(st.iterations() * c.tokens);
  st.SetBytesProcessed(static_cast<int64_t>(double(st.iterations()) * double(c.tokens) * c.bytes_per_token()));
}

}  // namespace fedmoe::bench
