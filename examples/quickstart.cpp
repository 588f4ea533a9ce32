// fedmoe-quickstart: train the paper's MLP on a small synthetic problem with Adam.
// The smallest complete use of the library: model, loss, optimizer, batches, evaluation.
#include <cmath>
#include <iostream>

#include <fedmoe/fedmoe.hpp>
#include <fedmoe/training/trainer.hpp>

int main() {
  using namespace fedmoe;
  Rng rng(1);
  // Three Gaussian blobs in 20 dimensions.
  Dataset<float> data{Matrix<float>(20, 900), Labels(900), Shape{20, 1, 1}, 3};
  for (Index j = 0; j < 900; ++j) {
    const int c = int(j % 3);
    for (Index i = 0; i < 20; ++i) data.inputs(i, j) = float(rng.normal() + (i % 3 == c ? 1.5 : 0.0));
    data.labels[j] = c;
  }
  std::vector<Index> train, val;
  for (Index j = 0; j < 900; ++j) (j < 700 ? train : val).push_back(j);

  auto model = mlp<float>(Shape{20, 1, 1}, 3, 64);
  model.init(rng);
  Adam<float> adam(1e-3);
  const FitResult fit_result = fit(model, adam, data, train, val, FitConfig{100, 5, 4, 10}, rng);
  const EvalResult r = evaluate(model, data, val);
  std::cout << "trained " << fit_result.epochs << " epochs (best at " << fit_result.best_epoch
            << "); validation accuracy " << 100 * r.accuracy << "%, loss " << r.loss << "\n";
  return r.accuracy > 0.9 ? 0 : 1;
}
