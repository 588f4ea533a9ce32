#pragma once
/// @file trainer.hpp
/// @brief Local training and evaluation of a Model on index lists into a shared Dataset.
///
/// - `evaluate(model, data, indices)`: mean cross-entropy and accuracy, Mode::eval, in chunks.
/// - `train_epoch(model, opt, batcher, rng)`: one shuffled pass of mini-batch steps.
/// - `fit(model, opt, data, train, val, config, rng)`: the paper's local protocol: up to
///   `max_epochs`, validate every `check_every` epochs, stop after `patience` checks without
///   improvement, and **restore the best weights**. Without validation data (an empty `val`) there is
///   nothing to select on: every epoch runs and the last weights are kept, and the FitResult says so
///   (`validated` false, best_val_loss NaN), never a "best" loss of 0.
///
/// Each of them first checks that the model's input shape is the data's sample shape (shapes, not
/// sizes: see models/model.hpp).
#include <cmath>
#include <limits>
#include <span>
#include <utility>

#include "../data/batcher.hpp"
#include "../losses/cross_entropy.hpp"
#include "../models/model.hpp"
#include "../optimizers/optimizer.hpp"
#include "early_stopping.hpp"

namespace fedmoe {

struct EvalResult {
  double loss = 0;      ///< mean cross-entropy
  double accuracy = 0;  ///< fraction in [0, 1]
  Index samples = 0;
};

struct FitConfig {
  int max_epochs = 500;  ///< paper: up to 500 epochs
  int check_every = 5;   ///< paper: validate every 5 epochs
  int patience = 10;     ///< paper: stop after 10 checks without improvement
  Index batch_size = 10;
};

struct FitResult {
  int epochs = 0;            ///< epochs run
  int best_epoch = 0;        ///< epoch whose weights were kept (0: the starting weights)
  double best_val_loss = 0;  ///< validation loss of the kept weights (NaN: no validation data)
  /// true: selected on validation (early_stopped_loop). false: no validation data, so no early
  /// stopping: every epoch ran and the last weights were kept (best_epoch = epochs). A FitResult made
  /// anywhere but in early_stopped_loop is therefore "not validated" unless it says otherwise.
  bool validated = false;
};

namespace detail {
inline Index argmax_col(const auto& m, Index j) {
  Index arg = 0;
  m.col(j).maxCoeff(&arg);
  return arg;
}
}  // namespace detail

/// Calls fn(x, y) for consecutive chunks of at most `chunk` samples of `indices`, gathered from
/// `data` into buffers reused across chunks (evaluation without holding the whole set in memory).
template <class S, class Fn>
void for_each_chunk(const Dataset<S>& data, std::span<const Index> indices, Index chunk, Fn&& fn) {
  FEDMOE_CHECK(chunk > 0, "for_each_chunk: expected chunk > 0, got ", chunk);
  Matrix<S> x;
  Labels y;
  for (std::size_t b = 0; b < indices.size(); b += std::size_t(chunk)) {
    gather_samples(data, indices.subspan(b, std::min<std::size_t>(std::size_t(chunk), indices.size() - b)), x, y);
    fn(std::as_const(x), std::as_const(y));
  }
}

/// Mean cross-entropy and accuracy of a classifier's logits on `indices` of `data`.
template <Model M>
EvalResult evaluate(M& model, const Dataset<typename M::scalar_type>& data, std::span<const Index> indices,
                    Index chunk = 500) {
  using S = typename M::scalar_type;
  check_sample_shape("evaluate", input_shape_of(model), data.shape);
  FEDMOE_CHECK(!indices.empty(), "evaluate: expected a non-empty index list, got 0 indices");
  CrossEntropy<S> ce;
  double loss = 0;
  Index correct = 0;
  for_each_chunk(data, indices, chunk, [&](const Matrix<S>& x, const Labels& y) {
    const Matrix<S>& out = model.forward(x);
    loss += double(ce.value(out, y)) * double(y.size());
    for (Index j = 0; j < y.size(); ++j) correct += detail::argmax_col(out, j) == y[j];
  });
  const double n = double(indices.size());
  return {loss / n, double(correct) / n, Index(indices.size())};
}

/// One epoch of shuffled mini-batch steps with cross-entropy; returns the mean training loss.
template <Model M, Optimizer O>
double train_epoch(M& model, O& opt, Batcher<typename M::scalar_type>& batcher, Rng& rng) {
  using S = typename M::scalar_type;
  check_sample_shape("train_epoch", input_shape_of(model), batcher.dataset().shape);
  thread_local Matrix<S> grad;  // reused across calls: no allocation in steady state
  CrossEntropy<S> ce;
  batcher.shuffle(rng);
  double total = 0;
  for (Index b = 0; b < batcher.num_batches(); ++b) {
    batcher.gather(b);
    const Matrix<S>& x = batcher.inputs();
    const S loss = ce.gradient(model.forward(x, Mode::train, rng), batcher.labels(), grad);
    FEDMOE_CHECK(std::isfinite(double(loss)), "train_epoch: the training loss became non-finite (", loss,
                 ") at batch ", b, "; lower the learning rate");
    model.backward(x, grad);
    opt.step(model.parameters(), model.gradients());
    total += double(loss) * double(x.cols());
  }
  return total / double(batcher.size());
}

/// The generic early-stopped loop: run `epoch()` up to max_epochs times; every check_every
/// epochs, `validate()` gives a loss and the vectors in `params` are snapshotted when it
/// improves; at the end the best snapshot (possibly the starting point) is restored.
template <class Scalar, class EpochFn, class ValidateFn>
FitResult early_stopped_loop(const FitConfig& config, EpochFn&& epoch, ValidateFn&& validate,
                             std::initializer_list<std::reference_wrapper<Vector<Scalar>>> params) {
  FEDMOE_CHECK(config.max_epochs >= 0, "fit: expected max_epochs >= 0, got ", config.max_epochs);
  FEDMOE_CHECK(config.check_every > 0, "fit: expected check_every > 0, got ", config.check_every);
  EarlyStopping<Scalar> stop(config.patience);
  auto observe = [&](double loss) {
    switch (params.size()) {  // the snapshot holds copies of the live vectors
      case 1: return stop.observe(loss, {std::cref(params.begin()[0].get())});
      case 2: return stop.observe(loss, {std::cref(params.begin()[0].get()), std::cref(params.begin()[1].get())});
      default: FEDMOE_FAIL("fit: expected 1 or 2 parameter vectors, got ", params.size());
    }
  };
  FitResult result;
  result.validated = true;
  observe(validate());  // the starting weights are a candidate too
  for (int e = 1; e <= config.max_epochs; ++e) {
    epoch();
    result.epochs = e;
    if (e % config.check_every == 0 || e == config.max_epochs) {
      const int before = stop.best_check();
      const bool done = observe(validate());
      if (stop.best_check() != before) result.best_epoch = e;
      if (done) break;
    }
  }
  result.best_val_loss = stop.best_loss();
  if (params.size() == 1) stop.restore({params.begin()[0]});
  else stop.restore({params.begin()[0], params.begin()[1]});
  return result;
}

/// The FitResult of a run without validation data: `epochs` epochs, the last weights kept.
inline FitResult unvalidated_fit(int epochs) {
  return {epochs, epochs, std::numeric_limits<double>::quiet_NaN(), false};
}

/// Trains `model` on `train` with early stopping on `val` (cross-entropy), restoring the best weights.
/// With an empty `val`, trains for max_epochs and keeps the last weights (FitResult::validated false).
template <Model M, Optimizer O>
FitResult fit(M& model, O& opt, const Dataset<typename M::scalar_type>& data, std::span<const Index> train,
              std::span<const Index> val, const FitConfig& config, Rng& rng) {
  using S = typename M::scalar_type;
  check_sample_shape("fit", input_shape_of(model), data.shape);
  FEDMOE_CHECK(config.max_epochs >= 0, "fit: expected max_epochs >= 0, got ", config.max_epochs);
  Batcher<S> batcher(data, train, config.batch_size);
  auto epoch = [&] { train_epoch(model, opt, batcher, rng); };
  if (val.empty()) {
    for (int e = 0; e < config.max_epochs; ++e) epoch();
    return unvalidated_fit(config.max_epochs);
  }
  return early_stopped_loop<S>(config, epoch, [&] { return evaluate(model, data, val).loss; },
                               {std::ref(model.parameters())});
}

}  // namespace fedmoe
