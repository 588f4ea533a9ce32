#pragma once
/// @file noisy_top_k_gate.hpp
/// @brief Noisy top-k gating with importance and load losses (Shazeer et al. 2017,
/// "Outrageously large neural networks: the sparsely-gated mixture-of-experts layer").
///
/// Clean logits c = W_g x + b_g, noise scale s = softplus(W_n x + b_n) (experts x tokens).
/// In Mode::train (and when constructed noisy): H = c + eps ⊙ s with eps ~ N(0, 1) drawn from
/// the caller's Rng (detail::standard_normals over the column-major experts x tokens matrix);
/// otherwise H = c.
/// The k largest entries of each column of H are kept (ties: the lower expert index wins):
/// G_t = softmax over those k values, 0 elsewhere; slots are the k choices, in descending H.
///
/// Auxiliary losses (values in Routing::aux):
/// - importance = cv2(Importance), Importance_e = sum_t G_et;
/// - load = cv2(Load), Load_e = sum_t P_et, P_et = Phi((c_et - thr_et) / s_et), where thr_et is
///   the k-th largest H_t when e is outside the top k and the (k+1)-th largest when inside
///   (noisy training with k < E only; otherwise Load_e is the count of tokens routed to e,
///   which has no gradient);
/// - z = mean_t (logsumexp_e c_et)^2.
/// cv2 is the squared coefficient of variation with the unbiased variance (detail::cv_squared).
/// Gradients flow through the selected values, the threshold values and the noise scale, the
/// selection itself is held fixed (see gate.hpp). Parameters: [W_g^T, b_g, W_n^T, b_n].
#include <limits>
#include <type_traits>

#include <unsupported/Eigen/SpecialFunctions>  // Eigen's vectorised erf (the normal CDF of the load loss)

#include "gate.hpp"

namespace fedmoe {

namespace detail {

/// Fills out[0 .. n) with standard normal draws by inversion, vectorised: eps_i = sqrt(2) erfinv(2 u_i - 1)
/// with the uniforms u_i in (0, 1) drawn first, in order, from rng. A float takes 24 bits (two per 64-bit
/// output; |eps| <= 5.4), a double 53 bits (one per output). erfinv is M. Giles' single-precision
/// approximation ("Approximating the erfinv function", GPU Computing Gems, 2011; relative error < 1e-6),
/// evaluated over Eigen packets: the central polynomial, and the tail polynomial (w >= 5, |eps| > 2.9,
/// 0.34 % of draws) only for the packets with a lane in the tail, selected per lane (a packet's lanes get
/// the same bits either way; skipping the square root and the second polynomial saves 12 % of the draws'
/// time at 16 lanes). (An Eigen array expression with .select() is not vectorised in Eigen 3.4 and
/// re-evaluated the square root per use: 4x slower.) The last partial packet is padded and goes through the
/// same code, so a draw does not depend on n.
template <class Scalar>
void standard_normals(Rng& rng, Scalar* out, Index n) {
  for (Index i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<Scalar, float>) {
      const std::uint64_t b = rng();
      out[i] = (static_cast<float>(b >> 40) + 0.5f) * 0x1p-24f;
      if (++i < n) out[i] = (static_cast<float>((b >> 16) & 0xFFFFFFu) + 0.5f) * 0x1p-24f;
    } else {
      out[i] = static_cast<Scalar>((static_cast<double>(rng() >> 11) + 0.5) * 0x1p-53);
    }
  }
  using namespace Eigen::internal;
  using P = kernel::Packet<Scalar>;
  const auto normal = [](const P& u) {
    const auto c = [](Scalar v) { return pset1<P>(v); };
    const P x = psub(pmul(c(2), u), c(1));
    const P w = pnegate(plog(pmul(pmul(c(4), u), psub(c(1), u))));  // -log(1 - x^2)
    P a = psub(w, c(Scalar(2.5)));
    P r = c(Scalar(2.81022636e-08));
    for (Scalar k : {Scalar(3.43273939e-07), Scalar(-3.5233877e-06), Scalar(-4.39150654e-06), Scalar(0.00021858087),
                     Scalar(-0.00125372503), Scalar(-0.00417768164), Scalar(0.246640727), Scalar(1.50140941)})
      r = pmadd(r, a, c(k));
    const P tail_lanes = pcmp_le(c(5), w);
    if (predux_any(tail_lanes)) {
      a = psub(psqrt(w), c(3));
      P tail = c(Scalar(-0.000200214257));
      for (Scalar k : {Scalar(0.000100950558), Scalar(0.00134934322), Scalar(-0.00367342844), Scalar(0.00573950773),
                       Scalar(-0.0076224613), Scalar(0.00943887047), Scalar(1.00167406), Scalar(2.83297682)})
        tail = pmadd(tail, a, c(k));
      r = pselect(tail_lanes, tail, r);
    }
    return pmul(pmul(c(Scalar(1.41421356237309504880)), r), x);
  };
  transform_packets(out, n, Scalar(0.5), normal);
}

}  // namespace detail

template <class Scalar = float>
class NoisyTopKGate : public detail::LinearGate<Scalar> {
public:
  using scalar_type = Scalar;

  /// Two routers of the same shape, run together: the gate router, then the noise router.
  NoisyTopKGate(Index width, Index experts, Index k, bool noisy = true)
      : detail::LinearGate<Scalar>("NoisyTopKGate", width, checked_experts(experts), k, 2), m_noisy(noisy) {
    FEDMOE_CHECK(k >= 1 && k <= experts, "NoisyTopKGate: expected 1 <= k <= experts (", experts, "), got k = ", k);
    FEDMOE_CHECK(k < max_selection, "NoisyTopKGate: expected k <= ", max_selection - 1, ", got k = ", k);
  }

  /// Largest k + 1 the fused selection keeps (k <= 31).
  static constexpr Index max_selection = 32;
  /// Most experts: the selection carries expert ids as Scalar lanes, exact up to 2^digits (2^24 for float,
  /// 2^53 for double), and no more than an Index holds (a 32-bit Index cannot shift 1 by 53).
  static constexpr Index max_experts = std::numeric_limits<Scalar>::digits < std::numeric_limits<Index>::digits
                                           ? Index(1) << std::numeric_limits<Scalar>::digits
                                           : std::numeric_limits<Index>::max();

  Index k() const { return this->slots(); }
  /// W_g, b_g like nn.Linear; W_n, b_n zero (noise scale softplus(0) = log 2 at the start).
  void init(Rng& rng) {
    detail::LinearGate<Scalar>::init(rng);
    this->m_params.tail(this->m_router.router_params()).setZero();
  }

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) {
    const bool reuse = this->begin_forward(x);
    auto& r = this->m_routing;
    const Index e = this->experts(), t = x.cols(), k = this->k(), kk = std::min(k + 1, e);
    m_noisy_pass = m_noisy && mode == Mode::train;
    m_smooth_load = m_noisy_pass && k < e;
    if (m_noisy_pass) {  // both routers in one pass over the tokens
      this->m_router.template forward<2>(this->m_params.data(), x, {&m_clean, &m_nlog});
      for (Matrix<Scalar>* m : {&m_eps, &m_std, &m_h}) m->resize(e, t);
    } else {
      this->router_forward(x, m_clean);
    }
    if (m_smooth_load)
      for (Matrix<Scalar>* m : {&m_z, &m_phi}) m->resize(e, t);
    m_cprob.resize(e, t);
    m_lse.resize(t);
    m_order.resize(kk, t);
    // The elementwise work, chunk by chunk of tokens, so that a chunk's matrices stay in cache from one pass
    // to the next (as whole-matrix passes they cost 55 ns per token from memory against 46 in cache; the
    // forward at 65,536 tokens gained ~2 %). Every pass is elementwise or per token, and a chunk is a whole
    // number of packets of elements (and of the float noise's pairs of draws), so the chunks change no bit.
    for (Index j0 = 0; j0 < t; j0 += chunk_tokens) forward_chunk(j0, std::min(t, j0 + chunk_tokens), rng, reuse);
    m_importance.setZero(e);  // in token order
    for (Index j = 0; j < t; ++j)
      for (Index q = 0; q < k; ++q) m_importance[r.indices(q, j)] += r.weights(q, j);
    if (m_smooth_load) {
      m_load.noalias() = m_phi.rowwise().sum();
    } else {
      m_load.setZero(e);
      for (Index i = 0; i < k * t; ++i) m_load[r.indices.data()[i]] += Scalar(1);
    }
    r.aux = {};
    r.aux.importance = detail::cv_squared(m_importance);
    r.aux.load = detail::cv_squared(m_load);
    r.aux.z = detail::lse_z_loss(m_lse);
    r.capacity = t;
    r.dropped = 0;
    r.build_dispatch();
    return this->keep_selection();
  }
  /// Evaluation-mode forward (no noise).
  template <class In>
  const Routing<Scalar>& forward(const In& x) {
    Rng unused(0);
    return forward(x, Mode::eval, unused);
  }

  template <class In, class DW>
  const Matrix<Scalar>& backward(const In& x, const DW& d_weights, const AuxWeights<Scalar>& aux = {},
                                 bool input_grad = true) {
    this->check_backward(x, d_weights);
    const auto& r = this->m_routing;
    const Index e = this->experts(), t = r.tokens, k = this->k(), kk = m_order.rows();
    const bool imp = aux.importance != Scalar(0);
    if (imp) {
      detail::cv_squared_gradient(m_importance, m_gimp);
      m_gimp *= aux.importance;
    }
    // dL/dclean from the z-loss: zc * lse_t * softmax(clean)_t (zero when the weight is 0)
    const Scalar zc = aux.z * Scalar(2) / static_cast<Scalar>(t);
    m_dclean.resize(e, t);
    if (zc != Scalar(0)) {
      for (Index j = 0; j < t; ++j) m_dclean.col(j) = (zc * m_lse[j]) * m_cprob.col(j);
    } else {
      m_dclean.setZero();
    }
    m_dh.setZero(e, t);  // dL/dH
    for (Index j = 0; j < t; ++j) {
      const std::int32_t* ord = m_order.data() + j * kk;
      auto dg = [&](Index i) { return Scalar(d_weights(i, j)) + (imp ? m_gimp[ord[i]] : Scalar(0)); };
      Scalar dot = 0;  // softmax backward over the k selected values
      for (Index i = 0; i < k; ++i) dot += r.weights(i, j) * dg(i);
      for (Index i = 0; i < k; ++i) m_dh(ord[i], j) += r.weights(i, j) * (dg(i) - dot);
    }
    const bool load = m_smooth_load && aux.load != Scalar(0);
    if (load) {
      // d load_e / d z_et = phi(z_et); z = (c - thr) / s: dc = g, dthr = -g, ds = -g z, g = w_e phi / s
      detail::cv_squared_gradient(m_load, m_gload);
      m_gload *= aux.load;
      m_c.array() = Scalar(0.39894228040143267794) * (Scalar(-0.5) * m_z.array().square()).exp() / m_std.array();
      m_c.array().colwise() *= m_gload.array();
      for (Index j = 0; j < t; ++j) {
        const std::int32_t* ord = m_order.data() + j * kk;
        Scalar all = 0, in = 0;
        for (Index i = 0; i < e; ++i) all += m_c(i, j);
        for (Index i = 0; i < k; ++i) in += m_c(ord[i], j);
        m_dh(ord[k], j) -= in;          // threshold of the selected experts: the (k+1)-th value
        m_dh(ord[k - 1], j) -= all - in;  // threshold of the others: the k-th value
      }
      m_dclean += m_c;
    }
    m_dclean += m_dh;
    if (m_noisy_pass) {
      // d(noise logits) = (dH ⊙ eps + ds) ⊙ sigmoid(noise logits), ds = -c ⊙ z from the load
      m_dn.array() = m_dh.array() * m_eps.array();
      if (load) m_dn.array() -= m_c.array() * m_z.array();
      m_dn.array() /= Scalar(1) + (-m_nlog.array()).exp();
      this->m_router.template backward<2>(this->m_params.data(), x, {&m_dclean, &m_dn}, this->m_grads.data(),
                                          input_grad ? &this->m_dx : nullptr);
    } else {
      this->router_backward(x, m_dclean, input_grad);  // the noise router's gradient is zero
    }
    return this->m_dx;
  }

  /// The selected H values' experts in descending order plus the threshold expert: (min(k+1, E) x T).
  const IndexMatrix& order() const { return m_order; }
  /// Gate values H of the last forward (noisy in training).
  const Matrix<Scalar>& values() const { return m_noisy_pass ? m_h : m_clean; }
  const Matrix<Scalar>& clean_logits() const { return m_clean; }

private:
  /// experts, checked against max_experts before the base class allocates the parameters.
  static Index checked_experts(Index experts) {
    FEDMOE_CHECK(experts <= max_experts, "NoisyTopKGate: expected experts <= ", max_experts, ", got ", experts);
    return experts;
  }

  /// Tokens per chunk of the forward's elementwise passes (a multiple of every packet size).
  static constexpr Index chunk_tokens = 256;
  using Tile = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;

  /// The forward's elementwise work on tokens [j0, j1): noise, softplus, H, the clean softmax, the selection
  /// and the load's normal CDF, each as before over whole matrices (the noise continues rng's draws).
  void forward_chunk(Index j0, Index j1, Rng& rng, bool reuse) {
    const Index e = this->experts(), n = j1 - j0, k = this->k(), kk = m_order.rows();
    const auto cols = [&](Matrix<Scalar>& m) { return Tile(m.data() + j0 * e, e, n); };
    if (m_noisy_pass) {
      detail::standard_normals(rng, m_eps.data() + j0 * e, n * e);
      const Tile nlog = cols(m_nlog);
      cols(m_std) = nlog.max(Scalar(0)) + (-nlog.abs()).exp().log1p();  // softplus
      cols(m_h) = cols(m_clean) + cols(m_eps) * cols(m_std);
    }
    const Matrix<Scalar>& h = m_noisy_pass ? m_h : m_clean;
    detail::softmax_columns(m_clean, m_cprob, m_lse, j0, j1);  // for the z-loss and its gradient
    select(h, reuse, j0, j1);
    if (m_smooth_load) {
      // z = (c - threshold) / s with the threshold of each (expert, token); load = sum_t Phi(z)
      for (Index j = j0; j < j1; ++j) {
        const std::int32_t* ord = m_order.data() + j * kk;
        const Scalar thr_in = m_h(ord[k], j), thr_out = m_h(ord[k - 1], j);
        for (Index i = 0; i < e; ++i) m_z(i, j) = m_clean(i, j) - thr_out;
        for (Index i = 0; i < k; ++i) m_z(ord[i], j) = m_clean(ord[i], j) - thr_in;
      }
      Tile z = cols(m_z);
      z /= cols(m_std);
      cols(m_phi) = Scalar(0.5) + Scalar(0.5) * (z * Scalar(0.70710678118654752440)).erf();
    }
  }

  /// The top-(k+1) selection of columns [j_begin, j_end) of h (unless `reuse`: the frozen m_order) and the
  /// softmax over the k selected values (forward sums the importance afterwards). Vectorised across tokens, a packet of tokens at a time
  /// (one expert's values gathered across the packet's tokens): each expert is inserted into the sorted
  /// kept values by selects, where a per-token loop ran unpredictable branches (as costly as the rest of
  /// the forward's elementwise work). The last partial packet runs padded, so a token's results do not
  /// depend on the batch. Expert ids travel as Scalar lanes (exact: experts <= max_experts).
  void select(const Matrix<Scalar>& h, bool reuse, Index j_begin, Index j_end) {
    using namespace Eigen::internal;
    using P = detail::kernel::Packet<Scalar>;
    constexpr Index L = detail::kernel::lanes<Scalar>;
    auto& r = this->m_routing;
    const Index e = this->experts(), k = this->k(), kk = m_order.rows();
    m_pad.resize(e * L);
    P top[max_selection], at[max_selection];
    Scalar lane[max_selection][L];
    for (Index j = j_begin; j < j_end; j += L) {
      const Index n = std::min(L, j_end - j);
      const Scalar* hb = h.data() + j * e;
      if (n < L) {  // the last partial packet of tokens, padded with zeros
        m_pad.setZero();
        std::copy(hb, hb + n * e, m_pad.data());
        hb = m_pad.data();
      }
      if (!reuse) {  // insertion of expert i below the kept values >= its own (so ties keep the lower expert first)
        for (Index i = 0; i < e; ++i) {
          const P v = pgather<Scalar, P>(hb + i, e), a = pset1<P>(static_cast<Scalar>(i));
          P in = pset1<P>(Scalar(0)), up = v, up_at = a;  // in: i goes at or above slot q; up: what enters slot q
          for (Index q = 0; q < std::min(i, kk); ++q) {
            const P old = top[q], old_at = at[q];
            in = por(in, pcmp_lt(old, v));
            top[q] = pselect(in, up, old);
            at[q] = pselect(in, up_at, old_at);
            up = pselect(in, old, v);
            up_at = pselect(in, old_at, a);
          }
          if (i < kk) {
            top[i] = up;
            at[i] = up_at;
          }
        }
        for (Index q = 0; q < kk; ++q) {
          pstoreu(lane[q], at[q]);
          for (Index b = 0; b < n; ++b) m_order(q, j + b) = static_cast<std::int32_t>(lane[q][b]);
        }
      } else {  // the frozen selection's values (padded lanes: expert 0)
        for (Index q = 0; q < k; ++q) {
          for (Index b = 0; b < L; ++b) lane[q][b] = hb[b * e + (b < n ? m_order(q, j + b) : 0)];
          top[q] = ploadu<P>(lane[q]);
        }
      }
      // softmax over the k selected values (top[0] is the largest unless the selection is frozen)
      P m = top[0];
      for (Index q = 1; q < k; ++q) m = pmax(m, top[q]);
      P s = pset1<P>(Scalar(0));
      for (Index q = 0; q < k; ++q) {
        top[q] = pexp(psub(top[q], m));
        s = padd(s, top[q]);
      }
      const P inv = pdiv(pset1<P>(Scalar(1)), s);
      for (Index q = 0; q < k; ++q) {
        pstoreu(lane[q], pmul(top[q], inv));
        for (Index b = 0; b < n; ++b) {
          r.weights(q, j + b) = lane[q][b];
          r.indices(q, j + b) = m_order(q, j + b);
        }
      }
    }
  }

  bool m_noisy;
  bool m_noisy_pass = false, m_smooth_load = false;
  Matrix<Scalar> m_clean, m_nlog, m_eps, m_std, m_h, m_z, m_phi, m_cprob;
  Matrix<Scalar> m_dh, m_dclean, m_c, m_dn;
  IndexMatrix m_order;
  Vector<Scalar> m_lse, m_importance, m_load, m_gimp, m_gload, m_pad;
};

}  // namespace fedmoe
