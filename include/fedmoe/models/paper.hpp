#pragma once
/// @file paper.hpp
/// @brief The paper's models, ready-made (Listo Zec et al., arXiv 2010.02056).
///
/// | model            | layers                                                                  | params (10 classes) |
/// |------------------|-------------------------------------------------------------------------|---------------------|
/// | FashionCnn       | conv(1->6,5) relu pool2, conv(6->12,5) relu pool2, fc 192->84 relu dropout, fc 84->42 relu, fc 42->C | 22,180 |
/// | FashionCnnGate   | same trunk, fc 42->1, sigmoid                                           | 21,793 |
/// | CifarCnn         | conv(3->6,5) relu pool2, conv(6->16,5) relu pool2, fc 400->120 relu, fc 120->84 relu, fc 84->C | 62,006 |
/// | CifarCnnGate     | same trunk, fc 84->1, sigmoid                                           | 61,241 |
/// | Mlp              | fc in->200 relu dropout, fc 200->C (784 inputs)                         | 159,010 |
/// | MlpGate          | fc in->200 relu dropout, fc 200->1, sigmoid                             | 157,201 |
///
/// Classifiers output logits; gates output h(x) in (0, 1).
#include "../layers/activation.hpp"
#include "../layers/conv2d.hpp"
#include "../layers/dense.hpp"
#include "../layers/dropout.hpp"
#include "../layers/flatten.hpp"
#include "../layers/max_pool2d.hpp"
#include "sequential.hpp"

namespace fedmoe {

namespace detail {
template <class S, class... Head>
using FashionTrunk = Sequential<S, Conv2d<S>, ReLU<S>, MaxPool2d<S>, Conv2d<S>, ReLU<S>, MaxPool2d<S>, Flatten<S>,
                                Dense<S>, ReLU<S>, Dropout<S>, Dense<S>, ReLU<S>, Head...>;
template <class S, class... Head>
using CifarTrunk = Sequential<S, Conv2d<S>, ReLU<S>, MaxPool2d<S>, Conv2d<S>, ReLU<S>, MaxPool2d<S>, Flatten<S>,
                              Dense<S>, ReLU<S>, Dense<S>, ReLU<S>, Head...>;
template <class S, class... Head>
using MlpTrunk = Sequential<S, Dense<S>, ReLU<S>, Dropout<S>, Head...>;
}  // namespace detail

template <class S = float> using FashionCnn = detail::FashionTrunk<S, Dense<S>>;
template <class S = float> using FashionCnnGate = detail::FashionTrunk<S, Dense<S>, Sigmoid<S>>;
template <class S = float> using CifarCnn = detail::CifarTrunk<S, Dense<S>>;
template <class S = float> using CifarCnnGate = detail::CifarTrunk<S, Dense<S>, Sigmoid<S>>;
template <class S = float> using Mlp = detail::MlpTrunk<S, Dense<S>>;
template <class S = float> using MlpGate = detail::MlpTrunk<S, Dense<S>, Sigmoid<S>>;

/// Fashion-MNIST CNN on 1 x 28 x 28 inputs with `classes` logits.
template <class S = float>
FashionCnn<S> fashion_cnn(Index classes = 10, double dropout = 0.5) {
  return FashionCnn<S>(Shape{1, 28, 28}, Conv2d<S>(6, 5), ReLU<S>(), MaxPool2d<S>(2), Conv2d<S>(12, 5), ReLU<S>(),
                       MaxPool2d<S>(2), Flatten<S>(), Dense<S>(84), ReLU<S>(), Dropout<S>(dropout), Dense<S>(42),
                       ReLU<S>(), Dense<S>(classes));
}
/// The Fashion-MNIST gate: the CNN's trunk, one sigmoid output.
template <class S = float>
FashionCnnGate<S> fashion_cnn_gate(double dropout = 0.5) {
  return FashionCnnGate<S>(Shape{1, 28, 28}, Conv2d<S>(6, 5), ReLU<S>(), MaxPool2d<S>(2), Conv2d<S>(12, 5),
                           ReLU<S>(), MaxPool2d<S>(2), Flatten<S>(), Dense<S>(84), ReLU<S>(), Dropout<S>(dropout),
                           Dense<S>(42), ReLU<S>(), Dense<S>(1), Sigmoid<S>());
}
/// CIFAR CNN on 3 x 32 x 32 inputs with `classes` logits.
template <class S = float>
CifarCnn<S> cifar_cnn(Index classes = 10) {
  return CifarCnn<S>(Shape{3, 32, 32}, Conv2d<S>(6, 5), ReLU<S>(), MaxPool2d<S>(2), Conv2d<S>(16, 5), ReLU<S>(),
                     MaxPool2d<S>(2), Flatten<S>(), Dense<S>(120), ReLU<S>(), Dense<S>(84), ReLU<S>(),
                     Dense<S>(classes));
}
template <class S = float>
CifarCnnGate<S> cifar_cnn_gate() {
  return CifarCnnGate<S>(Shape{3, 32, 32}, Conv2d<S>(6, 5), ReLU<S>(), MaxPool2d<S>(2), Conv2d<S>(16, 5), ReLU<S>(),
                         MaxPool2d<S>(2), Flatten<S>(), Dense<S>(120), ReLU<S>(), Dense<S>(84), ReLU<S>(), Dense<S>(1),
                         Sigmoid<S>());
}
/// MLP: in -> 200 -> classes, dropout after the hidden layer.
template <class S = float>
Mlp<S> mlp(Shape input = Shape{784, 1, 1}, Index classes = 10, Index hidden = 200, double dropout = 0.5) {
  return Mlp<S>(input, Dense<S>(hidden), ReLU<S>(), Dropout<S>(dropout), Dense<S>(classes));
}
template <class S = float>
MlpGate<S> mlp_gate(Shape input = Shape{784, 1, 1}, Index hidden = 200, double dropout = 0.5) {
  return MlpGate<S>(input, Dense<S>(hidden), ReLU<S>(), Dropout<S>(dropout), Dense<S>(1), Sigmoid<S>());
}

}  // namespace fedmoe
