#pragma once
// Comparisons with updates computed by hand in double (the optimizer and server-optimizer tests).
#include <catch2/catch.hpp>

#include <initializer_list>
#include <type_traits>

#include <fedmoe/core/tensor.hpp>

namespace fedmoe::test {

/// A double vector of the listed values.
inline Vector<double> vec(std::initializer_list<double> v) {
  Vector<double> out(Index(v.size()));
  Index i = 0;
  for (double x : v) out[i++] = x;
  return out;
}

/// The listed values as a vector of S.
template <class S>
Vector<S> vec_as(std::initializer_list<double> v) {
  return vec(v).template cast<S>();
}

/// Relative tolerance of a float/double update against a hand computation in double.
template <class S>
constexpr double tolerance() {
  return std::is_same_v<S, float> ? 2e-5 : 1e-12;
}

/// Every coordinate of `p` (in S) equals the double reference `q` to S's tolerance.
template <class S>
void check_close(const Vector<S>& p, const Vector<double>& q) {
  REQUIRE(p.size() == q.size());
  for (Index i = 0; i < p.size(); ++i) {
    INFO("coordinate " << i);
    CHECK(double(p[i]) == Approx(q[i]).epsilon(tolerance<S>()).margin(tolerance<S>() * 1e-3));
  }
}

}  // namespace fedmoe::test
