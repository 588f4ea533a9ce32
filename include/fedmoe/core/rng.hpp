#pragma once
/// @file rng.hpp
/// @brief fedmoe's one seeded generator, with portable distributions.
///
/// Rng is xoshiro256** seeded through SplitMix64. Unlike std::*_distribution,
/// every distribution here is defined by this header alone, so the same seed gives
/// bitwise the same stream with every compiler and standard library. Every random
/// choice in fedmoe (initialisation, dropout, shuffling, partitioning, client
/// sampling, gate noise) takes an Rng explicitly; there is no global generator.
/// `Rng::stream(seed, id)` derives independent per-client / per-purpose streams,
/// which is what keeps results independent of the thread count.
#include <cmath>
#include <cstdint>
#include <limits>

#include "error.hpp"

namespace fedmoe {

namespace detail {
__extension__ typedef unsigned __int128 uint128;  // GCC/Clang; __extension__ keeps -Wpedantic quiet
}

class Rng {
public:
  using result_type = std::uint64_t;

  explicit Rng(std::uint64_t seed = 0x5eed) { reseed(seed); }

  /// An independent stream for (seed, id): e.g. one per client, one per purpose.
  static Rng stream(std::uint64_t seed, std::uint64_t id) {
    std::uint64_t a = seed, b = id ^ 0xD1B54A32D192ED03ULL;
    return Rng(splitmix(a) ^ rotl(splitmix(b), 23));
  }

  void reseed(std::uint64_t seed) {
    std::uint64_t s = seed;
    for (auto& w : m_s) w = splitmix(s);
  }

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }

  /// Next raw 64-bit value (xoshiro256**).
  result_type operator()() {
    const std::uint64_t result = rotl(m_s[1] * 5, 7) * 9;
    const std::uint64_t t = m_s[1] << 17;
    m_s[2] ^= m_s[0];
    m_s[3] ^= m_s[1];
    m_s[1] ^= m_s[2];
    m_s[0] ^= m_s[3];
    m_s[2] ^= t;
    m_s[3] = rotl(m_s[3], 45);
    return result;
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }

  /// Uniform in [lo, hi).
  template <class Scalar = double>
  Scalar uniform(Scalar lo, Scalar hi) {
    return static_cast<Scalar>(static_cast<double>(lo) + (static_cast<double>(hi) - static_cast<double>(lo)) * uniform01());
  }

  /// Uniform integer in [0, n), unbiased (Lemire's method). n must be > 0.
  std::uint64_t uniform_int(std::uint64_t n) {
    FEDMOE_CHECK(n > 0, "Rng::uniform_int: expected n > 0, got n = 0");
    const detail::uint128 m0 = static_cast<detail::uint128>((*this)()) * n;
    std::uint64_t low = static_cast<std::uint64_t>(m0);
    detail::uint128 m = m0;
    if (low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<detail::uint128>((*this)()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }

  /// Standard normal (Box-Muller; the second value is cached).
  double normal() {
    if (m_has_spare) {
      m_has_spare = false;
      return m_spare;
    }
    double u1;
    do u1 = uniform01(); while (u1 <= 0.0);
    const double u2 = uniform01();
    const double r = std::sqrt(-2.0 * std::log(u1));
    constexpr double two_pi = 6.283185307179586476925286766559;
    m_spare = r * std::sin(two_pi * u2);
    m_has_spare = true;
    return r * std::cos(two_pi * u2);
  }

  /// Gamma(shape, 1) by Marsaglia-Tsang (with the shape < 1 boost), for Dirichlet draws.
  double gamma(double shape) {
    FEDMOE_CHECK(shape > 0 && std::isfinite(shape), "Rng::gamma: expected a finite shape > 0, got ", shape);
    if (shape < 1.0) {
      double u;
      do u = uniform01(); while (u <= 0.0);
      return gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
    }
    const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x, v;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      double u;
      do u = uniform01(); while (u <= 0.0);
      if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
    }
  }

  /// Fisher-Yates shuffle of a random-access range, using uniform_int (portable).
  template <class It>
  void shuffle(It first, It last) {
    const auto n = static_cast<std::uint64_t>(last - first);
    for (std::uint64_t i = n; i > 1; --i) {
      const auto j = uniform_int(i);
      using std::swap;
      swap(first[static_cast<std::ptrdiff_t>(i - 1)], first[static_cast<std::ptrdiff_t>(j)]);
    }
  }

private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  std::uint64_t m_s[4]{};
  double m_spare = 0.0;
  bool m_has_spare = false;
};

}  // namespace fedmoe
