// Gate kernels: fedmoe's gates vs. plain reference loops, plus a memory-copy bandwidth benchmark.
//
// Case names (shared with bench_gates_torch): <gate>/<fwd|fwd_bwd>/t<T>/e<E>/w<W>/k<k>; the plain
// reference implementation of the same gate runs as ref/<name> (tokens <= 4096 only, to keep the
// sweep affordable). items/s counts tokens; bytes/s the compulsory x/dx traffic (bytes_per_token).
// Counter allocs_per_iter counts heap allocations inside the timed loop (bench_common.hpp; it must read 0).
// memcpy/<MiB>MiB: bytes/s = read + written bytes (2 x the copied size), the machine's bandwidth;
// copy_nt/256MiB: the same with a packet loop and streaming stores (can be faster than memcpy; the roof
// takes the faster).
// fma_peak/float: the machine's single-core float FMA rate (counter flops), the compute roof; each
// gate case reports the FLOP rate of its router products in the same counter.
// stream_fma/<fma|read|both>/<MiB>MiB: how far the machine overlaps streaming tokens with FMAs (see there).
//
// Full sweep:  fedmoe_bench_gates
// CI smoke:    fedmoe_bench_gates --benchmark_filter='(t16/e8/w64|memcpy/16MiB)' --benchmark_min_time=0.01
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include <fedmoe/moe/expert_choice_gate.hpp>
#include <fedmoe/moe/noisy_top_k_gate.hpp>
#include <fedmoe/moe/softmax_gate.hpp>
#include <fedmoe/moe/switch_gate.hpp>
#include <fedmoe/moe/top2_gate.hpp>

#include "bench_gates.hpp"

using namespace fedmoe;
using fedmoe::bench::GateCase;

namespace {

// ---------------------------------------------------------------------------------------------
// Plain reference implementations: straightforward loops over std::vector, allocating per call.
// Layout as fedmoe: x[t * W + i], W_g[e * W + i] (PyTorch [E, W] row-major), then b[e].
// The reference backward differentiates the combine weights, the balance loss and the z-loss;
// it omits the noisy gate's importance/load terms (O(E T) work, negligible next to O(W E T)).
namespace ref {
struct Linear {
  Index w, e;
  void forward(const float* p, const float* x, Index t, std::vector<float>& l) const {
    l.assign(static_cast<std::size_t>(e * t), 0.f);
    for (Index j = 0; j < t; ++j)
      for (Index a = 0; a < e; ++a) {
        float s = p[w * e + a];
        for (Index i = 0; i < w; ++i) s += p[a * w + i] * x[j * w + i];
        l[j * e + a] = s;
      }
  }
  void backward(const float* p, const float* x, Index t, const std::vector<float>& dl, float* g,
                std::vector<float>& dx) const {
    for (Index a = 0; a < e * w + e; ++a) g[a] = 0;
    for (Index j = 0; j < t; ++j)
      for (Index a = 0; a < e; ++a) {
        for (Index i = 0; i < w; ++i) g[a * w + i] += dl[j * e + a] * x[j * w + i];
        g[w * e + a] += dl[j * e + a];
      }
    for (Index j = 0; j < t; ++j)
      for (Index i = 0; i < w; ++i) {
        float s = 0;
        for (Index a = 0; a < e; ++a) s += p[a * w + i] * dl[j * e + a];
        dx[j * w + i] += s;
      }
  }
};

struct Gate {
  Gate(std::string kind_, Index w_, Index e_, Index k_) : kind(std::move(kind_)), w(w_), e(e_), k(k_) {}
  std::string kind;
  Index w, e, k;
  double factor = bench::capacity_factor;
  std::vector<float> params, grads, dx;
  // state of the last forward
  Index t = 0, cap = 0;
  std::vector<float> logits, probs, lse, weights, eps, nlog, h;
  std::vector<int> idx;  // slots x tokens, -1 empty
  std::vector<int> count;
  float balance = 0, z = 0;

  Index slots() const {
    if (kind == "softmax_gate" || kind == "expert_choice_gate") return e;
    if (kind == "noisy_top_k_gate") return k;
    return kind == "top2_gate" ? 2 : 1;
  }

  void forward(const float* x, Index tokens, Rng& rng) {
    t = tokens;
    const Linear lin{w, e};
    lin.forward(params.data(), x, t, logits);
    probs.assign(static_cast<std::size_t>(e * t), 0.f);
    lse.assign(static_cast<std::size_t>(t), 0.f);
    z = 0;
    for (Index j = 0; j < t; ++j) {
      float m = -INFINITY, s = 0;
      for (Index a = 0; a < e; ++a) m = std::max(m, logits[j * e + a]);
      for (Index a = 0; a < e; ++a) s += std::exp(logits[j * e + a] - m);
      for (Index a = 0; a < e; ++a) probs[j * e + a] = std::exp(logits[j * e + a] - m) / s;
      lse[j] = m + std::log(s);
      z += lse[j] * lse[j] / float(t);
    }
    const Index sl = slots();
    weights.assign(static_cast<std::size_t>(sl * t), 0.f);
    idx.assign(static_cast<std::size_t>(sl * t), -1);
    count.assign(static_cast<std::size_t>(e), 0);
    if (kind == "softmax_gate") {
      for (Index j = 0; j < t; ++j)
        for (Index a = 0; a < e; ++a) weights[j * e + a] = probs[j * e + a], idx[j * e + a] = int(a);
    } else if (kind == "noisy_top_k_gate") {
      lin.forward(params.data() + (w * e + e), x, t, nlog);
      eps.resize(static_cast<std::size_t>(e * t));
      h.resize(static_cast<std::size_t>(e * t));
      for (Index q = 0; q < e * t; ++q) {
        eps[q] = static_cast<float>(rng.normal());
        h[q] = logits[q] + eps[q] * std::log1p(std::exp(nlog[q]));
      }
      for (Index j = 0; j < t; ++j) {
        std::vector<bool> taken(static_cast<std::size_t>(e), false);
        for (Index s = 0; s < k; ++s) {  // repeated argmax
          Index best = -1;
          for (Index a = 0; a < e; ++a)
            if (!taken[a] && (best < 0 || h[j * e + a] > h[j * e + best])) best = a;
          taken[best] = true;
          idx[j * k + s] = int(best);
        }
        float m = h[j * e + idx[j * k]], sum = 0;
        for (Index s = 0; s < k; ++s) sum += std::exp(h[j * e + idx[j * k + s]] - m);
        for (Index s = 0; s < k; ++s) weights[j * k + s] = std::exp(h[j * e + idx[j * k + s]] - m) / sum;
      }
    } else if (kind == "switch_gate" || kind == "top2_gate") {
      const Index choices = kind == "switch_gate" ? 1 : 2;
      cap = std::max<Index>(1, Index(std::ceil(double(choices * t) * factor / double(e) - 1e-9)));
      std::vector<int> choice(static_cast<std::size_t>(choices * t));
      for (Index j = 0; j < t; ++j) {
        Index b1 = 0;
        for (Index a = 1; a < e; ++a)
          if (probs[j * e + a] > probs[j * e + b1]) b1 = a;
        choice[j * choices] = int(b1);
        if (choices == 2) {
          Index b2 = -1;
          for (Index a = 0; a < e; ++a)
            if (a != b1 && (b2 < 0 || probs[j * e + a] > probs[j * e + b2])) b2 = a;
          choice[j * 2 + 1] = int(b2);
        }
      }
      std::vector<int> fill(static_cast<std::size_t>(e), 0);
      for (Index s = 0; s < choices; ++s)
        for (Index j = 0; j < t; ++j) {
          const int c = choice[j * choices + s];
          if (s == 0) ++count[c];
          if (fill[c]++ < cap) idx[j * choices + s] = c;
        }
      for (Index j = 0; j < t; ++j) {
        float d = 0;
        for (Index s = 0; s < choices; ++s)
          if (idx[j * choices + s] >= 0) d += probs[j * e + idx[j * choices + s]];
        for (Index s = 0; s < choices; ++s)
          if (idx[j * choices + s] >= 0)
            weights[j * choices + s] = choices == 1 ? probs[j * e + idx[j]] : probs[j * e + idx[j * choices + s]] / d;
      }
      balance = 0;
      for (Index a = 0; a < e; ++a) {
        float mp = 0;
        for (Index j = 0; j < t; ++j) mp += probs[j * e + a] / float(t);
        balance += float(e) * float(count[a]) / float(t) * mp;
      }
    } else {  // expert choice
      cap = std::min(t, std::max<Index>(1, Index(std::ceil(double(t) * factor / double(e) - 1e-9))));
      for (Index a = 0; a < e; ++a) {
        std::vector<int> order(static_cast<std::size_t>(t));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int u, int v) { return probs[u * e + a] > probs[v * e + a]; });
        for (Index q = 0; q < cap; ++q) {
          idx[order[q] * e + a] = int(a);
          weights[order[q] * e + a] = probs[order[q] * e + a];
        }
      }
    }
  }

  void backward(const float* x, const std::vector<float>& dw, float wb, float wz) {
    const Linear lin{w, e};
    const Index sl = slots();
    std::vector<float> dp(static_cast<std::size_t>(e * t), 0.f), dl(static_cast<std::size_t>(e * t), 0.f);
    dx.assign(static_cast<std::size_t>(w * t), 0.f);
    if (kind == "noisy_top_k_gate") {
      std::vector<float> dh(static_cast<std::size_t>(e * t), 0.f), dn(static_cast<std::size_t>(e * t), 0.f);
      for (Index j = 0; j < t; ++j) {
        float dot = 0;
        for (Index s = 0; s < k; ++s) dot += weights[j * k + s] * dw[j * k + s];
        for (Index s = 0; s < k; ++s) dh[j * e + idx[j * k + s]] += weights[j * k + s] * (dw[j * k + s] - dot);
      }
      for (Index q = 0; q < e * t; ++q) {
        dl[q] = dh[q] + wz * 2 * lse[q / e] * probs[q] / float(t);
        dn[q] = dh[q] * eps[q] / (1 + std::exp(-nlog[q]));
      }
      lin.backward(params.data(), x, t, dl, grads.data(), dx);
      lin.backward(params.data() + (w * e + e), x, t, dn, grads.data() + (w * e + e), dx);
      return;
    }
    for (Index j = 0; j < t; ++j) {
      for (Index a = 0; a < e; ++a) dp[j * e + a] = wb * float(e) * float(count[a]) / float(t) / float(t);
      if (kind == "top2_gate") {
        float d = 0, dot = 0;
        for (Index s = 0; s < 2; ++s)
          if (idx[j * 2 + s] >= 0) d += probs[j * e + idx[j * 2 + s]], dot += weights[j * 2 + s] * dw[j * 2 + s];
        for (Index s = 0; s < 2; ++s)
          if (idx[j * 2 + s] >= 0) dp[j * e + idx[j * 2 + s]] += (dw[j * 2 + s] - dot) / d;
      } else {
        for (Index s = 0; s < sl; ++s)
          if (idx[j * sl + s] >= 0) dp[j * e + idx[j * sl + s]] += dw[j * sl + s];
      }
      float dot = 0;
      for (Index a = 0; a < e; ++a) dot += probs[j * e + a] * dp[j * e + a];
      for (Index a = 0; a < e; ++a)
        dl[j * e + a] = probs[j * e + a] * (dp[j * e + a] - dot) + wz * 2 * lse[j] * probs[j * e + a] / float(t);
    }
    lin.backward(params.data(), x, t, dl, grads.data(), dx);
  }
};
}  // namespace ref

template <class G>
void run_fedmoe(benchmark::State& st, const GateCase& c, G gate) {
  const std::vector<float> xv = bench::uniform_data(c.width * c.tokens, bench::x_seed);
  const Matrix<float> x = ConstMatrixMap<float>(xv.data(), c.width, c.tokens);
  const std::vector<float> p = bench::make_params(gate.num_params(), c.width);
  gate.parameters() = ConstVectorMap<float>(p.data(), gate.num_params());
  AuxWeights<float> aux;
  aux.importance = aux.load = aux.balance = bench::aux_weight;
  aux.z = bench::z_weight;
  Rng noise(bench::x_seed + 1);
  const Routing<float>& r0 = gate.forward(x, Mode::train, noise);
  const std::vector<float> dwv = bench::uniform_data(r0.slots * c.tokens, bench::grad_seed);
  const Matrix<float> dw = ConstMatrixMap<float>(dwv.data(), r0.slots, c.tokens);
  if (c.backward) gate.backward(x, dw, aux);  // sizes every workspace
  const long before = bench::g_mallocs.load();
  for (auto _ : st) {
    const Routing<float>& r = gate.forward(x, Mode::train, noise);
    benchmark::DoNotOptimize(r.weights.data());
    if (c.backward) {
      const Matrix<float>& dx = gate.backward(x, dw, aux);
      benchmark::DoNotOptimize(dx.data());
    }
    benchmark::ClobberMemory();
  }
  st.counters["allocs_per_iter"] = bench::per_iteration(st, bench::g_mallocs.load() - before);
  bench::report_throughput(st, c);
}

void run_reference(benchmark::State& st, const GateCase& c) {
  ref::Gate g(c.gate, c.width, c.experts, c.k);
  g.params = bench::make_params(c.num_params(), c.width);
  g.grads.assign(static_cast<std::size_t>(c.num_params()), 0.f);
  const std::vector<float> x = bench::uniform_data(c.width * c.tokens, bench::x_seed);
  Rng noise(bench::x_seed + 1);
  g.forward(x.data(), c.tokens, noise);
  const std::vector<float> dw = bench::uniform_data(g.slots() * c.tokens, bench::grad_seed);
  for (auto _ : st) {
    g.forward(x.data(), c.tokens, noise);
    benchmark::DoNotOptimize(g.weights.data());
    if (c.backward) {
      g.backward(x.data(), dw, bench::aux_weight, bench::z_weight);
      benchmark::DoNotOptimize(g.dx.data());
    }
    benchmark::ClobberMemory();
  }
  bench::report_throughput(st, c);
}

void run_case(benchmark::State& st, const GateCase& c) {
  if (c.gate == "softmax_gate") return run_fedmoe(st, c, SoftmaxGate<float>(c.width, c.experts));
  if (c.gate == "noisy_top_k_gate") return run_fedmoe(st, c, NoisyTopKGate<float>(c.width, c.experts, c.k));
  if (c.gate == "switch_gate") return run_fedmoe(st, c, SwitchGate<float>(c.width, c.experts, bench::capacity_factor));
  if (c.gate == "top2_gate") return run_fedmoe(st, c, Top2Gate<float>(c.width, c.experts, bench::capacity_factor));
  return run_fedmoe(st, c, ExpertChoiceGate<float>(c.width, c.experts, bench::capacity_factor));
}

/// The compute roof: 16 independent chains of packet FMAs on registers (enough to cover the FMA latency
/// on every x86 and ARM core), the peak rate the router kernels can reach. Counter flops = 2 per lane.
void fma_peak(benchmark::State& st) {
  using namespace Eigen::internal;
  using P = detail::kernel::Packet<float>;
  constexpr int chains = 16, reps = 256;
  P acc[chains];
  FEDMOE_UNROLL
  for (int i = 0; i < chains; ++i) acc[i] = pset1<P>(1.0f + float(i) * 1e-3f);
  const P b = pset1<P>(0.999999f), c = pset1<P>(1e-7f);
  for (auto _ : st) {
    for (int r = 0; r < reps; ++r) {
      FEDMOE_UNROLL
      for (int i = 0; i < chains; ++i) acc[i] = pmadd(acc[i], b, c);
    }
    FEDMOE_UNROLL
    for (int i = 0; i < chains; ++i) detail::kernel::in_register(acc[i]);
  }
  float sum = 0;
  for (int i = 0; i < chains; ++i) sum += predux(acc[i]);
  benchmark::DoNotOptimize(sum);
  const double lanes = double(detail::kernel::lanes<float>);
  st.counters["flops"] = benchmark::Counter(double(st.iterations()) * reps * chains * lanes * 2.0,
                                            benchmark::Counter::kIsRate);
}

/// A copy written the way the router kernels write a dx from memory: packet loads, streaming (non-temporal)
/// stores (detail::kernel::stream_store), four packets per step. bytes/s = read + written bytes, as memcpy/.
/// glibc's memcpy may copy slower than the machine can (measured here: 34-37 GB/s against 45-53 GB/s for
/// this loop), and the roofline takes the faster of the two copies.
void copy_nt(benchmark::State& st, int mib) {
  using namespace Eigen::internal;
  using P = detail::kernel::Packet<float>;
  constexpr Index L = detail::kernel::lanes<float>;
  const Index n = (Index(mib) << 20) / Index(sizeof(float));  // a multiple of 4 packets
  const Vector<float> a = Vector<float>::Constant(n, 1.0f);     // Eigen aligns to the packet size
  Vector<float> b = Vector<float>::Constant(n, 2.0f);
  for (auto _ : st) {
    for (Index i = 0; i < n; i += 4 * L) {
      FEDMOE_UNROLL
      for (Index q = 0; q < 4; ++q) detail::kernel::stream_store(b.data() + i + q * L, pload<P>(a.data() + i + q * L));
    }
    detail::kernel::stream_fence();
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * 2 * n * static_cast<int64_t>(sizeof(float)));
}

/// How far this machine overlaps streaming tokens from memory with FMAs, the two things a router kernel
/// does at once. Per token (width 512, 2 KiB) and per packet of it: read the packet (fetching two tokens
/// ahead, a line per step, as the router kernels do) and/or 16 packet FMAs on registers that take it as
/// their addend (about what the read costs at copy speed). stream_fma/<fma|read|both>/<MiB>MiB; items =
/// tokens. Full overlap: `both` per token = max(`fma`, `read`); none: their sum.
template <int What>
void stream_fma(benchmark::State& st, int mib) {
  using namespace Eigen::internal;
  using P = detail::kernel::Packet<float>;
  constexpr Index L = detail::kernel::lanes<float>, width = 512;
  const Index tokens = (Index(mib) << 20) / (width * Index(sizeof(float)));
  const Matrix<float> x = Matrix<float>::Constant(width, tokens, 1e-6f);
  constexpr int chains = 16;
  const P b = pset1<P>(0.999999f);
  for (auto _ : st) {  // the accumulators live inside the timed loop, so that they stay in registers
    P acc[chains];
    FEDMOE_UNROLL
    for (int c = 0; c < chains; ++c) acc[c] = pset1<P>(1.0f + float(c) * 1e-3f);
    for (Index j = 0; j < tokens; ++j) {
      detail::kernel::LineStream<float> ahead(x.data(), width, width, std::min(j + 2, tokens),
                                              std::min(j + 3, tokens), width / L);
      const float* xj = x.data() + j * width;
      for (Index i = 0; i < width; i += L) {
        P xv = pset1<P>(1e-7f);
        if constexpr ((What & 2) != 0) {
          xv = ploadu<P>(xj + i);
          detail::kernel::in_register(xv);
          ahead.step();
        }
        if constexpr ((What & 1) != 0) {
          FEDMOE_UNROLL
          for (int c = 0; c < chains; ++c) acc[c] = pmadd(acc[c], b, xv);
        } else {
          acc[0] = padd(acc[0], xv);
        }
      }
    }
    FEDMOE_UNROLL
    for (int c = 1; c < chains; ++c) acc[0] = padd(acc[0], acc[c]);
    benchmark::DoNotOptimize(predux(acc[0]));
  }
  st.SetItemsProcessed(st.iterations() * tokens);
}

}  // namespace

int main(int argc, char** argv) {
  for (const GateCase& c : bench::all_cases()) {
    bench::add(c.name(), [c](benchmark::State& st) { run_case(st, c); });
    if (c.tokens <= 4096) bench::add("ref/" + c.name(), [c](benchmark::State& st) { run_reference(st, c); });
  }
  bench::add_memcpy({16, 256});
  bench::add("copy_nt/256MiB", [](benchmark::State& st) { copy_nt(st, 256); });
  bench::add("fma_peak/float", fma_peak);
  for (int mib : {1, 256}) {
    const std::string size = std::to_string(mib) + "MiB";
    bench::add("stream_fma/fma/" + size, [mib](benchmark::State& st) { stream_fma<1>(st, mib); });
    bench::add("stream_fma/read/" + size, [mib](benchmark::State& st) { stream_fma<2>(st, mib); });
    bench::add("stream_fma/both/" + size, [mib](benchmark::State& st) { stream_fma<3>(st, mib); });
  }
  return bench::run(argc, argv);
}
