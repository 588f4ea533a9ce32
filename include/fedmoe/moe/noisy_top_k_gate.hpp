#pragma once
/// @file noisy_top_k_gate.hpp
/// @brief Noisy top-k gating with importance and load losses (Shazeer et al. 2017,
/// "Outrageously large neural networks: the sparsely-gated mixture-of-experts layer").
///
/// Clean logits c = W_g x + b_g, noise scale s = softplus(W_n x + b_n) (experts x tokens).
/// In Mode::train (and when constructed noisy): H = c + eps ⊙ s with eps ~ N(0, 1) drawn from
/// the caller's Rng in column-major order (token by token, experts 0..E-1); otherwise H = c.
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
#include "gate.hpp"

namespace fedmoe {

template <class Scalar = float>
class NoisyTopKGate : public detail::LinearGate<Scalar> {
public:
  using scalar_type = Scalar;

  /// Two routers of the same shape: the gate router (the base's) then the noise router m_n.
  NoisyTopKGate(Index width, Index experts, Index k, bool noisy = true)
      : detail::LinearGate<Scalar>("NoisyTopKGate", width, experts, k, 2), m_n{width, experts}, m_noisy(noisy) {
    FEDMOE_CHECK(k >= 1 && k <= experts, "NoisyTopKGate: expected 1 <= k <= experts (", experts, "), got k = ", k);
  }

  Index k() const { return this->slots(); }
  /// W_g, b_g like nn.Linear; W_n, b_n zero (noise scale softplus(0) = log 2 at the start).
  void init(Rng& rng) {
    detail::LinearGate<Scalar>::init(rng);
    this->m_params.tail(m_n.num_params()).setZero();
  }

  template <class In>
  const Routing<Scalar>& forward(const In& x, Mode mode, Rng& rng) {
    const bool reuse = this->begin_forward(x);
    auto& r = this->m_routing;
    const Index e = this->experts(), t = x.cols(), k = this->k(), kk = std::min(k + 1, e);
    m_noisy_pass = m_noisy && mode == Mode::train;
    this->router_forward(x, m_clean);
    if (m_noisy_pass) {
      m_n.forward(this->m_params.data() + this->m_router.num_params(), x, m_nlog);
      m_eps.resize(e, t);
      m_std.resize(e, t);
      m_h.resize(e, t);
      for (Index i = 0; i < e * t; ++i) {
        const Scalar nl = m_nlog.data()[i];
        const Scalar sd = std::max(nl, Scalar(0)) + std::log1p(std::exp(-std::abs(nl)));
        const Scalar ep = static_cast<Scalar>(rng.normal());
        m_eps.data()[i] = ep;
        m_std.data()[i] = sd;
        m_h.data()[i] = m_clean.data()[i] + ep * sd;
      }
    }
    const Matrix<Scalar>& h = m_noisy_pass ? m_h : m_clean;
    m_order.resize(kk, t);
    m_lse.resize(t);
    m_importance.setZero(e);
    double z = 0;
    for (Index j = 0; j < t; ++j) {
      const Scalar* hc = h.data() + j * e;
      std::int32_t* ord = m_order.data() + j * kk;
      if (!reuse) {  // fused top-(k+1) selection by insertion (kk is small)
        Index n = 0;
        for (Index i = 0; i < e; ++i) {
          const Scalar v = hc[i];
          if (n == kk && !(v > hc[ord[kk - 1]])) continue;
          Index pos = n < kk ? n++ : kk - 1;
          while (pos > 0 && v > hc[ord[pos - 1]]) {
            ord[pos] = ord[pos - 1];
            --pos;
          }
          ord[pos] = static_cast<std::int32_t>(i);
        }
      }
      // softmax over the k selected values (ord[0] is the largest unless the selection is frozen)
      Scalar m = hc[ord[0]];
      for (Index i = 1; i < k; ++i) m = std::max(m, hc[ord[i]]);
      Scalar s = 0;
      for (Index i = 0; i < k; ++i) {
        const Scalar w = std::exp(hc[ord[i]] - m);
        r.weights(i, j) = w;
        s += w;
      }
      const Scalar inv = Scalar(1) / s;
      for (Index i = 0; i < k; ++i) {
        r.weights(i, j) *= inv;
        r.indices(i, j) = ord[i];
        m_importance[ord[i]] += r.weights(i, j);
      }
      // log-sum-exp of the clean logits for the z-loss
      const Scalar* cc = m_clean.data() + j * e;
      Scalar cm = cc[0];
      for (Index i = 1; i < e; ++i) cm = std::max(cm, cc[i]);
      Scalar cs = 0;
      for (Index i = 0; i < e; ++i) cs += std::exp(cc[i] - cm);
      m_lse[j] = cm + std::log(cs);
      z += double(m_lse[j]) * double(m_lse[j]);
    }
    m_load.setZero(e);
    m_smooth_load = m_noisy_pass && k < e;
    if (m_smooth_load) {
      m_z.resize(e, t);
      m_rank.resize(e);
      for (Index j = 0; j < t; ++j) {
        const std::int32_t* ord = m_order.data() + j * kk;
        m_rank.setConstant(-1);
        for (Index i = 0; i < k; ++i) m_rank[ord[i]] = static_cast<std::int32_t>(i);
        const Scalar thr_in = m_h(ord[k], j), thr_out = m_h(ord[k - 1], j);
        for (Index i = 0; i < e; ++i) {
          const Scalar zz = (m_clean(i, j) - (m_rank[i] >= 0 ? thr_in : thr_out)) / m_std(i, j);
          m_z(i, j) = zz;
          m_load[i] += Scalar(0.5) * std::erfc(-zz * Scalar(0.70710678118654752440));
        }
      }
    } else {
      for (Index i = 0; i < k * t; ++i) m_load[r.indices.data()[i]] += Scalar(1);
    }
    r.aux = {};
    r.aux.importance = detail::cv_squared(m_importance);
    r.aux.load = detail::cv_squared(m_load);
    r.aux.z = static_cast<Scalar>(z / static_cast<double>(t));
    r.capacity = t;
    r.dropped = 0;
    r.build_dispatch();
    this->m_has_selection = true;
    return r;
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
    m_dh.setZero(e, t);
    for (Index j = 0; j < t; ++j) {
      const std::int32_t* ord = m_order.data() + j * kk;
      auto dg = [&](Index i) { return Scalar(d_weights(i, j)) + (imp ? m_gimp[ord[i]] : Scalar(0)); };
      Scalar dot = 0;  // softmax backward over the k selected values
      for (Index i = 0; i < k; ++i) dot += r.weights(i, j) * dg(i);
      for (Index i = 0; i < k; ++i) m_dh(ord[i], j) += r.weights(i, j) * (dg(i) - dot);
    }
    const Scalar zc = aux.z * Scalar(2) / static_cast<Scalar>(t);
    m_dclean.resize(e, t);
    if (m_noisy_pass) m_dstd.setZero(e, t);
    if (m_smooth_load && aux.load != Scalar(0)) {
      detail::cv_squared_gradient(m_load, m_gload);
      m_gload *= aux.load;
      m_dclean.setZero();
      for (Index j = 0; j < t; ++j) {
        const std::int32_t* ord = m_order.data() + j * kk;
        m_rank.setConstant(-1);
        for (Index i = 0; i < k; ++i) m_rank[ord[i]] = static_cast<std::int32_t>(i);
        for (Index i = 0; i < e; ++i) {
          const Scalar zz = m_z(i, j), sd = m_std(i, j);
          const Scalar phi = Scalar(0.39894228040143267794) * std::exp(Scalar(-0.5) * zz * zz);
          const Scalar c = m_gload[i] * phi / sd;
          m_dclean(i, j) += c;
          m_dh(m_rank[i] >= 0 ? ord[k] : ord[k - 1], j) -= c;
          m_dstd(i, j) -= c * zz;
        }
      }
      m_dclean += m_dh;
    } else {
      m_dclean = m_dh;
    }
    if (zc != Scalar(0)) {
      for (Index j = 0; j < t; ++j)
        for (Index i = 0; i < e; ++i) m_dclean(i, j) += zc * m_lse[j] * std::exp(m_clean(i, j) - m_lse[j]);
    }
    this->router_backward(x, m_dclean, input_grad);
    if (m_noisy_pass) {
      // ds = dH ⊙ eps + dstd; d(noise logits) = ds ⊙ sigmoid(noise logits)
      m_dn.resize(e, t);
      for (Index i = 0; i < e * t; ++i) {
        const Scalar nl = m_nlog.data()[i];
        m_dn.data()[i] = (m_dh.data()[i] * m_eps.data()[i] + m_dstd.data()[i]) / (Scalar(1) + std::exp(-nl));
      }
      const Index off = this->m_router.num_params();  // the noise router follows the gate router
      m_n.backward(this->m_params.data() + off, x, m_dn, this->m_grads.data() + off, input_grad ? &this->m_dx : nullptr,
                   true);
    } else {
      this->m_grads.tail(m_n.num_params()).setZero();
    }
    return this->m_dx;
  }

  /// The selected H values' experts in descending order plus the threshold expert: (min(k+1, E) x T).
  const IndexMatrix& order() const { return m_order; }
  /// Gate values H of the last forward (noisy in training).
  const Matrix<Scalar>& values() const { return m_noisy_pass ? m_h : m_clean; }
  const Matrix<Scalar>& clean_logits() const { return m_clean; }

private:
  detail::LinearRouter<Scalar> m_n;
  bool m_noisy;
  bool m_noisy_pass = false, m_smooth_load = false;
  Matrix<Scalar> m_clean, m_nlog, m_eps, m_std, m_h, m_z;
  Matrix<Scalar> m_dh, m_dclean, m_dstd, m_dn;
  IndexMatrix m_order;
  IndexVector m_rank;
  Vector<Scalar> m_lse, m_importance, m_load, m_gimp, m_gload;
};

}  // namespace fedmoe
