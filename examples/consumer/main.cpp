// Built against an installed fedmoe: one forward pass of the paper's mixture of experts.
#include <fedmoe/fedmoe.hpp>
#include <iostream>

int main() {
  using namespace fedmoe;
  Rng rng(1);
  auto global = fashion_cnn<float>();
  auto specialist = fashion_cnn<float>();
  auto gate = fashion_cnn_gate<float>();
  global.init(rng);
  specialist.init(rng);
  gate.init(rng);
  Mixture mixture(gate, specialist, global);
  const Matrix<float> x = Matrix<float>::Random(784, 4);
  const Matrix<float>& p = mixture.forward(x);
  const float mass = p.colwise().sum().mean();
  std::cout << "mixture of experts: " << p.rows() << " classes x " << p.cols() << " samples, mean probability mass "
            << mass << "\n";
  return std::abs(mass - 1.0f) < 1e-4f ? 0 : 1;
}
