#pragma once
/// @file gate.hpp
/// @brief The Gate concept, the routing result every gate returns, and the kernels gates share.
///
/// **Layout.** Tokens are columns: x is (width x tokens), column-major, as everywhere in fedmoe.
/// A linear gate's parameters are one contiguous Vector laid out like a Dense layer:
/// W_g as PyTorch stores it ([experts, width] row-major, which Eigen reads as the column-major
/// width x experts matrix W_g^T), then the bias b [experts]. Logits are l = W_g x + b (experts x tokens),
/// computed by the kernels of linear_router.hpp.
///
/// **Routing result (compact).** A gate routes each token to `slots` (expert, weight) pairs:
/// `weights` and `indices` are (slots x tokens). Slot j of token t sends the token to expert
/// indices(j, t) with combine weight weights(j, t); an index of -1 marks an empty slot (a choice
/// dropped by the capacity limit, or an expert that did not choose the token) and its weight is 0.
/// The compact form is used because the mixture layer, the backward pass and every sparse gate
/// touch only the selected pairs: k x tokens instead of experts x tokens. Slots per gate:
/// dense softmax: slots = experts (slot e is expert e); noisy top-k: k (descending by gate value);
/// switch: 1; top-2: 2 (first, second choice); expert choice: experts (slot e is expert e).
/// The dispatch lists group the non-empty (token, slot) pairs by expert, in token order:
/// expert e receives tokens dispatch_tokens[expert_offsets[e] .. expert_offsets[e+1]).
///
/// **Gradients.** Selection (top-k, argmax, capacity dropping, expert choice) is piecewise
/// constant and is treated as non-differentiable, as in the literature: backward differentiates
/// the combine weights and the auxiliary losses with the selection held fixed. Every gate offers
/// `freeze_selection(true)`: later forwards then reuse the previous selection (and capacity drops)
/// and only recompute the weights, which is exactly the function whose gradient backward returns.
///
/// **Backward.** `backward(x, d_weights, aux_weights, input_grad)` takes dL/d(weights)
/// (slots x tokens, entries of empty slots are ignored) and the weights of the auxiliary losses
/// in the total objective L_total = L(weights) + sum_a aux_weights.a * aux.a; it overwrites
/// gradients() with dL_total/dparams and returns dL_total/dx when input_grad is true.
///
/// **Allocation.** Workspaces are sized on the first call with a given (tokens, experts) and reused:
/// steady-state calls with a fixed token count do not allocate.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "linear_router.hpp"

namespace fedmoe {

using IndexMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>;
using IndexVector = Eigen::Matrix<std::int32_t, Eigen::Dynamic, 1>;

/// Auxiliary loss values of one forward pass (0 when a gate does not define the loss).
template <class Scalar>
struct AuxLosses {
  Scalar importance = 0;  ///< noisy top-k: CV^2 of the per-expert sum of gate values (Shazeer et al. 2017)
  Scalar load = 0;        ///< noisy top-k: CV^2 of the smooth per-expert load estimate (Shazeer et al. 2017)
  Scalar balance = 0;     ///< switch / top-2: E * sum_e fraction_e * mean_prob_e (Fedus et al. 2021; GShard)
  Scalar z = 0;           ///< router z-loss: mean_t (logsumexp_e l_et)^2 (Zoph et al. 2022)
};

/// Weights of the auxiliary losses in the objective that backward differentiates.
template <class Scalar>
struct AuxWeights {
  Scalar importance = 0;
  Scalar load = 0;
  Scalar balance = 0;
  Scalar z = 0;
};

/// What a gate's forward returns: combine weights, selected experts, dispatch lists, capacity, aux losses.
template <class Scalar>
struct Routing {
  Index experts = 0;   ///< E
  Index tokens = 0;    ///< T
  Index slots = 0;     ///< rows of weights / indices
  Index capacity = 0;  ///< max tokens an expert accepts, at most `tokens` (= tokens when uncapped)
  Index dropped = 0;   ///< (token, choice) pairs dropped by the capacity limit
  Matrix<Scalar> weights;       ///< slots x tokens combine weights, 0 in empty slots
  IndexMatrix indices;          ///< slots x tokens expert ids, -1 in empty slots
  IndexVector expert_offsets;   ///< experts + 1 offsets into the dispatch lists
  IndexVector dispatch_tokens;  ///< token of each dispatched pair, grouped by expert, token order
  IndexVector dispatch_slots;   ///< slot of each dispatched pair
  AuxLosses<Scalar> aux;

  /// Number of tokens sent to expert e.
  Index expert_count(Index e) const { return expert_offsets[e + 1] - expert_offsets[e]; }

  /// Sizes the matrices (no-op when unchanged).
  void resize(Index e, Index t, Index s) {
    experts = e;
    tokens = t;
    slots = s;
    weights.resize(s, t);
    indices.resize(s, t);
    expert_offsets.resize(e + 1);
    if (dispatch_tokens.size() < s * t) {
      dispatch_tokens.resize(s * t);
      dispatch_slots.resize(s * t);
    }
  }

  /// Rebuilds the dispatch lists from `indices` (counting sort by expert, stable in token order).
  void build_dispatch() {
    expert_offsets.setZero();
    const std::int32_t* idx = indices.data();
    for (Index i = 0; i < indices.size(); ++i)
      if (idx[i] >= 0) ++expert_offsets[idx[i] + 1];
    for (Index e = 0; e < experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
    // Fill using expert_offsets[e] as a cursor, then shift back.
    for (Index t = 0; t < tokens; ++t)
      for (Index j = 0; j < slots; ++j) {
        const std::int32_t e = indices(j, t);
        if (e < 0) continue;
        const std::int32_t pos = expert_offsets[e]++;
        dispatch_tokens[pos] = static_cast<std::int32_t>(t);
        dispatch_slots[pos] = static_cast<std::int32_t>(j);
      }
    for (Index e = experts; e > 0; --e) expert_offsets[e] = expert_offsets[e - 1];
    expert_offsets[0] = 0;
  }
};

/// What every gate provides (see the file comment for the meaning of each call).
template <class G>
concept Gate = requires(G g, const G cg, const Matrix<typename G::scalar_type>& x, Rng& rng,
                        const AuxWeights<typename G::scalar_type>& aux) {
  typename G::scalar_type;
  { cg.num_params() } -> std::convertible_to<Index>;
  { cg.input_size() } -> std::convertible_to<Index>;
  { cg.experts() } -> std::convertible_to<Index>;
  { cg.slots() } -> std::convertible_to<Index>;
  { g.parameters() } -> std::same_as<Vector<typename G::scalar_type>&>;
  { g.gradients() } -> std::same_as<Vector<typename G::scalar_type>&>;
  g.init(rng);
  g.freeze_selection(true);
  { g.forward(x, Mode::train, rng) } -> std::same_as<const Routing<typename G::scalar_type>&>;
  { cg.routing() } -> std::same_as<const Routing<typename G::scalar_type>&>;
  { g.backward(x, x, aux, true) } -> std::same_as<const Matrix<typename G::scalar_type>&>;
};

namespace detail {

/// Names a gate's member function in an error message ("SwitchGate::forward"); streamed only when
/// a check fails, so a passing check builds no string.
struct GateCall {
  const char* gate;
  const char* function;
  friend std::string to_string(const GateCall& c) { return std::string(c.gate) + "::" + c.function; }
  friend std::ostream& operator<<(std::ostream& out, const GateCall& c) { return out << to_string(c); }
};

template <class Who, class In>
void check_gate_input(const Who& who, Index width, const In& x) {
  FEDMOE_CHECK(x.rows() == width, who, ": expected input with ", width, " rows (features per token), got ", x.rows());
  FEDMOE_CHECK(x.cols() > 0, who, ": expected at least one token (column), got 0");
}

template <class Who, class DW>
void check_gate_grad(const Who& who, Index slots, Index tokens, const DW& dw) {
  FEDMOE_CHECK(dw.rows() == slots && dw.cols() == tokens, who, ": expected d_weights of shape ", slots, "x", tokens,
               " (slots x tokens of the last forward), got ", dw.rows(), "x", dw.cols());
}

inline void check_experts(const char* who, Index width, Index experts) {
  FEDMOE_CHECK(width > 0, who, ": expected width > 0, got ", width);
  FEDMOE_CHECK(experts > 0, who, ": expected experts > 0, got ", experts);
}

inline void check_capacity_factor(const char* who, double factor) {
  FEDMOE_CHECK(factor > 0 && std::isfinite(factor), who, ": expected a finite capacity factor > 0, got ", factor);
}

/// min(ceil(numerator * factor / experts), limit), at least 1 (factor finite > 0, numerator > 0, limit > 0).
///
/// `limit` is the most pairs one expert can ever receive in the call (the token count: a token's
/// slots name distinct experts), so a capacity above it is the same rule, "nothing dropped": the
/// comparison is made in double, before the conversion, so that any finite factor (1e300 too) is
/// defined behaviour and routes exactly as an unlimited capacity would. (Converting an out-of-range
/// double to an integer is undefined behaviour; with 1e300 the capacity used to come out as 1.)
inline Index capacity(Index numerator, Index experts, double factor, Index limit) {
  FEDMOE_CHECK(numerator > 0 && experts > 0 && limit > 0, "capacity: expected numerator, experts and limit > 0, got ",
               numerator, ", ", experts, " and ", limit);
  check_capacity_factor("capacity", factor);
  const double c = std::ceil(static_cast<double>(numerator) * factor / static_cast<double>(experts) - 1e-9);
  if (!(c < static_cast<double>(limit))) return limit;  // also +inf (numerator * factor overflowed)
  return std::max<Index>(1, static_cast<Index>(c));     // 0 < c < limit: representable
}

/// Squared coefficient of variation with the unbiased variance, as the reference implementations:
/// cv2(v) = var(v) / (mean(v)^2 + 1e-10), var = sum (v - mean)^2 / (n - 1); 0 when n == 1.
template <class Scalar>
Scalar cv_squared(const Vector<Scalar>& v) {
  const Index n = v.size();
  if (n <= 1) return 0;
  const double mean = v.template cast<double>().mean();
  const double var = (v.template cast<double>().array() - mean).square().sum() / static_cast<double>(n - 1);
  return static_cast<Scalar>(var / (mean * mean + 1e-10));
}

/// grad = d cv_squared(v) / dv (same length as v).
template <class Scalar>
void cv_squared_gradient(const Vector<Scalar>& v, Vector<Scalar>& grad) {
  const Index n = v.size();
  grad.resize(n);
  if (n <= 1) {
    grad.setZero();
    return;
  }
  const double mean = v.template cast<double>().mean();
  const double var = (v.template cast<double>().array() - mean).square().sum() / static_cast<double>(n - 1);
  const double den = mean * mean + 1e-10;
  for (Index i = 0; i < n; ++i) {
    const double dvar = 2.0 * (double(v[i]) - mean) / static_cast<double>(n - 1);
    grad[i] = static_cast<Scalar>(dvar / den - var * 2.0 * mean / (den * den) / static_cast<double>(n));
  }
}

/// p[i] = f(p[i]) for i < n, f a function of packets, the last partial packet padded with `pad` (a valid
/// input of f): unlike an Eigen array expression (scalar functions for the elements after the last full
/// packet), every element goes through the packet function, so a value does not depend on where the
/// array ends.
template <class Scalar, class F>
void transform_packets(Scalar* p, Index n, Scalar pad, F&& f) {
  using namespace Eigen::internal;
  using P = kernel::Packet<Scalar>;
  constexpr Index L = kernel::lanes<Scalar>;
  Index i = 0;
  for (; i + L <= n; i += L) pstoreu(p + i, f(ploadu<P>(p + i)));
  if (i < n) {
    Scalar buf[L];
    std::fill(buf, buf + L, pad);
    std::copy(p + i, p + n, buf);
    pstoreu(buf, f(ploadu<P>(buf)));
    std::copy(buf, buf + (n - i), p + i);
  }
}

/// p[i] = exp(p[i]) for i < n, every element through the packet exp (see transform_packets).
template <class Scalar>
void exp_in_place(Scalar* p, Index n) {
  transform_packets(p, n, Scalar(0), [](const auto& v) { return Eigen::internal::pexp(v); });
}

/// Most experts whose per-token softmax runs transposed, one packet per expert (kept on the stack).
inline constexpr Index max_packet_experts = 64;

/// softmax_columns of column j alone, with q-lane packets along the column: the same operations per value, in
/// the same order, as softmax_groups (max, exp(l - max), the sum in expert order, 1 / sum, the products,
/// max + log(sum)), hence the same bits.
template <Index q, class Scalar>
void softmax_column_packets(const Matrix<Scalar>& logits, Matrix<Scalar>& probs, Vector<Scalar>& lse, Index j) {
  using namespace Eigen::internal;
  using Q = typename find_best_packet<Scalar, q>::type;
  const Index e = logits.rows(), groups = e / q;
  const Scalar* l = logits.data() + j * e;
  Scalar* p = probs.data() + j * e;
  Q mv = ploadu<Q>(l);
  for (Index g = 1; g < groups; ++g) mv = pmax(mv, ploadu<Q>(l + g * q));
  const Q m = pset1<Q>(predux_max(mv));
  Scalar sum = 0;
  for (Index g = 0; g < groups; ++g) {
    pstoreu(p + g * q, pexp(psub(ploadu<Q>(l + g * q), m)));
    for (Index i = 0; i < q; ++i) sum += p[g * q + i];
  }
  const Q s = pset1<Q>(sum), inv = pdiv(pset1<Q>(Scalar(1)), s);
  for (Index g = 0; g < groups; ++g) pstoreu(p + g * q, pmul(ploadu<Q>(p + g * q), inv));
  lse[j] = pfirst(padd(m, plog(s)));
}

/// softmax_columns of columns [j0, j1), (j1 - j0) a multiple of U * q: q tokens at a time, each group of q
/// experts of q columns transposed in registers (Eigen's ptranspose) so that everything runs across tokens,
/// one packet per expert, then transposed back; U groups per step, so that their dependency chains (exp ->
/// sum -> log and divide -> normalise) overlap.
template <Index q, Index U, class Scalar>
void softmax_groups(const Matrix<Scalar>& logits, Matrix<Scalar>& probs, Vector<Scalar>& lse, Index j0, Index j1) {
  using namespace Eigen::internal;
  using Q = typename find_best_packet<Scalar, q>::type;
  static_assert(unpacket_traits<Q>::size == q, "softmax_groups: no packet of q lanes");
  const Index e = logits.rows(), groups = e / q;
  Q v[U][max_packet_experts];
  Scalar out[q];
  for (Index j = j0; j < j1; j += U * q) {
    for (Index u = 0; u < U; ++u) {  // v[u][i]: expert i across the q tokens of group u
      const Scalar* src = logits.data() + (j + u * q) * e;
      for (Index g = 0; g < groups; ++g) {
        PacketBlock<Q, q> b;
        for (Index k = 0; k < q; ++k) b.packet[k] = ploadu<Q>(src + k * e + g * q);
        ptranspose(b);
        for (Index i = 0; i < q; ++i) v[u][g * q + i] = b.packet[i];
      }
    }
    Q m[U], sum[U], inv[U];
    for (Index u = 0; u < U; ++u) m[u] = v[u][0];
    for (Index i = 1; i < e; ++i)
      for (Index u = 0; u < U; ++u) m[u] = pmax(m[u], v[u][i]);
    for (Index u = 0; u < U; ++u) sum[u] = pset1<Q>(Scalar(0));
    for (Index i = 0; i < e; ++i)
      for (Index u = 0; u < U; ++u) {
        v[u][i] = pexp(psub(v[u][i], m[u]));
        sum[u] = padd(sum[u], v[u][i]);
      }
    for (Index u = 0; u < U; ++u) inv[u] = pdiv(pset1<Q>(Scalar(1)), sum[u]);
    for (Index u = 0; u < U; ++u) {
      pstoreu(out, padd(m[u], plog(sum[u])));
      std::copy(out, out + q, lse.data() + j + u * q);
      Scalar* dst = probs.data() + (j + u * q) * e;
      for (Index g = 0; g < groups; ++g) {
        PacketBlock<Q, q> b;
        for (Index i = 0; i < q; ++i) b.packet[i] = pmul(v[u][g * q + i], inv[u]);
        ptranspose(b);
        for (Index k = 0; k < q; ++k) pstoreu(dst + k * e + g * q, b.packet[k]);
      }
    }
  }
}

/// softmax_columns for q dividing experts (<= max_packet_experts): pairs of groups of q tokens, then a
/// last group, then the columns left one by one (fewer than q; a padded group cost the one-token gate 12 %).
template <Index q, class Scalar>
void softmax_columns_packed(const Matrix<Scalar>& logits, Matrix<Scalar>& probs, Vector<Scalar>& lse, Index j0,
                            Index j1) {
  const Index grouped = j0 + (j1 - j0) / q * q, paired = j0 + (j1 - j0) / (2 * q) * (2 * q);
  softmax_groups<q, 2>(logits, probs, lse, j0, paired);
  softmax_groups<q, 1>(logits, probs, lse, paired, grouped);
  for (Index j = grouped; j < j1; ++j) softmax_column_packets<q>(logits, probs, lse, j);
}

/// Column softmax of logits into probs; lse[t] = log-sum-exp of column t.
///
/// A column holds only `experts` values, too few to fill a packet, so when a packet width q divides the
/// number of experts (the full, half or quarter packet, at least 8 lanes: AVX and AVX-512), q tokens are
/// done at a time: each group of q experts of q columns is loaded and transposed in registers (Eigen's
/// ptranspose), so that the max, the exponentials, the sum, the logarithm and the normalisation run across
/// tokens, one packet per expert, and the result is transposed back (AVX-512, per token: 8 experts
/// 6.9 -> 6.1 ns, 16 experts 10.8 -> 4.8, 64 experts 48 -> 15); the columns left over run one by one with
/// the same operations. Sums over the experts run in expert order either way. Otherwise (or beyond
/// max_packet_experts) each column is done on its own, with the exponentials vectorised over the matrix
/// (exp_in_place, whose partial last packet is padded). Either way a column's result does not depend on
/// the other columns. This overload does only columns [j0, j1) (probs and lse already sized), for callers
/// that work through the tokens in chunks.
template <class Scalar>
void softmax_columns(const Matrix<Scalar>& logits, Matrix<Scalar>& probs, Vector<Scalar>& lse, Index j0, Index j1) {
  const Index e = logits.rows();
  // The full packet, else a packet of half its lanes (packets of 4 lanes measured no faster than the
  // per-column loop).
  constexpr Index L = kernel::lanes<Scalar>;
  const auto fits = [e](Index q) { return q >= 8 && e % q == 0 && e <= max_packet_experts; };
  if (fits(L)) return softmax_columns_packed<L>(logits, probs, lse, j0, j1);
  if constexpr (L >= 16) {
    if (fits(L / 2)) return softmax_columns_packed<L / 2>(logits, probs, lse, j0, j1);
  }
  for (Index j = j0; j < j1; ++j) {  // shift each column by its maximum
    const Scalar* l = logits.data() + j * e;
    Scalar* p = probs.data() + j * e;
    Scalar m = l[0];
    for (Index i = 1; i < e; ++i) m = std::max(m, l[i]);
    for (Index i = 0; i < e; ++i) p[i] = l[i] - m;
    lse[j] = m;
  }
  exp_in_place(probs.data() + j0 * e, e * (j1 - j0));
  for (Index j = j0; j < j1; ++j) {
    Scalar* p = probs.data() + j * e;
    Scalar s = 0;
    for (Index i = 0; i < e; ++i) s += p[i];
    const Scalar inv = Scalar(1) / s;
    for (Index i = 0; i < e; ++i) p[i] *= inv;
    lse[j] += std::log(s);
  }
}

template <class Scalar>
void softmax_columns(const Matrix<Scalar>& logits, Matrix<Scalar>& probs, Vector<Scalar>& lse) {
  probs.resize(logits.rows(), logits.cols());
  lse.resize(logits.cols());
  softmax_columns(logits, probs, lse, 0, logits.cols());
}

/// The z-loss mean_t lse_t^2 from softmax_columns' per-token log-sum-exp.
template <class Scalar>
Scalar lse_z_loss(const Vector<Scalar>& lse) {
  return static_cast<Scalar>(lse.squaredNorm() / static_cast<Scalar>(lse.size()));
}

/// dlogits(:, t) = p ⊙ (dp - <p, dp>) + wz * 2 lse_t p / T (softmax backward plus the z-loss term).
template <class Scalar, class DP>
void softmax_backward_columns(const Matrix<Scalar>& probs, const DP& dprobs, const Vector<Scalar>& lse, Scalar wz,
                              Matrix<Scalar>& dlogits) {
  const Index e = probs.rows(), t = probs.cols();
  dlogits.resize(e, t);
  const Scalar zc = wz * Scalar(2) / static_cast<Scalar>(t);
  for (Index j = 0; j < t; ++j) {
    const Scalar* p = probs.data() + j * e;
    Scalar* dl = dlogits.data() + j * e;
    Scalar dot = 0;
    for (Index i = 0; i < e; ++i) dot += p[i] * Scalar(dprobs(i, j));
    const Scalar zt = zc * lse[j] - dot;
    for (Index i = 0; i < e; ++i) dl[i] = p[i] * (Scalar(dprobs(i, j)) + zt);
  }
}

/// Shared storage of the gates that own a parameter vector.
template <class Scalar>
class GateStorage {
public:
  Vector<Scalar>& parameters() { return m_params; }
  const Vector<Scalar>& parameters() const { return m_params; }
  Vector<Scalar>& gradients() { return m_grads; }
  const Vector<Scalar>& gradients() const { return m_grads; }
  Index num_params() const { return m_params.size(); }
  /// The routing of the last forward.
  const Routing<Scalar>& routing() const { return m_routing; }
  /// When true, forward reuses the previous selection (see gate.hpp).
  void freeze_selection(bool frozen) { m_frozen = frozen; }
  bool selection_frozen() const { return m_frozen; }

protected:
  void allocate(Index n) {
    m_params.setZero(n);
    m_grads.setZero(n);
  }
  /// True when the frozen selection can be reused for T tokens; fails if the token count changed.
  template <class Who>
  bool reuse_selection(const Who& who, Index tokens) const {
    if (!m_frozen || !m_has_selection) return false;
    FEDMOE_CHECK(tokens == m_routing.tokens, who, ": the selection is frozen for ", m_routing.tokens,
                 " tokens, got ", tokens);
    return true;
  }
  /// Forward epilogue of every gate: the routing is complete and becomes the selection that
  /// freeze_selection reuses; returns it.
  const Routing<Scalar>& keep_selection() {
    m_has_selection = true;
    return m_routing;
  }

  Vector<Scalar> m_params, m_grads;
  Routing<Scalar> m_routing;
  Matrix<Scalar> m_dx;
  bool m_frozen = false;
  bool m_has_selection = false;
};

/// What the gates over a linear router share: the router W x + b (the first num_params of
/// parameters(); a gate with `routers` routers of the same shape lays them out one after the other),
/// the configuration checks, the accessors, and the forward / backward prologues and the router's
/// backward. A gate derives from it and keeps only its routing rule, its auxiliary losses and their
/// backward. The error messages name the gate and the call ("SwitchGate::forward: ...").
template <class Scalar>
class LinearGate : public GateStorage<Scalar> {
public:
  Index input_size() const { return m_router.width; }
  /// The router's outputs (SigmoidGate, whose one logit routes to two experts, hides it with 2).
  Index experts() const { return m_router.experts; }
  Index slots() const { return m_slots; }
  /// PyTorch nn.Linear's default for the (first) router; the parameters of further routers are
  /// left as they are (NoisyTopKGate initialises its noise router itself).
  void init(Rng& rng) { m_router.init(this->m_params.data(), rng); }

protected:
  /// Checks width > 0 and experts > 0, then allocates `routers` routers of width x experts.
  LinearGate(const char* name, Index width, Index experts, Index slots, Index routers = 1)
      : m_name(name), m_router{width, experts, routers}, m_slots(slots) {
    check_experts(name, width, experts);
    this->allocate(m_router.num_params());
  }

  /// Checks the tokens x (width x T) given to forward.
  template <class In>
  void check_forward(const In& x) const {
    check_gate_input(GateCall{m_name, "forward"}, input_size(), x);
  }
  /// Forward prologue of a gate whose selection can be frozen: checks x, sizes the routing for its tokens
  /// (experts x T x slots) and returns true when the frozen selection is to be reused.
  template <class In>
  bool begin_forward(const In& x) {
    check_forward(x);
    const bool reuse = this->reuse_selection(GateCall{m_name, "forward"}, x.cols());
    this->m_routing.resize(m_router.experts, x.cols(), m_slots);
    return reuse;
  }
  /// logits = W x + b, every router's rows stacked (see linear_router.hpp).
  template <class In>
  void router_forward(const In& x, Matrix<Scalar>& logits) const {
    m_router.forward(this->m_params.data(), x, logits);
  }

  /// Backward prologue: checks d_weights against the last forward's (slots x tokens), then x.
  template <class In, class DW>
  void check_backward(const In& x, const DW& d_weights) const {
    const GateCall who{m_name, "backward"};
    check_gate_grad(who, this->m_routing.slots, this->m_routing.tokens, d_weights);
    check_gate_input(who, input_size(), x);
  }
  /// Backward through the routers: overwrites the gradients given dL/dlogits (every router's rows) and,
  /// when input_grad, sets the returned dL/dx (left as it is otherwise).
  template <class In>
  const Matrix<Scalar>& router_backward(const In& x, const Matrix<Scalar>& dlogits, bool input_grad) {
    m_router.backward(this->m_params.data(), x, dlogits, this->m_grads.data(), input_grad ? &this->m_dx : nullptr);
    return this->m_dx;
  }

  const char* m_name;
  LinearRouter<Scalar> m_router;
  Index m_slots;
};

/// A linear gate that selects by the router probabilities p = softmax(W x + b) under a capacity
/// limit (switch, top-2, expert choice). Owns the capacity factor, the probabilities and log-sum-exp
/// of the last forward, and dL/dp (m_dp, which the gate's backward fills) and the softmax and router
/// backward from it; the gate keeps its selection rule, its weights and its balance loss.
template <class Scalar>
class CapacityGate : public LinearGate<Scalar> {
public:
  double capacity_factor() const { return m_factor; }
  /// Router probabilities softmax(W x + b) of the last forward (experts x tokens).
  const Matrix<Scalar>& probabilities() const { return m_probs; }

protected:
  /// Checks as LinearGate, then experts >= slots (a token's slots name distinct experts), then that
  /// the capacity factor is finite and > 0.
  CapacityGate(const char* name, Index width, Index experts, Index slots, double capacity_factor)
      : LinearGate<Scalar>(name, width, experts, slots), m_factor(capacity_factor) {
    FEDMOE_CHECK(experts >= slots, name, ": expected experts >= ", slots, " (k = ", slots, " <= experts), got ",
                 experts);
    check_capacity_factor(name, capacity_factor);
  }

  /// min(ceil(numerator * capacity_factor / experts), tokens), at least 1 (see detail::capacity: an
  /// expert never receives more than `tokens` pairs, so a larger capacity drops nothing either).
  Index capacity(Index numerator, Index tokens) const {
    return detail::capacity(numerator, this->m_router.experts, m_factor, tokens);
  }

  /// Forward prologue: begin_forward (returns its reuse flag), then the probabilities of x's tokens.
  template <class In>
  bool begin_routing(const In& x) {
    const bool reuse = this->begin_forward(x);
    this->router_forward(x, m_logits);
    softmax_columns(m_logits, m_probs, m_lse);
    return reuse;
  }
  /// Forward epilogue: sets the z-loss (the gate has reset and set the other aux losses) and keeps
  /// the selection for freeze_selection.
  const Routing<Scalar>& end_routing() {
    this->m_routing.aux.z = lse_z_loss(m_lse);
    return this->keep_selection();
  }
  /// Backward epilogue: dL/dlogits from dL/dp = m_dp (with the z-loss term, weight wz), then through
  /// the router; returns dL/dx when input_grad.
  template <class In>
  const Matrix<Scalar>& backward_probabilities(const In& x, Scalar wz, bool input_grad) {
    softmax_backward_columns(m_probs, m_dp, m_lse, wz, m_dlogits);
    return this->router_backward(x, m_dlogits, input_grad);
  }

  double m_factor;
  Matrix<Scalar> m_logits, m_probs, m_dp, m_dlogits;
  Vector<Scalar> m_lse;
};

}  // namespace detail

}  // namespace fedmoe
