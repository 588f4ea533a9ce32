#pragma once
/// @file apfl.hpp
/// @brief APFL (Deng, Kamani & Mahdavi 2020, "Adaptive personalized federated learning",
/// arXiv 2003.13461; Algorithm 1 with the adaptive mixing weight) as a client algorithm (see
/// local_training.hpp for the concept).
///
/// Client i keeps a personal model v_i and a mixing weight alpha_i in [0, 1] (its State; never
/// uploaded). The personalised model is the parameter interpolation
///
///     vbar_i = alpha_i v_i + (1 - alpha_i) w_i
///
/// of v_i and the client's local copy w_i of the global model. Each round, from the broadcast w, for
/// every mini-batch xi (one step t):
///
///     w_i     <- w_i - eta grad f_i(w_i; xi)                               (local training of the global copy)
///     v_i     <- v_i - eta grad_v f_i(vbar_i; xi)      = v_i - eta alpha_i grad f_i(vbar_i; xi)
///     alpha_i <- P_[0,1]( alpha_i - eta_alpha grad_alpha f_i(vbar_i; xi) ),
///                grad_alpha f_i(vbar_i; xi) = < v_i - w_i, grad f_i(vbar_i; xi) >
///
/// all three from the values before the step (the paper updates alpha every step, as here). The
/// steps of w and v go through copies of the optimizer prototypes (fresh each round; the paper uses
/// SGD), the step of alpha is plain projected SGD with rate `alpha_lr` (alpha_lr = 0 keeps alpha fixed,
/// the paper's fixed-alpha variant). The upload is delta = w_i - w, exactly LocalTraining's (bitwise:
/// the w steps are LocalTraining's, and the forward pass of vbar draws its dropout masks from a copy of
/// the stream, so the same masks as w's and no extra draws from it).
///
/// Defaults (fedmoe's choices, not the paper's prescription): alpha starts at 0.5, halfway between the
/// personal and the global model, and moves from there (the paper also studies fixed values of alpha);
/// alpha_lr = 1e-2. v_i starts, the first time the client is sampled, as that round's global model (the
/// paper starts every v_i at w^0). No regulariser on alpha is added.
///
/// Personal parameters after the federation (`personal_parameters`), with w the final global model:
/// - a client with state: alpha_i v_i + (1 - alpha_i) w, its v_i and alpha_i as left by its last
///   round (no further training);
/// - a client without state (never sampled, or opted out): post-hoc APFL with w frozen: v from w and
///   alpha from its initial value, trained by the v and alpha steps above for `post_hoc_epochs`, then
///   alpha v + (1 - alpha) w.
#include <algorithm>
#include <cmath>
#include <utility>

#include "common.hpp"

namespace fedmoe {

struct ApflConfig {
  LocalUpdateConfig local{};  ///< epochs and batch size per round (w and v step on the same batches)
  double alpha = 0.5;         ///< initial mixing weight, in [0, 1]
  double alpha_lr = 1e-2;     ///< SGD step size of alpha (>= 0; 0: alpha stays fixed)
  int post_hoc_epochs = 5;    ///< epochs of post-hoc APFL (w frozen) for a client without state
};

/// APFL's client state: the personal model v_i (empty until the client first trains) and alpha_i.
template <class S>
struct ApflState {
  Vector<S> personal;
  double alpha = 0;  ///< meaningful once `personal` is set
  template <class Ar>
  void serialize(Ar& ar) { ar.parameters("personal", personal)("alpha", alpha); }
};

/// The gradients of f(vbar), vbar = alpha v + (1 - alpha) w, at one batch (apfl_gradients).
template <class S>
struct ApflGradients {
  double loss = 0;      ///< f(vbar)
  Vector<S> personal;   ///< d f / d v = alpha grad f(vbar)
  double alpha = 0;     ///< d f / d alpha = < v - w, grad f(vbar) >
};

namespace detail {

/// alpha v + (1 - alpha) w.
template <class S>
Vector<S> apfl_mix(double alpha, const Vector<S>& v, const Vector<S>& w) {
  const S a = S(alpha);
  return a * v + (S(1) - a) * w;
}

/// With w in model.parameters() (on entry and on return): gbar = grad f(vbar) at vbar = alpha v +
/// (1 - alpha) w, written through the reused buffers `vbar` and `gbar`; returns f(vbar) (gbar is left
/// as it was when f(vbar) is non-finite). The vectors are swapped, never copied, into the model.
template <Model M, Loss L>
typename M::scalar_type apfl_mixed_gradient(M& model, L& loss, const Vector<typename M::scalar_type>& v, double alpha,
                                            const Matrix<typename M::scalar_type>& x, const Labels& y, Mode mode,
                                            Rng& rng, Vector<typename M::scalar_type>& vbar,
                                            Vector<typename M::scalar_type>& gbar) {
  using S = typename M::scalar_type;
  thread_local Matrix<S> grad;
  const S a = S(alpha);
  vbar = a * v + (S(1) - a) * model.parameters();
  struct SwapBack {  // back on every exit, a throw included: the model holds w again
    Vector<S>& a;
    Vector<S>& b;
    ~SwapBack() { a.swap(b); }
  };
  model.parameters().swap(vbar);  // the model holds vbar, the buffer w
  const SwapBack back{model.parameters(), vbar};
  const S value = loss.gradient(model.forward(x, mode, rng), y, grad);
  if (std::isfinite(double(value))) {
    model.backward(x, grad);
    gbar = model.gradients();
  }
  return value;
}

/// APFL's local loop (see apfl.hpp) from w = model.parameters(): `epochs` shuffled passes; with
/// `opt_w` null, w is frozen (post-hoc personalisation) and only v and alpha step. Returns the steps
/// taken (fewer if a loss became non-finite).
template <Model M, Optimizer O, Loss L>
Index apfl_local_steps(M& model, O* opt_w, O& opt_v, L& loss, const LocalData<typename M::scalar_type>& local,
                       const LocalUpdateConfig& config, Rng& rng, Vector<typename M::scalar_type>& v, double& alpha,
                       double alpha_lr) {
  using S = typename M::scalar_type;
  FEDMOE_CHECK(config.epochs >= 0, "APFL: expected epochs >= 0, got ", config.epochs);
  thread_local Matrix<S> grad;
  thread_local Labels flipped;
  thread_local Vector<S> gw, gv, gbar, vbar;
  Batcher<S> batcher(local.data, local.train, config.batch_size);
  Index steps = 0;
  for (int e = 0; e < config.epochs; ++e) {
    batcher.shuffle(rng);
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      const Matrix<S>& x = batcher.inputs();
      const Labels* y = &batcher.labels();
      if (local.flip_labels) {
        flipped = (local.data.classes - 1) - batcher.labels().array();
        y = &flipped;
      }
      S mixed_value;
      if (opt_w != nullptr) {
        Rng mixed_rng = rng;  // vbar's forward draws w's dropout masks, and nothing from rng itself
        const S value = loss.gradient(model.forward(x, Mode::train, rng), *y, grad);
        if (!std::isfinite(double(value))) return steps;  // the upload will be rejected as non-finite
        model.backward(x, grad);
        gw = model.gradients();
        mixed_value = apfl_mixed_gradient(model, loss, v, alpha, x, *y, Mode::train, mixed_rng, vbar, gbar);
      } else {
        mixed_value = apfl_mixed_gradient(model, loss, v, alpha, x, *y, Mode::train, rng, vbar, gbar);
      }
      if (!std::isfinite(double(mixed_value))) return steps;
      const double grad_alpha = double((v - model.parameters()).dot(gbar));
      gv = S(alpha) * gbar;
      if (opt_w != nullptr) opt_w->step(model.parameters(), gw);
      opt_v.step(v, gv);
      if (alpha_lr != 0 && std::isfinite(grad_alpha)) alpha = std::clamp(alpha - alpha_lr * grad_alpha, 0.0, 1.0);
      ++steps;
    }
  }
  return steps;
}

}  // namespace detail

/// The loss f(vbar) at one batch and its gradients with respect to v and alpha, vbar = alpha v +
/// (1 - alpha) w (`model` is the workspace; its parameters are left at w). What APFL's steps use.
template <Model M, Loss L>
ApflGradients<typename M::scalar_type> apfl_gradients(M& model, L& loss, const Vector<typename M::scalar_type>& w,
                                                      const Vector<typename M::scalar_type>& v, double alpha,
                                                      const Matrix<typename M::scalar_type>& x, const Labels& y,
                                                      Mode mode, Rng& rng) {
  using S = typename M::scalar_type;
  FEDMOE_CHECK(w.size() == model.num_params() && v.size() == model.num_params(), "apfl_gradients: expected w and v ",
               "of ", model.num_params(), " parameters (the model's), got ", w.size(), " and ", v.size());
  model.parameters() = w;
  Vector<S> vbar, gbar = Vector<S>::Zero(w.size());
  ApflGradients<S> out;
  out.loss = double(detail::apfl_mixed_gradient(model, loss, v, alpha, x, y, mode, rng, vbar, gbar));
  out.personal = S(alpha) * gbar;
  out.alpha = double((v - w).dot(gbar));
  return out;
}

/// APFL with optimizer `Opt` for w and v (separate copies, fresh each round) and loss `L`.
template <Optimizer Opt, Loss L = CrossEntropy<typename Opt::scalar_type>>
class Apfl {
public:
  using scalar_type = typename Opt::scalar_type;
  using State = ApflState<scalar_type>;
  static constexpr std::size_t uplink_extras = 0;

  /// One optimizer prototype for w and v.
  explicit Apfl(ApflConfig config = {}, Opt prototype = Opt(), L loss = L())
      : Apfl(config, prototype, prototype, std::move(loss)) {}
  Apfl(ApflConfig config, Opt global_prototype, Opt personal_prototype, L loss = L())
      : m_config(config), m_global_opt(std::move(global_prototype)), m_personal_opt(std::move(personal_prototype)),
        m_loss(std::move(loss)) {
    FEDMOE_CHECK(config.alpha >= 0 && config.alpha <= 1, "APFL: expected an initial alpha in [0, 1], got ",
                 config.alpha);
    FEDMOE_CHECK(std::isfinite(config.alpha_lr) && config.alpha_lr >= 0, "APFL: expected alpha_lr >= 0, got ",
                 config.alpha_lr);
    FEDMOE_CHECK(config.local.epochs >= 0 && config.post_hoc_epochs >= 0, "APFL: expected epochs >= 0, got local ",
                 config.local.epochs, ", post-hoc ", config.post_hoc_epochs);
  }

  template <Model M>
  ClientUpdate<scalar_type> train(M& model, const GlobalView<scalar_type>& global, const LocalData<scalar_type>& data,
                                  State& state, Rng& rng) const {
    detail::start_from(model, global);
    if (state.personal.size() == 0) {
      state.personal = global.parameters;
      state.alpha = m_config.alpha;
    }
    check_state(state, model.num_params());
    Opt opt_w = m_global_opt, opt_v = m_personal_opt;
    opt_w.reset();
    opt_v.reset();
    L loss = m_loss;
    detail::apfl_local_steps(model, &opt_w, opt_v, loss, data, m_config.local, rng, state.personal, state.alpha,
                             m_config.alpha_lr);
    return detail::make_update(model.parameters(), global.parameters, Index(data.train.size()));
  }
  std::vector<Vector<scalar_type>> downlink(Index) const { return {}; }
  void absorb(std::span<const ClientUpdate<scalar_type>>, Index) {}

  /// alpha_i v_i + (1 - alpha_i) w: the client's personalised model for a given w.
  Vector<scalar_type> personalized(const State& state, const Vector<scalar_type>& w) const {
    check_state(state, w.size());
    return detail::apfl_mix(state.alpha, state.personal, w);
  }

  /// The client's personal model for the final global `global` (see the file).
  template <Model M>
  Vector<scalar_type> personal_parameters(M& workspace, const Vector<scalar_type>& global, const State& state,
                                          const LocalData<scalar_type>& data, Rng& rng) const {
    FEDMOE_CHECK(global.size() == workspace.num_params(), "APFL: expected a global model of ",
                 workspace.num_params(), " parameters (the workspace's), got ", global.size());
    if (state.personal.size() != 0) return personalized(state, global);
    workspace.parameters() = global;
    State fresh{global, m_config.alpha};
    Opt opt_v = m_personal_opt;
    opt_v.reset();
    L loss = m_loss;
    detail::apfl_local_steps(workspace, static_cast<Opt*>(nullptr), opt_v, loss, data,
                             LocalUpdateConfig{m_config.post_hoc_epochs, m_config.local.batch_size}, rng,
                             fresh.personal, fresh.alpha, m_config.alpha_lr);
    return personalized(fresh, global);
  }

  const ApflConfig& config() const { return m_config; }

private:
  static void check_state(const State& state, Index p) {
    FEDMOE_CHECK(state.personal.size() == p, "APFL: expected a personal model of ", p, " parameters, got ",
                 state.personal.size());
    FEDMOE_CHECK(state.alpha >= 0 && state.alpha <= 1, "APFL: expected alpha in [0, 1] in the client's state, got ",
                 state.alpha);
  }

  ApflConfig m_config;
  Opt m_global_opt, m_personal_opt;
  L m_loss;
};

}  // namespace fedmoe
