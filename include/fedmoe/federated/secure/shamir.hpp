#pragma once
/// @file shamir.hpp
/// @brief t-of-n Shamir secret sharing (Shamir 1979, "How to share a secret") over the prime field
/// GF(p), p = 2^61 - 1: split, reconstruction by Lagrange interpolation at 0, and byte secrets.
///
/// A secret element a_0 in GF(p) is shared with a random polynomial f(X) = a_0 + a_1 X + ... +
/// a_{t-1} X^{t-1} (a_1..a_{t-1} uniform in GF(p)); the share of party j is (x_j, f(x_j)) with x_j
/// distinct and nonzero. Any t shares determine f, hence f(0) = a_0,
///
///     a_0 = sum_{i in S} y_i * lambda_i,      lambda_i = prod_{j in S, j != i} x_j / (x_j - x_i),
///
/// and any t - 1 reveal nothing about it: for every candidate a_0 exactly one polynomial of degree
/// < t passes through them and (0, a_0), and all are equally likely.
///
/// **Field.** p = 2^61 - 1 is a Mersenne prime: a product of two elements (< 2^122) reduces with
/// shifts and adds, no division. A byte secret (a 32-byte key in secure aggregation) is cut into
/// 7-byte chunks (56 bits < p, so every chunk is a field element and a reconstructed chunk >= 2^56
/// exposes an inconsistent share set), each shared with its own polynomial at the same x
/// coordinates: a share carries one field element per chunk (5 for 32 bytes).
///
/// **Randomness** comes from the caller: any std::uniform_random_bit_generator of 64-bit words
/// (RandomWords). Secure aggregation passes libsodium's CSPRNG (SecAggEntropy); tests pass a seeded
/// fedmoe::Rng. A coefficient is 61 random bits, redrawn on the single value p (probability 2^-61),
/// so it is exactly uniform.
///
/// **Reconstruction refuses**, with an error naming the values: fewer than t shares, t = 0, shares
/// of different chunk counts, x = 0 (the secret itself), x or y outside the field, and a duplicate
/// x. Shares beyond the first t are not ignored: each must lie on the polynomial the first t
/// define, otherwise the share set is inconsistent (a corrupted or forged share) and it is refused,
/// naming that share's x coordinate.
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/rng.hpp"  // detail::mul_64x64_128

namespace fedmoe::shamir {

/// The field's modulus, 2^61 - 1 (prime).
inline constexpr std::uint64_t prime = (std::uint64_t(1) << 61) - 1;
/// Bytes of a byte secret per field element.
inline constexpr std::size_t chunk_bytes = 7;

/// A generator of uniform 64-bit words.
template <class G>
concept RandomWords = std::uniform_random_bit_generator<G> && std::same_as<typename G::result_type, std::uint64_t> &&
                      (G::min() == 0) && (G::max() == std::numeric_limits<std::uint64_t>::max());

/// One party's share: its x coordinate and f_c(x) for every chunk c of the secret.
struct Share {
  std::uint64_t x = 0;
  std::vector<std::uint64_t> y;
  friend bool operator==(const Share&, const Share&) = default;
};

/// Field elements needed for a secret of `bytes` bytes: ceil(bytes / 7).
constexpr std::size_t chunks_for(std::size_t bytes) { return (bytes + chunk_bytes - 1) / chunk_bytes; }

namespace detail {

inline std::uint64_t add(std::uint64_t a, std::uint64_t b) {
  const std::uint64_t s = a + b;  // < 2^62: no overflow
  return s >= prime ? s - prime : s;
}
inline std::uint64_t sub(std::uint64_t a, std::uint64_t b) { return a >= b ? a - b : a + prime - b; }
inline std::uint64_t mul(std::uint64_t a, std::uint64_t b) {
  const fedmoe::detail::U128 z = fedmoe::detail::mul_64x64_128(a, b);  // < 2^122 (every target, core/rng.hpp)
  // 2^61 = 1 (mod p): fold the high bits onto the low ones, twice. z >> 61 = high << 3 | low >> 61.
  std::uint64_t r = (z.low & prime) + ((z.high << 3) | (z.low >> 61));  // < 2^62
  r = (r & prime) + (r >> 61);                                            // <= p + 1
  return r >= prime ? r - prime : r;
}
inline std::uint64_t pow(std::uint64_t a, std::uint64_t e) {
  std::uint64_t r = 1;
  for (; e; e >>= 1, a = mul(a, a))
    if (e & 1) r = mul(r, a);
  return r;
}
/// a^-1 = a^(p-2) (Fermat); a must be nonzero.
inline std::uint64_t inv(std::uint64_t a) { return pow(a, prime - 2); }

template <RandomWords G>
std::uint64_t uniform_element(G& random) {
  for (;;) {
    const std::uint64_t r = std::uint64_t(random()) >> 3;  // 61 bits
    if (r < prime) return r;
  }
}

inline void check_xs(std::span<const std::uint64_t> xs, const char* who) {
  for (std::size_t i = 0; i < xs.size(); ++i) {
    FEDMOE_CHECK(xs[i] != 0, who, ": x coordinate 0 (share ", i, ") would reveal the secret, expected x in [1, 2^61 - 2]");
    FEDMOE_CHECK(xs[i] < prime, who, ": x coordinate ", xs[i], " (share ", i, ") is outside the field, expected x < ",
                 prime);
  }
  std::vector<std::pair<std::uint64_t, std::size_t>> sorted(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) sorted[i] = {xs[i], i};
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < sorted.size(); ++i)
    FEDMOE_CHECK(sorted[i].first != sorted[i - 1].first, who, ": duplicate x coordinate ", sorted[i].first,
                 " (shares ", sorted[i - 1].second, " and ", sorted[i].second, "), expected distinct x coordinates");
}

/// 1 / prod_{j != i} (x_i - x_j) for each i (the barycentric weights of the nodes xs).
inline std::vector<std::uint64_t> inverse_denominators(std::span<const std::uint64_t> xs) {
  std::vector<std::uint64_t> w(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    std::uint64_t d = 1;
    for (std::size_t j = 0; j < xs.size(); ++j)
      if (j != i) d = mul(d, sub(xs[i], xs[j]));
    w[i] = inv(d);
  }
  return w;
}

/// The Lagrange basis of the nodes xs evaluated at x: L_i(x) = prod_{j != i} (x - x_j) * inv_den[i],
/// by prefix and suffix products (no inversion; x may be a node).
inline std::vector<std::uint64_t> basis_at(std::uint64_t x, std::span<const std::uint64_t> xs,
                                           std::span<const std::uint64_t> inv_den) {
  const std::size_t t = xs.size();
  std::vector<std::uint64_t> prefix(t + 1, 1), basis(t);
  for (std::size_t i = 0; i < t; ++i) prefix[i + 1] = mul(prefix[i], sub(x, xs[i]));
  std::uint64_t suffix = 1;
  for (std::size_t i = t; i-- > 0;) {
    basis[i] = mul(mul(prefix[i], suffix), inv_den[i]);
    suffix = mul(suffix, sub(x, xs[i]));
  }
  return basis;
}

}  // namespace detail

/// Shares each secret element (< p) t-of-|xs|: one Share per x coordinate, in the order of xs.
template <RandomWords G>
std::vector<Share> split(std::span<const std::uint64_t> secret, std::uint32_t threshold,
                         std::span<const std::uint64_t> xs, G& random) {
  FEDMOE_CHECK(threshold >= 1, "shamir::split: expected a threshold t >= 1, got 0");
  FEDMOE_CHECK(xs.size() >= threshold, "shamir::split: expected at least t = ", threshold, " parties, got ", xs.size(),
               " x coordinates");
  FEDMOE_CHECK(!secret.empty(), "shamir::split: expected a secret of at least one field element, got none");
  for (std::size_t c = 0; c < secret.size(); ++c)
    FEDMOE_CHECK(secret[c] < prime, "shamir::split: secret element ", c, " = ", secret[c],
                 " is outside the field, expected < ", prime);
  detail::check_xs(xs, "shamir::split");
  std::vector<Share> shares(xs.size());
  for (std::size_t j = 0; j < xs.size(); ++j) shares[j] = {xs[j], std::vector<std::uint64_t>(secret.size())};
  std::vector<std::uint64_t> coeff(threshold);
  for (std::size_t c = 0; c < secret.size(); ++c) {
    coeff[0] = secret[c];
    for (std::size_t k = 1; k < threshold; ++k) coeff[k] = detail::uniform_element(random);
    for (std::size_t j = 0; j < xs.size(); ++j) {  // Horner
      std::uint64_t v = coeff[threshold - 1];
      for (std::size_t k = threshold - 1; k-- > 0;) v = detail::add(detail::mul(v, xs[j]), coeff[k]);
      shares[j].y[c] = v;
    }
  }
  std::fill(coeff.begin(), coeff.end(), 0);
  return shares;
}

/// Reconstructs the secret elements from at least `threshold` shares: interpolation at 0 through the
/// first t, and every further share must agree with them (see the file comment for the refusals).
inline std::vector<std::uint64_t> reconstruct(std::span<const Share> shares, std::uint32_t threshold) {
  FEDMOE_CHECK(threshold >= 1, "shamir::reconstruct: expected a threshold t >= 1, got 0");
  FEDMOE_CHECK(shares.size() >= threshold, "shamir::reconstruct: expected at least t = ", threshold, " shares, got ",
               shares.size());
  const std::size_t chunks = shares[0].y.size();
  FEDMOE_CHECK(chunks >= 1, "shamir::reconstruct: share 0 carries no field element");
  std::vector<std::uint64_t> xs(shares.size());
  for (std::size_t i = 0; i < shares.size(); ++i) {
    FEDMOE_CHECK(shares[i].y.size() == chunks, "shamir::reconstruct: share ", i, " has ", shares[i].y.size(),
                 " field elements, expected ", chunks, " (as share 0)");
    for (std::size_t c = 0; c < chunks; ++c)
      FEDMOE_CHECK(shares[i].y[c] < prime, "shamir::reconstruct: share ", i, " (x = ", shares[i].x, ") element ", c,
                   " = ", shares[i].y[c], " is outside the field, expected < ", prime);
    xs[i] = shares[i].x;
  }
  detail::check_xs(xs, "shamir::reconstruct");
  const std::span<const std::uint64_t> nodes = std::span<const std::uint64_t>(xs).first(threshold);
  const std::vector<std::uint64_t> inv_den = detail::inverse_denominators(nodes);
  const std::vector<std::uint64_t> at0 = detail::basis_at(0, nodes, inv_den);
  std::vector<std::uint64_t> secret(chunks, 0);
  for (std::size_t c = 0; c < chunks; ++c)
    for (std::size_t i = 0; i < threshold; ++i) secret[c] = detail::add(secret[c], detail::mul(shares[i].y[c], at0[i]));
  for (std::size_t e = threshold; e < shares.size(); ++e) {
    const std::vector<std::uint64_t> at = detail::basis_at(xs[e], nodes, inv_den);
    for (std::size_t c = 0; c < chunks; ++c) {
      std::uint64_t v = 0;
      for (std::size_t i = 0; i < threshold; ++i) v = detail::add(v, detail::mul(shares[i].y[c], at[i]));
      FEDMOE_CHECK(v == shares[e].y[c], "shamir::reconstruct: the share with x = ", xs[e],
                   " is inconsistent with the first t = ", threshold,
                   " shares (a corrupted or forged share, or shares of different secrets)");
    }
  }
  return secret;
}

/// Shares a byte secret: 7-byte little-endian chunks, one field element each.
template <RandomWords G>
std::vector<Share> split_bytes(std::span<const std::uint8_t> secret, std::uint32_t threshold,
                               std::span<const std::uint64_t> xs, G& random) {
  FEDMOE_CHECK(!secret.empty(), "shamir::split_bytes: expected a secret of at least one byte, got none");
  std::vector<std::uint64_t> elements(chunks_for(secret.size()), 0);
  for (std::size_t b = 0; b < secret.size(); ++b)
    elements[b / chunk_bytes] |= std::uint64_t(secret[b]) << (8 * (b % chunk_bytes));
  std::vector<Share> shares = split(std::span<const std::uint64_t>(elements), threshold, xs, random);
  std::fill(elements.begin(), elements.end(), 0);
  return shares;
}

/// Reconstructs a byte secret of `secret_bytes` bytes (see reconstruct).
inline std::vector<std::uint8_t> reconstruct_bytes(std::span<const Share> shares, std::uint32_t threshold,
                                                   std::size_t secret_bytes) {
  FEDMOE_CHECK(secret_bytes >= 1, "shamir::reconstruct_bytes: expected a secret of at least one byte, got 0");
  std::vector<std::uint64_t> elements = reconstruct(shares, threshold);
  FEDMOE_CHECK(elements.size() == chunks_for(secret_bytes), "shamir::reconstruct_bytes: shares of ", elements.size(),
               " field elements, expected ", chunks_for(secret_bytes), " for a secret of ", secret_bytes, " bytes");
  std::vector<std::uint8_t> out(secret_bytes);
  for (std::size_t c = 0; c < elements.size(); ++c) {
    const std::size_t bytes = std::min(chunk_bytes, secret_bytes - c * chunk_bytes);
    FEDMOE_CHECK(elements[c] >> (8 * bytes) == 0, "shamir::reconstruct_bytes: element ", c,
                 " is not a chunk of ", bytes, " bytes (an inconsistent share set below the threshold check)");
    for (std::size_t b = 0; b < bytes; ++b) out[c * chunk_bytes + b] = std::uint8_t(elements[c] >> (8 * b));
  }
  std::fill(elements.begin(), elements.end(), 0);
  return out;
}

}  // namespace fedmoe::shamir
