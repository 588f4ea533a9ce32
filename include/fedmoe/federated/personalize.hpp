#pragma once
/// @file personalize.hpp
/// @brief Per-client personalisation and evaluation: the local specialist, the fine-tuned global
/// model and mixtures of experts, each trained on the client's own data with early stopping on
/// validation data (restoring the best weights), every method reported by name (client_result.hpp).
///
/// Works for every client, opted out or not: personalisation only downloads the global model.
/// Nothing here uploads: the specialist, the fine-tuned copy and the gates live in the caller's
/// workspace (the client's) and never reach a Transport.
///
/// The mixtures (personal_methods lists them) differ in the data their gate learns from. The
/// paper's `mixture` trains gate and specialist expert jointly on the training data, where the
/// expert has just been fitted and is right almost everywhere: its gate learns to trust the expert
/// everywhere, also on inputs of classes the client rarely sees (PAPER.md; the README measures it).
/// The `mixture-heldout` and `mixture-stacked*` variants freeze the experts first and train the gate
/// on validation data the experts never trained on (half of it; the other half early-stops the gate),
/// where the global expert is right on the classes the fine-tuned one forgot. `mixture-stacked*`
/// gate on the experts' log-probabilities instead of the pixels (a linear softmax gate: 2 x 10 + 1
/// weights per expert), which a few hundred samples suffice to fit (stacked generalisation, Wolpert
/// 1992).
///
/// Gate diagnostics, per mixture: `mean_gate_local` and `mean_gate_global` (the mean weight of the
/// non-global experts on the local and on the global test inputs) and `gate_auc` (the AUC of that
/// weight for telling global-test inputs of the client's majority classes from the others; NaN when
/// the partition has no majority classes), and the histograms `gate_hist_majority` /
/// `gate_hist_other` of that weight on the global test set (gate_histogram_bins bins over [0, 1]).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "../moe/expert_mixture.hpp"
#include "../moe/label_shift_gate.hpp"
#include "../moe/mixture.hpp"
#include "../moe/softmax_gate.hpp"
#include "../optimizers/adam.hpp"
#include "../training/metrics.hpp"
#include "client.hpp"
#include "client_result.hpp"

namespace fedmoe {

/// Where the paper mixture's specialist expert starts.
enum class ExpertInit {
  finetuned,  ///< a copy of the client's fine-tuned global model
  scratch,    ///< a freshly initialised model
};
inline const char* to_string(ExpertInit e) { return e == ExpertInit::finetuned ? "finetuned" : "scratch"; }

/// A personalisation method: its name (in --methods and in the JSON) and what it is.
struct PersonalMethod {
  const char* name;
  const char* description;
  bool held_out = false;  ///< its gate trains on validation data: needs some
};
inline constexpr PersonalMethod personal_methods[] = {
    {"global", "the global model as downloaded"},
    {"specialist", "a model trained from scratch on the client's training data alone"},
    {"finetuned", "the global model trained further on the client's training data"},
    {"mixture",
     "the paper's mixture: the gate on the sample and the specialist expert trained jointly on the training data, "
     "the global expert frozen"},
    {"mixture-heldout",
     "experts frozen (fine-tuned, global); the paper's gate on the sample trained on half of the validation data, "
     "early-stopped on the other half",
     true},
    {"mixture-stacked",
     "experts frozen (fine-tuned, global); a linear softmax gate on the experts' log-probabilities, trained and "
     "early-stopped as mixture-heldout",
     true},
    {"mixture-stacked3", "as mixture-stacked over three experts: specialist, fine-tuned and global", true},
    {"mixture-prior",
     "experts frozen (fine-tuned, global); the label-shift gate (moe/label_shift_gate.hpp) at its prior, "
     "h = sigmoid((log r_ft(x) + log r_g(x)) / 2): r the ratio of the client's input density to the "
     "federation's from the client's label histogram and each expert's prediction; nothing trained"},
    {"mixture-shift", "as mixture-prior, its 3 parameters trained and early-stopped as mixture-heldout", true},
};
inline const PersonalMethod* find_personal_method(std::string_view name) {
  for (const PersonalMethod& m : personal_methods)
    if (name == m.name) return &m;
  return nullptr;
}

inline constexpr int gate_histogram_bins = 20;

struct PersonalizeConfig {
  FitConfig fit{};                ///< paper: up to 500 epochs, check every 5, patience 10
  double lr_specialist = 1e-3;
  double lr_finetune = 1e-4;
  double lr_gate = 1e-3;           ///< the gates of every mixture
  double lr_expert = 0;            ///< the paper mixture's specialist expert; 0: lr_finetune or lr_specialist by expert_init
  ExpertInit expert_init = ExpertInit::finetuned;
  double gate_split = 0.5;         ///< held-out gates: the fraction of the validation data they train on
  std::vector<std::string> methods{"global", "specialist", "finetuned", "mixture"};
  std::uint64_t seed = 1;

  /// Throws unless every method is known, the split leaves data on both sides, and the rates are positive.
  void validate() const {
    for (const std::string& m : methods)
      FEDMOE_CHECK(find_personal_method(m) != nullptr, "personalize: unknown method '", m, "'");
    FEDMOE_CHECK(gate_split > 0 && gate_split < 1, "personalize: expected a gate split in (0, 1), got ", gate_split);
    FEDMOE_CHECK(lr_specialist > 0 && lr_finetune > 0 && lr_gate > 0 && lr_expert >= 0,
                 "personalize: expected learning rates > 0, got ", lr_specialist, ", ", lr_finetune, ", ", lr_gate,
                 " and ", lr_expert);
  }
  bool wants(std::string_view m) const { return std::find(methods.begin(), methods.end(), m) != methods.end(); }
};

/// A client's trained specialist, kept by the caller to reuse in every setting that shares the client's
/// data. The specialist depends only on the client's data split, the seed and the specialist's fit
/// configuration (lr_specialist, fit): not on the federation, the opt-out set or the global model. A
/// sweep over opt-out fractions at one p can therefore train each specialist once; the reused one is
/// bitwise the one personalize() would train. The caller guarantees that the client and those settings
/// are the same.
template <class S>
struct TrainedSpecialist {
  Vector<S> parameters;  ///< empty: not trained yet (personalize() fills it)
  FitResult fit;
};

/// Seconds spent per phase, by name, in the order first seen (personalize(): specialist, finetuned,
/// mixture, held_out_gates, evaluation; callers add their own phases).
struct PhaseTimes {
  std::vector<std::pair<std::string, double>> phases;
  void add(std::string_view name, double seconds) {
    for (auto& [n, s] : phases)
      if (n == name) {
        s += seconds;
        return;
      }
    phases.emplace_back(std::string(name), seconds);
  }
  void add(const PhaseTimes& other) {
    for (const auto& [n, s] : other.phases) add(n, s);
  }
  double operator[](std::string_view name) const {
    for (const auto& [n, s] : phases)
      if (n == name) return s;
    return 0;
  }
};

namespace detail {
/// Adds the seconds since `start` to `times[name]` (if given) and restarts the clock.
inline void lap(PhaseTimes* times, std::string_view name, std::chrono::steady_clock::time_point& start) {
  const auto now = std::chrono::steady_clock::now();
  if (times) times->add(name, std::chrono::duration<double>(now - start).count());
  start = now;
}
}  // namespace detail

/// The models one personalisation trains (every thread keeps one, reused across clients): copies of
/// the global architecture M and of the paper's gate G.
template <Model M, Model G>
struct PersonalWorkspace {
  M specialist, finetuned, expert;  ///< expert: the paper mixture's specialist expert
  G gate, heldout_gate;
  PersonalWorkspace(const M& model, const G& gate_model)
      : specialist(model), finetuned(model), expert(model), gate(gate_model), heldout_gate(gate_model) {}
};

namespace detail {

/// Samples with their frozen experts' log-probabilities, computed once (stacking).
template <class S, std::size_t K>
struct CachedSamples {
  Matrix<S> x;  ///< the samples (empty when the gate does not read them)
  std::array<Matrix<S>, K> log_probs;
  Labels y;
};

template <class S, std::size_t K, class... E>
CachedSamples<S, K> cache_samples(const Dataset<S>& data, std::span<const Index> idx, bool keep_x, E&... experts) {
  CachedSamples<S, K> c;
  gather_samples(data, idx, c.x, c.y);
  std::size_t k = 0;
  (log_softmax(experts.forward(c.x), c.log_probs[k++]), ...);
  if (!keep_x) c.x.resize(c.x.rows(), 0);
  return c;
}

template <class S, std::size_t K>
void gather_cached(const CachedSamples<S, K>& from, std::span<const Index> cols, CachedSamples<S, K>& to) {
  const auto pick = [&](const Matrix<S>& m, Matrix<S>& out) {
    out.resize(m.rows(), Index(cols.size()));
    if (m.cols() == 0) return out.resize(m.rows(), 0);
    for (std::size_t j = 0; j < cols.size(); ++j) out.col(Index(j)) = m.col(cols[j]);
  };
  pick(from.x, to.x);
  for (std::size_t k = 0; k < K; ++k) pick(from.log_probs[k], to.log_probs[k]);
  to.y.resize(Index(cols.size()));
  for (std::size_t j = 0; j < cols.size(); ++j) to.y[Index(j)] = from.y[cols[j]];
}

/// Trains the gate of `mix` (every expert frozen, outputs cached) on `train` with early stopping on `val`.
template <class Mix, class S, std::size_t K>
FitResult fit_gate_cached(Mix& mix, const CachedSamples<S, K>& train, const CachedSamples<S, K>& val,
                          const FitConfig& config, double lr, Rng& rng) {
  Adam<S> opt(lr);
  const Index n = train.y.size();
  std::vector<Index> order(static_cast<std::size_t>(n));
  for (Index j = 0; j < n; ++j) order[std::size_t(j)] = j;
  CachedSamples<S, K> batch;
  auto epoch = [&] {
    rng.shuffle(order.begin(), order.end());
    for (Index b = 0; b < n; b += config.batch_size) {
      const std::size_t len = std::size_t(std::min(config.batch_size, n - b));
      gather_cached(train, std::span<const Index>(order).subspan(std::size_t(b), len), batch);
      const S loss = mix.gate_loss_and_gradient_cached(batch.x, batch.log_probs, batch.y, Mode::train, rng);
      FEDMOE_CHECK(std::isfinite(double(loss)), "fit_gate: the mixture loss became non-finite (", loss, ")");
      opt.step(mix.gate().parameters(), mix.gate().gradients());
    }
  };
  Rng unused(0);
  return early_stopped_loop<S>(
      config, epoch, [&] { return double(mix.loss_cached(val.x, val.log_probs, val.y, Mode::eval, unused)); },
      {std::ref(mix.gate().parameters())});
}

/// Accumulates a mixture's evaluation: correct predictions and the non-global weight of every sample.
struct GateTally {
  Index correct = 0, samples = 0;
  double weight_sum = 0;
  std::vector<double> scores;  ///< per sample, when kept (the global test set)

  template <class P, class W>
  void add(const P& probs, const Labels& y, const W& weights, bool keep) {
    for (Index j = 0; j < y.size(); ++j) {
      correct += argmax_col(probs, j) == y[j];
      const double w = 1.0 - double(weights(weights.rows() - 1, j));  // the global expert is the last
      weight_sum += w;
      if (keep) scores.push_back(w);
    }
    samples += y.size();
  }
  double accuracy() const { return samples ? double(correct) / double(samples) : 0.0; }
  double mean_weight() const { return samples ? weight_sum / double(samples) : 0.0; }
};

inline std::vector<double> histogram(const std::vector<double>& scores, const std::vector<std::uint8_t>& in,
                                     bool positive) {
  std::vector<double> h(std::size_t(gate_histogram_bins), 0.0);
  for (std::size_t j = 0; j < scores.size(); ++j)
    if (bool(in[j]) == positive) {
      const double s = std::clamp(scores[j], 0.0, 1.0);  // weights are in [0, 1]; 1 - w may round below 0
      h[std::min(std::size_t(gate_histogram_bins - 1), std::size_t(s * gate_histogram_bins))] += 1;
    }
  return h;
}

inline void set_fit(MethodResult& m, const FitResult& f) {
  m.set("epochs", f.epochs);
  m.set("best_epoch", f.best_epoch);
  m.set("best_val_loss", f.best_val_loss);
}

}  // namespace detail

/// Trains the paper's mixture (gate + specialist expert; global frozen) on train with early stopping on val.
/// The gate and the expert have their own Adam (and learning rate). With an empty `val`, every epoch runs
/// and the last weights are kept (FitResult::validated false).
template <class Mix>
FitResult fit_mixture(Mix& mix, const Dataset<typename Mix::scalar_type>& data, std::span<const Index> train,
                      std::span<const Index> val, const FitConfig& config, double lr_gate, double lr_expert,
                      Rng& rng) {
  using S = typename Mix::scalar_type;
  check_sample_shape("fit_mixture", mix.input_shape(), data.shape);
  Adam<S> gate_opt(lr_gate), spec_opt(lr_expert);
  Batcher<S> batcher(data, train, config.batch_size);
  auto epoch = [&] {
    batcher.shuffle(rng);
    for (Index b = 0; b < batcher.num_batches(); ++b) {
      batcher.gather(b);
      const S loss = mix.loss_and_gradient(batcher.inputs(), batcher.labels(), Mode::train, rng);
      FEDMOE_CHECK(std::isfinite(double(loss)), "fit_mixture: the mixture loss became non-finite (", loss, ")");
      gate_opt.step(mix.gate().parameters(), mix.gate().gradients());
      spec_opt.step(mix.specialist().parameters(), mix.specialist().gradients());
    }
  };
  if (val.empty()) {
    for (int e = 0; e < config.max_epochs; ++e) epoch();
    return unvalidated_fit(config.max_epochs);
  }
  Matrix<S> vx;
  Labels vy;
  gather_samples(data, val, vx, vy);
  Rng unused(0);
  return early_stopped_loop<S>(config, epoch, [&] { return double(mix.loss(vx, vy, Mode::eval, unused)); },
                               {std::ref(mix.gate().parameters()), std::ref(mix.specialist().parameters())});
}

/// Personalises one client with every method of `config.methods` and evaluates each on the client's
/// local test set and on the global test set (`global_test_idx` into `test_data`, the same for every
/// client). `global_model` holds the final global parameters (read only); `ws` is the calling thread's
/// workspace (its parameters are overwritten). `global_model_global_acc`: the global model's accuracy on
/// the global test set (the same for every client, computed once by the caller).
///
/// `specialist` (optional): the client's TrainedSpecialist from an earlier setting with the same data,
/// used instead of training one; when it is empty, the specialist trained here is stored in it.
/// `times` (optional): the seconds of each phase are added to it.
template <Model M, Model G, class S = typename M::scalar_type>
ClientResult personalize(const Client<S>& client, const M& global_model, PersonalWorkspace<M, G>& ws,
                         const Dataset<S>& test_data, std::span<const Index> global_test_idx,
                         const PersonalizeConfig& config, const double global_model_global_acc,
                         TrainedSpecialist<S>* specialist = nullptr, PhaseTimes* times = nullptr) {
  auto clock = std::chrono::steady_clock::now();
  config.validate();
  for (const M* m : {&ws.specialist, &ws.finetuned, &ws.expert})
    FEDMOE_CHECK(m->num_params() == global_model.num_params(), "personalize: expected a workspace of ",
                 global_model.num_params(), " parameters (the global architecture), got ", m->num_params());
  const Dataset<S>& train_data = client.train_data();
  const ClientSplit& split = client.split();
  const auto wants = [&](std::string_view m) { return config.wants(m); };
  bool held_out = false;
  for (const std::string& m : config.methods) held_out = held_out || find_personal_method(m)->held_out;
  FEDMOE_CHECK(!held_out || split.val.size() >= 2, "personalize: the held-out mixtures train their gate on ",
               "validation data and early-stop it on more: expected at least 2 validation samples, client ",
               client.id(), " has ", split.val.size());
  auto rng_for = [&](std::uint64_t purpose) {
    return Rng::stream(config.seed, (std::uint64_t(client.id()) << 8) + purpose + (1ULL << 40));
  };
  M global = global_model;  // the downloaded copy (frozen)
  const bool need_spec = wants("specialist") || wants("mixture-stacked3");
  const bool need_ft = wants("finetuned") || wants("mixture-heldout") || wants("mixture-stacked") ||
                       wants("mixture-stacked3") || wants("mixture-shift") || wants("mixture-prior") ||
                       (wants("mixture") && config.expert_init == ExpertInit::finetuned);
  FitResult spec_fit, ft_fit, mix_fit, heldout_fit, stacked_fit, stacked3_fit, shift_fit;

  if (need_spec && specialist && specialist->parameters.size() > 0) {  // trained in an earlier setting
    FEDMOE_CHECK(specialist->parameters.size() == ws.specialist.num_params(), "personalize: expected a reused ",
                 "specialist of ", ws.specialist.num_params(), " parameters, got ", specialist->parameters.size());
    ws.specialist.parameters() = specialist->parameters;
    spec_fit = specialist->fit;
  } else if (need_spec) {  // from scratch, local data only
    Rng rng = rng_for(1);
    ws.specialist.init(rng);
    Adam<S> opt(config.lr_specialist);
    spec_fit = fit(ws.specialist, opt, train_data, split.train, split.val, config.fit, rng);
    if (specialist) *specialist = TrainedSpecialist<S>{ws.specialist.parameters(), spec_fit};
  }
  detail::lap(times, "specialist", clock);
  if (need_ft) {  // the global model trained further on local data
    Rng rng = rng_for(2);
    ws.finetuned.parameters() = global.parameters();
    Adam<S> opt(config.lr_finetune);
    ft_fit = fit(ws.finetuned, opt, train_data, split.train, split.val, config.fit, rng);
  }
  detail::lap(times, "finetuned", clock);

  // The paper's mixture: gate from scratch; specialist expert from the fine-tuned model or from scratch.
  Mixture joint(ws.gate, ws.expert, global);
  if (wants("mixture")) {
    Rng rng = rng_for(3);
    ws.gate.init(rng);
    if (config.expert_init == ExpertInit::scratch) ws.expert.init(rng);
    else ws.expert.parameters() = ws.finetuned.parameters();
    const double lr_expert = config.lr_expert > 0                              ? config.lr_expert
                             : config.expert_init == ExpertInit::finetuned ? config.lr_finetune
                                                                           : config.lr_specialist;
    mix_fit = fit_mixture(joint, train_data, split.train, split.val, config.fit, config.lr_gate, lr_expert, rng);
  }
  detail::lap(times, "mixture", clock);

  // Held-out gates: the validation data in two halves (a seeded split), the experts frozen.
  ProbabilityGate<ModelRef<G>> heldout_adapter{ModelRef<G>(ws.heldout_gate)};
  ExpertMixture heldout(heldout_adapter, ws.finetuned, global);
  SoftmaxGate<S> stacked_gate(2 * global.output_size(), 2), stacked3_gate(3 * global.output_size(), 3);
  ExpertMixture stacked(GateInput::expert_log_probs, stacked_gate, ws.finetuned, global);
  ExpertMixture stacked3(GateInput::expert_log_probs, stacked3_gate, ws.specialist, ws.finetuned, global);
  std::vector<double> counts(std::size_t(global.output_size()), 0.0);
  for (const Index i : split.train) {
    const std::int32_t y = train_data.labels[i];
    FEDMOE_CHECK(y >= 0 && Index(y) < global.output_size(), "personalize: expected labels in [0, ",
                 global.output_size(), "), got ", y);
    counts[std::size_t(y)] += 1;
  }
  // The label-shift gates: mixture-prior keeps the initial parameters, mixture-shift trains them.
  ProbabilityGate<LabelShiftGate<S>> prior_gate{LabelShiftGate<S>(
      {ExpertPrior::client, ExpertPrior::federation}, LabelShiftGate<S>::log_weights_from_counts(counts))};
  ProbabilityGate<LabelShiftGate<S>> shift_gate = prior_gate;
  ExpertMixture prior(GateInput::expert_log_probs, prior_gate, ws.finetuned, global);
  ExpertMixture shift(GateInput::expert_log_probs, shift_gate, ws.finetuned, global);
  heldout.freeze_experts();
  stacked.freeze_experts();
  stacked3.freeze_experts();
  prior.freeze_experts();
  shift.freeze_experts();
  if (held_out) {
    std::vector<Index> val(split.val.begin(), split.val.end());
    Rng srng = rng_for(4);
    srng.shuffle(val.begin(), val.end());
    const std::size_t n_fit = std::clamp<std::size_t>(std::size_t(std::llround(config.gate_split * double(val.size()))),
                                                      1, val.size() - 1);
    const std::span<const Index> fit_idx(val.data(), n_fit), stop_idx(val.data() + n_fit, val.size() - n_fit);
    // Each held-out gate starts from its own stream, trains against the frozen experts' outputs on
    // fit_idx (computed once) and early-stops on stop_idx.
    const auto fit_frozen = [&](auto& mix, std::uint64_t purpose, auto&... experts) {
      constexpr std::size_t K = sizeof...(experts);
      const bool keep_x = mix.gate_input() == GateInput::sample;
      const auto tr = detail::cache_samples<S, K>(train_data, fit_idx, keep_x, experts...);
      const auto va = detail::cache_samples<S, K>(train_data, stop_idx, keep_x, experts...);
      Rng rng = rng_for(purpose);
      mix.gate().init(rng);
      return detail::fit_gate_cached(mix, tr, va, config.fit, config.lr_gate, rng);
    };
    if (wants("mixture-heldout")) heldout_fit = fit_frozen(heldout, 5, ws.finetuned, global);
    if (wants("mixture-stacked")) stacked_fit = fit_frozen(stacked, 6, ws.finetuned, global);
    if (wants("mixture-stacked3")) stacked3_fit = fit_frozen(stacked3, 7, ws.specialist, ws.finetuned, global);
    if (wants("mixture-shift")) shift_fit = fit_frozen(shift, 8, ws.finetuned, global);
  }
  detail::lap(times, "held_out_gates", clock);

  // Evaluation, in chunks: every frozen expert's log-probabilities once per chunk, shared by the methods.
  constexpr std::size_t n_methods = std::size(personal_methods);
  struct Tallies {
    std::array<detail::GateTally, n_methods> t;
  };
  const auto method_index = [](std::string_view m) { return std::size_t(find_personal_method(m) - personal_methods); };
  const auto run_set = [&](std::span<const Index> idx, bool keep, std::vector<std::int32_t>* all_labels) {
    Tallies tl;
    std::array<Matrix<S>, 3> lp;  // specialist, finetuned, global
    Matrix<S> x, ones;
    Labels y;
    Rng unused(0);
    for (std::size_t b = 0; b < idx.size(); b += 500) {
      gather_samples(test_data, idx.subspan(b, std::min<std::size_t>(500, idx.size() - b)), x, y);
      if (all_labels) all_labels->insert(all_labels->end(), y.data(), y.data() + y.size());
      ones.setOnes(1, y.size());
      detail::log_softmax(global.forward(x), lp[2]);
      if (need_ft) detail::log_softmax(ws.finetuned.forward(x), lp[1]);
      if (need_spec) detail::log_softmax(ws.specialist.forward(x), lp[0]);
      // A single model: its weight on the non-global experts is 1 (specialist, fine-tuned) or 0 (global).
      tl.t[method_index("global")].add(lp[2], y, ones, false);
      if (need_spec) tl.t[method_index("specialist")].add(lp[0], y, Matrix<S>::Zero(1, y.size()), false);
      if (need_ft) tl.t[method_index("finetuned")].add(lp[1], y, Matrix<S>::Zero(1, y.size()), false);
      if (wants("mixture")) tl.t[method_index("mixture")].add(joint.forward(x), y, joint.weights(), keep);
      if (need_ft) {  // the frozen-expert mixtures: only their gates run, on the experts' outputs above
        const std::array<Matrix<S>, 2> two{lp[1], lp[2]};
        const auto cached = [&](const char* name, auto& mix, const auto& log_probs) {
          if (wants(name))
            tl.t[method_index(name)].add(mix.forward_cached(x, log_probs, Mode::eval, unused), y, mix.weights(), keep);
        };
        cached("mixture-prior", prior, two);
        cached("mixture-heldout", heldout, two);
        cached("mixture-stacked", stacked, two);
        cached("mixture-shift", shift, two);
        cached("mixture-stacked3", stacked3, lp);
      }
    }
    return tl;
  };
  const Tallies local = run_set(split.test, false, nullptr);
  std::vector<std::int32_t> global_labels;
  const Tallies glob = run_set(global_test_idx, true, &global_labels);

  // The client's majority classes, for the gate AUC: positive = a global-test input of one of them.
  std::vector<std::uint8_t> majority(global_labels.size(), 0);
  for (std::size_t j = 0; j < global_labels.size(); ++j)
    for (int c : split.majority_classes) majority[j] |= global_labels[j] == c;

  ClientResult r;
  r.client = client.id();
  r.opted_out = client.opted_out();
  const FitResult* fits[] = {nullptr,      &spec_fit,    &ft_fit,       &mix_fit,      &heldout_fit,
                             &stacked_fit, &stacked3_fit, nullptr, &shift_fit};
  static_assert(std::size(fits) == n_methods);
  for (std::size_t m = 0; m < n_methods; ++m) {
    const std::string_view name = personal_methods[m].name;
    if (!wants(name)) continue;
    MethodResult& out = r.add(name, local.t[m].accuracy(),
                              name == "global" ? global_model_global_acc : glob.t[m].accuracy());
    if (fits[m]) detail::set_fit(out, *fits[m]);
    if (m < 3) continue;  // the mixtures' gate diagnostics
    out.set("mean_gate_local", local.t[m].mean_weight());
    out.set("mean_gate_global", glob.t[m].mean_weight());
    out.set("gate_auc", roc_auc(glob.t[m].scores, majority));
    out.set_series("gate_hist_majority", detail::histogram(glob.t[m].scores, majority, true));
    out.set_series("gate_hist_other", detail::histogram(glob.t[m].scores, majority, false));
  }
  detail::lap(times, "evaluation", clock);
  return r;
}

}  // namespace fedmoe
