// Portability (issue 16, items 12 and 13): what is bitwise the same on every CPU, checked against values
// recorded on x86-64, and every size read from a file checked against this target's Index before it is
// narrowed. Every test here is tagged [portable]: `.ci/cross --quick` runs them under qemu on aarch64 and
// armhf (32-bit Index and size_t, ARMv7 NEON), where they pass bitwise or by the limits of that target.
#include <catch2/catch.hpp>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fedmoe/core/checked_size.hpp>
#include <fedmoe/core/rng.hpp>
#include <fedmoe/data/partition.hpp>
#include <fedmoe/distributed/framing.hpp>
#include <fedmoe/io/idx.hpp>
#include <fedmoe/io/npy.hpp>
#include <fedmoe/io/serialization.hpp>
#include <fedmoe/models/paper.hpp>
#include <fedmoe/moe/noisy_top_k_gate.hpp>

#include "temp_dir.hpp"

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {

/// Whether this target's Index and size_t hold 64-bit sizes (x86-64, aarch64) or only 32-bit ones (armhf).
constexpr bool wide_sizes = detail::max_index >= (std::uint64_t(1) << 62);

template <class T>
std::uint64_t bits_of(T v) {
  if constexpr (sizeof(T) == 4) {
    std::uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
  } else {
    std::uint64_t b;
    std::memcpy(&b, &v, 8);
    return b;
  }
}
/// FNV-1a over the little-endian bytes of each value's bit pattern: one number for a whole vector.
template <class T>
std::uint64_t fnv1a(const T* v, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t b = bits_of(v[i]);
    for (std::size_t k = 0; k < sizeof(T); ++k) {
      h ^= (b >> (8 * k)) & 255;
      h *= 1099511628211ull;
    }
  }
  return h;
}
template <class S>
std::uint64_t fnv1a(const Vector<S>& v) {
  return fnv1a(v.data(), std::size_t(v.size()));
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}
void append_be32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += char((v >> shift) & 0xFF);
}
template <class T>
void append_le(std::string& out, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out += char((std::uint64_t(v) >> (8 * i)) & 0xFF);
}

/// A fedmoe float32 parameter file written byte by byte (SerWriter takes Index dims, which cannot hold
/// 2^40 on a 32-bit target): `records` of (name, dims, element count actually stored), then the CRC.
struct RawRecord {
  std::string name;
  std::vector<std::int64_t> dims;
  std::size_t stored = 0;
};
std::string raw_parameter_file(const std::vector<RawRecord>& records) {
  std::string b("\x89"
                "FEDMOE\n");
  append_le(b, std::uint32_t(1));  // version
  append_le(b, std::uint32_t(1));  // parameters
  append_le(b, std::uint32_t(1));  // float32
  append_le(b, std::uint32_t(4));
  append_le(b, std::uint64_t(records.size()));
  for (const RawRecord& r : records) {
    append_le(b, std::uint32_t(r.name.size()));
    b += r.name;
    append_le(b, std::uint32_t(1));  // float32
    append_le(b, std::uint32_t(r.dims.size()));
    for (std::int64_t d : r.dims) append_le(b, std::uint64_t(d));
    for (std::size_t i = 0; i < r.stored; ++i) append_le(b, std::uint32_t(0x3F800000u));  // 1.0f
  }
  const auto crc = std::uint32_t(crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(b.data()), b.size()));
  append_le(b, crc);
  return b;
}

/// A .npy v1.0 file with a hand-written header (any shape, even one whose product overflows) and `data`.
std::string raw_npy(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string b("\x93NUMPY\x01\x00", 8);
  b += char(dict.size() & 0xFF);
  b += char(dict.size() >> 8);
  return b + dict + data;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Bitwise on every CPU: recorded on x86-64 (GCC 12, -O3, with and without -march=native), and
// checked by `.ci/cross` under qemu on aarch64 and armhf.

TEST_CASE("Rng streams are bitwise the values recorded on x86-64", "[portable][rng]") {
  Rng a(42);
  for (const std::uint64_t want :
       {0x15780b2e0c2ec716ULL, 0x6104d9866d113a7eULL, 0xae17533239e499a1ULL, 0xecb8ad4703b360a1ULL})
    CHECK(a() == want);
  Rng s = Rng::stream(7, 3);
  for (const std::uint64_t want :
       {0x70991efb847f4079ULL, 0xf2b1e5b9849ecad8ULL, 0x5dd7b18aed5110bbULL, 0x6add91d97a5fe158ULL})
    CHECK(s() == want);

  // uniform_int: Lemire's multiply-shift through the 128-bit product (native or portable), with the
  // rejection step exercised by the n close to 2^64.
  Rng u(5);
  const std::uint64_t ns[] = {1, 3, 10, 1000, (1ULL << 33) + 1, (1ULL << 63) + 5, ~0ULL, 0xFFFFFFFF00000001ULL};
  const std::uint64_t want[] = {0ULL, 0ULL, 0ULL, 2ULL, 1ULL, 2ULL, 5ULL, 8ULL, 3ULL, 380ULL, 998ULL, 250ULL,
                                3040096116ULL, 6359160517ULL, 4843356249ULL, 6278728365709429749ULL,
                                527089081899757922ULL, 8241640575878255733ULL, 11326300358389102002ULL,
                                15965339546411750128ULL, 3255431022234038753ULL, 2243640576711160896ULL,
                                10039111024700913892ULL, 15061764267556638565ULL};
  std::size_t k = 0;
  for (const std::uint64_t n : ns)
    for (int r = 0; r < 3; ++r, ++k) {
      INFO("n = " << n << ", draw " << r);
      CHECK(u.uniform_int(n) == want[k]);
    }

  Rng f(9);
  for (const std::uint64_t want_bits : {0x3f6529dd9ec33400ULL, 0x3fd01866e17454beULL, 0x3fc0f485e418402cULL})
    CHECK(bits_of(f.uniform01()) == want_bits);

  Rng g(17);
  std::vector<int> perm(20);
  std::iota(perm.begin(), perm.end(), 0);
  g.shuffle(perm.begin(), perm.end());
  CHECK(perm == std::vector<int>{5, 18, 15, 4, 9, 2, 1, 3, 8, 0, 7, 6, 11, 12, 14, 10, 17, 16, 19, 13});
}

TEST_CASE("the portable 64 x 64 -> 128 multiply gives the native product's halves", "[portable][rng]") {
  using detail::mul_64x64_128_portable;
  static_assert(mul_64x64_128_portable(~0ULL, ~0ULL).high == 0xFFFFFFFFFFFFFFFEULL);
  static_assert(mul_64x64_128_portable(~0ULL, ~0ULL).low == 1);
  static_assert(mul_64x64_128_portable(1ULL << 32, 1ULL << 32).high == 1);
  static_assert(mul_64x64_128_portable(1ULL << 32, 1ULL << 32).low == 0);
  static_assert(mul_64x64_128_portable(0xFFFFFFFFULL, 0xFFFFFFFFULL).low == 0xFFFFFFFE00000001ULL);
  Rng r(3);
  for (int i = 0; i < 10000; ++i) {
    const std::uint64_t a = r(), b = i % 3 ? r() : r() >> (i % 64);
    const auto p = mul_64x64_128_portable(a, b), q = detail::mul_64x64_128(a, b);
    INFO(a << " x " << b);
    REQUIRE(p.high == q.high);
    REQUIRE(p.low == q.low);
    REQUIRE(p.low == a * b);  // the low half is the wrapped 64-bit product
  }
}

TEST_CASE("uniform draws and initial parameters are bitwise the same with and without FMA", "[portable][rng]") {
  // lo + (hi - lo) u with the product rounded first, as without FMA (x86-64 -march=x86-64, armhf); the
  // volatile keeps the reference from being fused here.
  Rng a(23), b(23);
  for (int i = 0; i < 1000; ++i) {
    const double lo = -0.1 - 0.001 * i, hi = 0.25 + 0.003 * i;
    const double got = a.uniform<double>(lo, hi);
    volatile double product = (hi - lo) * b.uniform01();
    const double want = lo + product;
    REQUIRE(bits_of(got) == bits_of(want));
  }
  Rng g(11);
  Vector<float> vf(1000);
  for (Index i = 0; i < vf.size(); ++i) vf[i] = g.uniform<float>(-0.1f, 0.1f);
  CHECK(fnv1a(vf) == 0xcac5c043bda17264ULL);
  Vector<double> vd(1000);
  for (Index i = 0; i < vd.size(); ++i) vd[i] = g.uniform<double>(-0.3, 0.7);
  CHECK(fnv1a(vd) == 0x05ba67f918e0e5d5ULL);

  // Initial parameters: Dense and Conv2d draw uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)). (Before the
  // contraction barrier, -march=native and aarch64 builds fused the double draw: mlp<double> hashed to
  // 0x1588521f5d570ccc there and to 0xe8b8192ed631b9e6 without FMA.)
  Rng r1(1);
  auto cnn = fashion_cnn<float>();
  cnn.init(r1);
  CHECK(cnn.num_params() == 22180);
  CHECK(fnv1a(cnn.parameters()) == 0x7f552958b7a740c8ULL);
  Rng r2(2);
  auto net = mlp<double>(Shape{20, 1, 1}, 3, 64);
  net.init(r2);
  CHECK(fnv1a(net.parameters()) == 0xe8b8192ed631b9e6ULL);
}

TEST_CASE("IID and majority-p partitions are bitwise the ones recorded on x86-64", "[portable][rng][partition]") {
  // Only uniform_int, uniform01 and shuffle (and IEEE sums) decide them; Dirichlet and quantity skew draw
  // gamma and normal values (libm) and are not here.
  Labels train(2000), test(1000);
  for (Index i = 0; i < train.size(); ++i) train[i] = std::int32_t((i * 7) % 10);
  for (Index i = 0; i < test.size(); ++i) test[i] = std::int32_t((i * 3) % 10);
  const auto hash = [](const Partition& p) {
    std::vector<std::uint64_t> all;
    for (const ClientSplit& c : p)
      for (const auto* v : {&c.train, &c.val, &c.test})
        for (Index i : *v) all.push_back(std::uint64_t(i));
    return fnv1a(all.data(), all.size());
  };
  Rng a(4);
  CHECK(hash(partition_majority(train, test, 10, PartitionSpec{6, 50, 20, 30, 0.8}, a)) == 0xfdbcfd53c6ed4166ULL);
  Rng b(5);
  CHECK(hash(partition_iid(train, test, 10, PartitionSpec{5, 40, 10, 20, 0.8}, b)) == 0x7a67f4b5dc3899deULL);
}

TEST_CASE("normal and gamma draws agree with x86-64 to a few ULP (libm is not bitwise across CPUs)",
          "[portable][rng][tolerance]") {
  // Box-Muller and Marsaglia-Tsang call log, sin, cos and pow: glibc rounds up to 1 call in 1300 differently
  // with FMA (x86-64 with FMA, aarch64) and without (armhf, older x86-64). Hence a tolerance, not bits.
  Rng g(13);
  for (const double want : {0x1.60d9708c95353p-2, -0x1.a5ee62f4a6f85p+0, 0x1.b92701d1f60fp-3, 0x1.5de7d43164d81p-3})
    CHECK(g.normal() == Approx(want).epsilon(1e-14));
  Rng h(21);
  const double shapes[] = {2.5, 0.5, 2.5, 0.5};
  const double want[] = {0x1.e93d27dec15d5p+1, 0x1.684ace9f29a36p-1, 0x1.11725252db943p+0, 0x1.cf543117f0d12p-7};
  for (int i = 0; i < 4; ++i) CHECK(h.gamma(shapes[i]) == Approx(want[i]).epsilon(1e-13));
}

TEMPLATE_TEST_CASE("pixel bytes scale to x / 255 by IEEE division on every CPU", "[portable][io]", float, double) {
  // Eigen's packet division on ARMv7 NEON is a reciprocal estimate plus one Newton step: `inputs /= 255`
  // gave other last bits there. load_idx and load_npy_dataset divide in a scalar loop instead.
  std::vector<unsigned char> bytes(256);
  std::iota(bytes.begin(), bytes.end(), 0);
  std::vector<TestType> got(256);
  detail::scale_bytes(bytes.data(), bytes.size(), got.data());
  for (int k = 0; k < 256; ++k) {
    volatile TestType x = TestType(k);  // a scalar IEEE division, as the reference
    const TestType want = x / TestType(255);
    INFO("byte " << k);
    REQUIRE(bits_of(got[std::size_t(k)]) == bits_of(want));
  }
  if constexpr (std::is_same_v<TestType, float>) {
    CHECK(bits_of(got[1]) == bits_of(0x1.010102p-8f));
    CHECK(bits_of(got[254]) == bits_of(0x1.fdfdfep-1f));
  } else {
    CHECK(bits_of(got[1]) == bits_of(0x1.010101010101p-8));
    CHECK(bits_of(got[254]) == bits_of(0x1.fdfdfdfdfdfep-1));
  }

  // Through both readers: every byte value once (an IDX image of 16 x 16, and a (1, 256) uint8 .npy).
  test::TempDir dir("port");
  std::string images, labels;
  append_be32(images, 0x00000803u);
  append_be32(images, 1);
  append_be32(images, 16);
  append_be32(images, 16);
  images.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  append_be32(labels, 0x00000801u);
  append_be32(labels, 1);
  labels += char(3);
  write_bytes(dir.file("img"), images);
  write_bytes(dir.file("lab"), labels);
  const Dataset<TestType> idx = load_idx<TestType>(dir.file("img"), dir.file("lab"));
  write_bytes(dir.file("x.npy"), raw_npy("|u1", "(1, 256)", std::string(bytes.begin(), bytes.end())));
  write_bytes(dir.file("y.npy"), raw_npy("|u1", "(1,)", std::string(1, char(3))));
  const Dataset<TestType> npy = load_npy_dataset<TestType>(dir.file("x.npy"), dir.file("y.npy"), Shape{1, 16, 16}, 10);
  for (int k = 0; k < 256; ++k) {
    INFO("byte " << k);
    CHECK(bits_of(idx.inputs.data()[k]) == bits_of(got[std::size_t(k)]));
    CHECK(bits_of(npy.inputs.data()[k]) == bits_of(got[std::size_t(k)]));
  }
}

// ------------------------------------------------------------------------------------------------
// Sizes from files: computed in 64 bits, refused beyond this target's Index, never wrapped.

TEST_CASE("the size limits follow the target's Index", "[portable][limits]") {
  CHECK(detail::max_index == std::uint64_t(std::numeric_limits<Index>::max()));
  CHECK(detail::max_index_text().find(std::to_string(detail::max_index)) == 0);
  std::uint64_t out = 7;
  CHECK(detail::mul_within(1ULL << 32, 1ULL << 31, ~0ULL, out));
  CHECK(out == 1ULL << 63);
  CHECK_FALSE(detail::mul_within(1ULL << 32, 1ULL << 32, ~0ULL, out));
  CHECK(out == 1ULL << 63);
  // Compile-time limits that shifted a 32-bit Index by 53 before.
  CHECK(NoisyTopKGate<float>::max_experts == Index(1) << 24);
  CHECK(std::uint64_t(NoisyTopKGate<double>::max_experts) == (wide_sizes ? 1ULL << 53 : detail::max_index));
  CHECK(std::uint64_t(detail::max_split_size) == (wide_sizes ? 1ULL << 53 : detail::max_index));
  // A frame's 64-bit sample count as an Index.
  const std::int64_t big = std::int64_t(1) << 40;
  if (wide_sizes)
    CHECK(frame_index(big, "sample count", "rank 1") == Index(big));
  else
    CHECK_THROWS_WITH(frame_index(big, "sample count", "rank 1"),
                      Contains("message from rank 1: a sample count of 1099511627776, expected at most " +
                               detail::max_index_text()));
  CHECK(frame_index(-5, "sample count", "rank 1") == -5);
}

TEST_CASE("an IDX header of 65536 x 65536 pixels is read or refused by the target's limits", "[portable][io][idx]") {
  test::TempDir dir("port");
  auto header = [](std::uint32_t n) {
    std::string b;
    append_be32(b, 0x00000803u);
    append_be32(b, n);
    append_be32(b, 65536);
    append_be32(b, 65536);
    return b;
  };
  std::string labels0, labels1;
  append_be32(labels0, 0x00000801u);
  append_be32(labels0, 0);
  append_be32(labels1, 0x00000801u);
  append_be32(labels1, 1);
  labels1 += char(0);
  write_bytes(dir.file("img0"), header(0));
  write_bytes(dir.file("lab0"), labels0);
  write_bytes(dir.file("img1"), header(1));
  write_bytes(dir.file("lab1"), labels1);
  // 65536 x 65536 = 2^32 pixels per image: a 32-bit size_t wrapped it to 0 (and read 0 pixels per image).
  if (wide_sizes) {
    const Dataset<float> d = load_idx<float>(dir.file("img0"), dir.file("lab0"));
    CHECK(d.inputs.rows() == Index(1) << 32);
    CHECK(d.inputs.cols() == 0);
    CHECK(d.shape == Shape{1, 65536, 65536});
    CHECK_THROWS_WITH(load_idx<float>(dir.file("img1"), dir.file("lab1")),
                      Contains("is truncated: the header declares 4294967296 payload bytes, the file holds 0"));
  } else {
    const std::string refused = "images of 65536 x 65536 = 4294967296 pixels, expected at most " +
                                detail::max_index_text();
    CHECK_THROWS_WITH(load_idx<float>(dir.file("img0"), dir.file("lab0")), Contains(refused));
    CHECK_THROWS_WITH(load_idx<float>(dir.file("img1"), dir.file("lab1")), Contains(refused));
  }
}

TEST_CASE("a parameter record announcing 2^40 or 2^32 + 1 elements is refused, never wrapped", "[portable][io][serialization]") {
  const auto load = [](const std::string& bytes) {
    std::istringstream in(bytes);
    return load_parameters<float>(in, 1);
  };
  // 2^40 rows, then a second record: a 32-bit Index read the dim as 0 and the data as the next record.
  const std::string big = raw_parameter_file({{"big", {std::int64_t(1) << 40}, 0}, {"next", {1}, 1}});
  CHECK_THROWS_WITH(load(big), Contains("truncated file: expected 4398046511104 bytes for the data of record 0 'big' "
                                        "[1099511627776] (1099511627776 x float32)"));
  // 2^32 + 1 elements with 4 bytes of data: a 32-bit size_t wrapped the byte count to 4 and read 1 value.
  const std::string wraps = raw_parameter_file({{"wraps", {(std::int64_t(1) << 32) + 1}, 1}});
  CHECK_THROWS_WITH(load(wraps), Contains("truncated file: expected 17179869188 bytes for the data of record 0 "
                                          "'wraps' [4294967297]"));
  // 2^40 x 0: no data at all, but the dim must still fit an Index to be stored as one.
  const std::string empty = raw_parameter_file({{"empty", {std::int64_t(1) << 40, 0}, 0}, {"one", {1}, 1}});
  std::istringstream in(empty);
  if (wide_sizes) {
    const Vector<float> v = load_parameters<float>(in, 1);
    CHECK(v.size() == 1);
    CHECK(v[0] == 1.0f);
  } else {
    CHECK_THROWS_WITH(load_parameters<float>(in, 1),
                      Contains("record 0 'empty' [1099511627776, 0]: dimension 0 is 1099511627776, expected at most " +
                               detail::max_index_text()));
  }
}

TEST_CASE("a .npy shape whose product wraps or overflows is refused", "[portable][io][npy]") {
  test::TempDir dir("port");
  auto header_only = [&](const std::string& name, const std::string& shape, const std::string& data) {
    write_bytes(dir.file(name), raw_npy("|u1", shape, data));
    std::ifstream in(dir.file(name), std::ios::binary);
    return detail::read_npy_header(in, dir.file(name), "test");
  };
  // (2^32 + 1,) bytes with one byte of data: a 32-bit size_t wrapped the expected length to 1.
  CHECK_THROWS_WITH(header_only("wraps.npy", "(4294967297,)", "x"),
                    Contains("shape (4294967297,) of uint8 needs 4294967297 bytes, the file holds 1 (truncated)"));
  // 2^31 x 2^31 x 2^31 overflows 64 bits.
  CHECK_THROWS_WITH(header_only("overflow.npy", "(2147483648, 2147483648, 2147483648)", ""),
                    Contains("needs more than 2^62 bytes, the file holds 0 (truncated)"));
  // (0, 2^40): empty, but 2^40 must fit an Index.
  if (wide_sizes) {
    const detail::NpyHeader h = header_only("empty.npy", "(0, 1099511627776)", "");
    CHECK(h.count == 0);
    REQUIRE(h.shape.size() == 2);
    CHECK(h.shape[0] == 0);
    CHECK(std::uint64_t(h.shape[1]) == std::uint64_t(1) << 40);  // compared in 64 bits: no shift of a 32-bit Index
  } else {
    CHECK_THROWS_WITH(header_only("empty.npy", "(0, 1099511627776)", ""),
                      Contains("shape (0, 1099511627776): dimension 1 is 1099511627776, expected at most " +
                               detail::max_index_text()));
  }
  // load_npy_dataset of such an empty array: the per-sample product is checked too.
  write_bytes(dir.file("y0.npy"), raw_npy("|u1", "(0,)", ""));
  write_bytes(dir.file("x0.npy"), raw_npy("|u1", "(0, 2147483647, 2147483647, 2147483647)", ""));
  CHECK_THROWS(load_npy_dataset<float>(dir.file("x0.npy"), dir.file("y0.npy"), Shape{1, 28, 28}, 10));
}
