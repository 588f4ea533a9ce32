#pragma once
/// @file fixed_point.hpp
/// @brief FixedPointCodec: a client's weighted update as a vector of Z_2^32 (uint32 with wraparound),
/// the ring secure aggregation sums in (secure_aggregation.hpp), and the decoding of the sum.
///
/// Secure aggregation adds integers modulo 2^32; the server divides afterwards. A client with
/// weight w (its sample count for FedAvg) and update x (delta, then its extra vectors) sends
///
///     enc(x, w) = [ round(s * w x_0), ..., round(s * w x_{P(1+E)-1}),  round(s_w * w) ]   (mod 2^32)
///
/// so the sum over clients decodes to sum_i w_i x_i and sum_i w_i, and the weighted mean is their
/// quotient: the weight is folded in on the client, the server never sees one client's weight.
///
/// **Scale.** The codec is declared with a bound B on |w x| (every coordinate of every client), a
/// bound W on the weight and the maximum number n of clients whose encodings are summed. A sum of n
/// rounded values lies in [-n (B s + 1/2), n (B s + 1/2)], which fits the signed 32-bit range (and
/// hence decodes without ambiguity from Z_2^32) iff n (B s + 1/2) <= 2^31 - 1. The scale is the
/// largest POWER OF TWO with that property,
///
///     s = 2^floor(log2(((2^31 - 1) / n - 1/2) / B))          (s_w likewise with W),
///
/// so scaling and unscaling are exact in floating point: the only error is the rounding, at most 1/2
/// per client and coordinate, and the decoded sum satisfies (sum_error_bound)
///
///     | decode(sum) - sum_i fl(w_i x_i) |  <=  n_c * 0.5 / s        for n_c <= n contributors,
///
/// where fl(w x) is the product in double precision (the encoder's input). A power of two costs at
/// most one bit of precision against the largest admissible scale; with n = 100 and B = 1 the
/// resolution is 2^-24 (s = 2^24).
///
/// **Refusals, never silent clamps.** A coordinate with |w x| > B is an error naming the value, its
/// index and the bound (clip the update before encoding if that is the intent: clipping is a
/// modelling decision, not an encoding one); NaN and inf are refused; a weight outside (0, W] is
/// refused; decoding a sum of more than n contributors is refused (it may have wrapped).
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/tensor.hpp"
#include "../aggregator.hpp"

namespace fedmoe {

/// The decoded sum of n_c clients' encodings.
struct FixedPointSum {
  Vector<double> weighted_sum;           ///< sum_i w_i delta_i (P values)
  std::vector<Vector<double>> extras;    ///< sum_i w_i e_{i,k}, one vector of P values per extra
  double total_weight = 0;               ///< sum_i w_i
  std::uint32_t contributors = 0;        ///< n_c: encodings in the sum

  /// The weighted mean of the deltas, sum_i w_i delta_i / sum_i w_i.
  template <class Scalar = double>
  Vector<Scalar> mean() const {
    FEDMOE_CHECK(total_weight > 0, "FixedPointSum::mean: expected a positive total weight, got ", total_weight);
    return (weighted_sum / total_weight).template cast<Scalar>();
  }
};

class FixedPointCodec {
public:
  /// @param value_bound  B: the largest |w x| any client may encode (finite, > 0)
  /// @param weight_bound W: the largest weight any client may have (finite, > 0)
  /// @param max_clients  n: the most encodings that will be summed (>= 1)
  FixedPointCodec(double value_bound, double weight_bound, std::uint32_t max_clients)
      : m_value_bound(value_bound), m_weight_bound(weight_bound), m_max_clients(max_clients) {
    FEDMOE_CHECK(std::isfinite(value_bound) && value_bound > 0,
                 "FixedPointCodec: expected a finite value bound B > 0 on |w * x|, got ", value_bound);
    FEDMOE_CHECK(std::isfinite(weight_bound) && weight_bound > 0,
                 "FixedPointCodec: expected a finite weight bound W > 0, got ", weight_bound);
    FEDMOE_CHECK(max_clients >= 1, "FixedPointCodec: expected max_clients >= 1, got 0");
    m_value_scale = scale_for(value_bound, max_clients, "value bound B");
    m_weight_scale = scale_for(weight_bound, max_clients, "weight bound W");
  }

  double value_bound() const { return m_value_bound; }
  double weight_bound() const { return m_weight_bound; }
  std::uint32_t max_clients() const { return m_max_clients; }
  /// s: the power of two the values w x are multiplied by.
  double value_scale() const { return m_value_scale; }
  /// s_w: the power of two the weight is multiplied by.
  double weight_scale() const { return m_weight_scale; }

  /// Largest |decoded - exact| of one coordinate of sum_i w_i x_i over `contributors` encodings:
  /// contributors * 0.5 / s (each encoding rounds once, by at most half a unit).
  double sum_error_bound(std::uint32_t contributors) const { return double(contributors) * 0.5 / m_value_scale; }
  /// The same for the summed weight: contributors * 0.5 / s_w.
  double weight_error_bound(std::uint32_t contributors) const {
    return double(contributors) * 0.5 / m_weight_scale;
  }

  /// Words of one encoding of P parameters with E extra vectors: P (1 + E) + 1.
  static std::uint64_t encoded_length(Index p, Index extras = 0) {
    FEDMOE_CHECK(p >= 0 && extras >= 0, "FixedPointCodec::encoded_length: expected P >= 0 and E >= 0, got P = ", p,
                 ", E = ", extras);
    return std::uint64_t(p) * std::uint64_t(1 + extras) + 1;
  }

  /// Encodes the values x (already concatenated: delta, then the extras) with weight w into `out`,
  /// which must hold x.size() + 1 words: out[i] = round(s w x_i), out[x.size()] = round(s_w w).
  template <class Scalar>
  void encode(std::span<const Scalar> x, double weight, std::span<std::uint32_t> out) const {
    FEDMOE_CHECK(out.size() == x.size() + 1, "FixedPointCodec::encode: expected an output of ", x.size() + 1,
                 " words (", x.size(), " values and the weight), got ", out.size());
    check_weight(weight);
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = encode_value(double(x[i]), weight, i);
    out[x.size()] = to_ring(std::llround(weight * m_weight_scale));
  }

  /// Encodes a ClientUpdate with weight w = num_samples: delta, then each extra vector, then w.
  template <class Scalar>
  std::vector<std::uint32_t> encode(const ClientUpdate<Scalar>& update) const {
    const Index p = update.delta.size();
    for (std::size_t k = 0; k < update.extras.size(); ++k)
      FEDMOE_CHECK(update.extras[k].size() == p, "FixedPointCodec::encode: client ", update.client, "'s extra vector ",
                   k, " has ", update.extras[k].size(), " values, expected ", p, " (the delta's size)");
    const double w = double(update.num_samples);
    check_weight(w);
    std::vector<std::uint32_t> out(encoded_length(p, Index(update.extras.size())));
    std::size_t at = 0;
    const auto put = [&](const Vector<Scalar>& v) {
      for (Index i = 0; i < p; ++i, ++at) out[at] = encode_value(double(v[i]), w, at);
    };
    put(update.delta);
    for (const auto& e : update.extras) put(e);
    out[at] = to_ring(std::llround(w * m_weight_scale));
    return out;
  }

  /// Decodes a sum of `contributors` encodings of P (1 + extras) values and the weight.
  FixedPointSum decode_sum(std::span<const std::uint32_t> sum, std::uint32_t contributors, Index extras = 0) const {
    FEDMOE_CHECK(extras >= 0, "FixedPointCodec::decode_sum: expected extras >= 0, got ", extras);
    FEDMOE_CHECK(contributors >= 1 && contributors <= m_max_clients, "FixedPointCodec::decode_sum: expected 1 to ",
                 m_max_clients, " contributors (the codec's max_clients; more may have wrapped around 2^32), got ",
                 contributors);
    const std::uint64_t blocks = std::uint64_t(1 + extras);
    FEDMOE_CHECK(!sum.empty() && (sum.size() - 1) % blocks == 0, "FixedPointCodec::decode_sum: expected P * ", blocks,
                 " + 1 words (P values, ", extras, " extra vectors and the weight), got ", sum.size());
    const Index p = Index((sum.size() - 1) / blocks);
    const double inv = 1.0 / m_value_scale;  // exact: the scale is a power of two
    FixedPointSum out;
    out.contributors = contributors;
    const auto get = [&](Vector<double>& v, std::size_t offset) {
      v.resize(p);
      for (Index i = 0; i < p; ++i) v[i] = double(std::int32_t(sum[offset + std::size_t(i)])) * inv;
    };
    get(out.weighted_sum, 0);
    out.extras.resize(std::size_t(extras));
    for (std::size_t k = 0; k < out.extras.size(); ++k) get(out.extras[k], std::size_t(p) * (k + 1));
    out.total_weight = double(std::int32_t(sum.back())) / m_weight_scale;
    return out;
  }

  /// The value of one decoded coordinate of a sum (two's complement of 32 bits, divided by s).
  double decode_value(std::uint32_t word) const { return double(std::int32_t(word)) / m_value_scale; }

private:
  static double scale_for(double bound, std::uint32_t n, const char* what) {
    const double limit = (2147483647.0 / double(n) - 0.5) / bound;
    FEDMOE_CHECK(limit > 0 && std::isnormal(limit), "FixedPointCodec: the ", what, " ", bound, " with max_clients ", n,
                 " leaves no representable scale (need n * (bound * scale + 1/2) <= 2^31 - 1)");
    int e = 0;
    (void)std::frexp(limit, &e);  // limit = m 2^e, m in [0.5, 1): floor(log2(limit)) = e - 1
    return std::ldexp(1.0, e - 1);
  }

  static std::uint32_t to_ring(long long v) { return std::uint32_t(std::int64_t(v)); }  // mod 2^32

  void check_weight(double w) const {
    FEDMOE_CHECK(std::isfinite(w) && w > 0 && w <= m_weight_bound, "FixedPointCodec::encode: expected a weight in (0, ",
                 m_weight_bound, "] (the declared weight bound W), got ", w);
  }

  std::uint32_t encode_value(double x, double w, std::size_t index) const {
    const double v = w * x;
    if (!(std::abs(v) <= m_value_bound)) [[unlikely]] {
      FEDMOE_CHECK(std::isfinite(x), "FixedPointCodec::encode: non-finite value ", x, " at index ", index,
                   " (NaN and inf cannot be aggregated)");
      FEDMOE_FAIL("FixedPointCodec::encode: |w * x| = ", std::abs(v), " at index ", index, " (w = ", w, ", x = ", x,
                  ") exceeds the declared bound B = ", m_value_bound,
                  "; declare a larger bound or clip the update before encoding");
    }
    return to_ring(std::llround(v * m_value_scale));
  }

  double m_value_bound;
  double m_weight_bound;
  std::uint32_t m_max_clients;
  double m_value_scale = 1;
  double m_weight_scale = 1;
};

}  // namespace fedmoe
