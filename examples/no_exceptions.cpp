// Built with -fno-exceptions -fno-rtti: the compute core (layers, losses, models, optimizers)
// reports errors through the handler set with fedmoe::set_error_handler.
#include <cstdio>
#include <cstdlib>

#include <fedmoe/losses/cross_entropy.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/optimizers/adam.hpp>

namespace {
[[noreturn]] void on_error(const char* message) {
  std::printf("fedmoe error handler: %s\n", message);
  std::exit(0);  // the demo's expected end: the bad call below never returns
}
}  // namespace

int main() {
  using namespace fedmoe;
  set_error_handler(&on_error);
  auto model = fashion_cnn<float>();
  Rng rng(1);
  model.init(rng);
  Matrix<float> x = Matrix<float>::Zero(784, 4);
  const Matrix<float>& y = model.forward(x);
  CrossEntropy<float> ce;
  Labels labels = Labels::Zero(4);
  Matrix<float> grad;
  const float loss = ce.gradient(y, labels, grad);
  model.backward(x, grad);
  Adam<float> adam;
  adam.step(model.parameters(), model.gradients());
  std::printf("one training step without exceptions: loss %.4f\n", double(loss));
  model.forward(Matrix<float>::Zero(10, 1));  // wrong shape: the handler reports and exits
  std::printf("unreachable\n");
  return 1;
}
