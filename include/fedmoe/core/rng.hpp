#pragma once
/// @file rng.hpp
/// @brief fedmoe's one seeded generator, with portable distributions.
///
/// Rng is xoshiro256** seeded through SplitMix64. Unlike std::*_distribution,
/// every distribution here is defined by this header alone, so the same seed gives
/// bitwise the same stream with every compiler and standard library, and on every CPU
/// (x86-64, aarch64, 32-bit ARM; with or without FMA): the raw stream, uniform_int,
/// uniform01, uniform and shuffle use only integer arithmetic and IEEE-754 operations
/// that round the same everywhere (tests/test_portability.cpp checks recorded values).
/// normal() and gamma() call the C library's log, sin, cos and pow, which glibc computes
/// to within an ULP but not identically on every CPU (its FMA code paths on x86-64 and
/// aarch64 round differently from armhf's, or from an x86-64 without FMA, in up to 1 call
/// in 1300): their draws agree across CPUs to a few ULP only. Every random
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

/// The 128-bit product a x b as {high, low} 64-bit halves, from four 32 x 32 -> 64 partial products:
/// plain 64-bit arithmetic that every target has (32-bit ARM, i386, MSVC have no 128-bit integer).
struct U128 {
  std::uint64_t high;
  std::uint64_t low;
};
constexpr U128 mul_64x64_128_portable(std::uint64_t a, std::uint64_t b) {
  const std::uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32, b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  // The middle column: at most 3 (2^32 - 1) < 2^34, so no carry is lost.
  const std::uint64_t mid = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
  return {hi_hi + (hi_lo >> 32) + (mid >> 32), (mid << 32) | (lo_lo & 0xFFFFFFFFu)};
}
/// The same halves, in one multiply where the compiler has a 128-bit integer (GCC and Clang on 64-bit
/// targets): Rng::uniform_int draws bitwise the same values on every target.
constexpr U128 mul_64x64_128(std::uint64_t a, std::uint64_t b) {
#if defined(__SIZEOF_INT128__)
  __extension__ typedef unsigned __int128 uint128;  // __extension__ keeps -Wpedantic quiet
  const uint128 m = static_cast<uint128>(a) * b;
  return {static_cast<std::uint64_t>(m >> 64), static_cast<std::uint64_t>(m)};
#else
  return mul_64x64_128_portable(a, b);
#endif
}

/// x, through a barrier the optimiser cannot see into. GCC and Clang (GNU modes, the default
/// -ffp-contract=fast) fuse `a * b + c` into one fused multiply-add wherever the CPU has one (aarch64,
/// ARMv7 with VFPv4, x86-64 with -march=native), which rounds once instead of twice: the same source then
/// draws different last bits on different machines. Passing the product through here keeps the ISO C++
/// result (product rounded, then sum rounded) on every target and under every -march; it costs no
/// instruction.
inline double unfused(double x) {
#if defined(__GNUC__) && (defined(__x86_64__) || (defined(__i386__) && defined(__SSE2_MATH__)))
  __asm__("" : "+x"(x));
#elif defined(__GNUC__) && (defined(__aarch64__) || (defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 8)))
  __asm__("" : "+w"(x));
#elif defined(__GNUC__)
  __asm__("" : "+m"(x));
#endif
  return x;
}

}  // namespace detail

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
    const double span = static_cast<double>(hi) - static_cast<double>(lo);
    return static_cast<Scalar>(static_cast<double>(lo) + detail::unfused(span * uniform01()));
  }

  /// Uniform integer in [0, n), unbiased (Lemire's method). n must be > 0.
  std::uint64_t uniform_int(std::uint64_t n) {
    FEDMOE_CHECK(n > 0, "Rng::uniform_int: expected n > 0, got n = 0");
    detail::U128 m = detail::mul_64x64_128((*this)(), n);
    if (m.low < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (m.low < threshold) m = detail::mul_64x64_128((*this)(), n);
    }
    return m.high;
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
        v = 1.0 + detail::unfused(c * x);
      } while (v <= 0.0);
      v = v * v * v;
      double u;
      do u = uniform01(); while (u <= 0.0);
      // Every product through unfused: the acceptance test (and so the draw) is the same with and without FMA.
      const double lhs = std::log(u);
      const double rhs = detail::unfused(0.5 * x * x) + d - detail::unfused(d * v) + detail::unfused(d * std::log(v));
      if (lhs < rhs) return d * v;
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
