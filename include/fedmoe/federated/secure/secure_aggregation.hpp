#pragma once
/// @file secure_aggregation.hpp
/// @brief Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
/// Privacy-Preserving Machine Learning", CCS'17), optionally on the sparse Harary graph of SecAgg+
/// (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS'20), as
/// a message-level protocol: SecAggClient and SecAggServer exchange the message structs of
/// fedmoe::secagg, each of which serializes to and parses from std::vector<std::uint8_t>.
///
/// **This header needs libsodium** (`#include <sodium.h>`; link `pkg-config --libs libsodium`, Debian
/// libsodium-dev) and zlib (already a fedmoe dependency: the message checksum). It is included on its
/// own: fedmoe/fedmoe.hpp does not include it, and no other fedmoe header does.
///
/// **What it computes.** Each client u holds x_u in Z_2^32^L (FixedPointCodec turns a weighted update
/// into one). The server learns sum_{u in U3} x_u, U3 being the clients whose masked input arrived,
/// and otherwise only masked vectors, which are uniformly distributed: the honest-but-curious
/// guarantee of Bonawitz et al. (Sec. 6), for a server that may collude with fewer than t clients.
///
/// **Rounds** (U1 >= U2 >= U3 >= U4: the clients still present at each step):
///
/// | round | client u                                          | server                                  |
/// |-------|---------------------------------------------------|-----------------------------------------|
/// | 0     | advertise_keys(): AdvertiseKeys (c_pk, s_pk)      | receive each; key_directory(): U1       |
/// | 1     | share_keys(KeyDirectory): ShareKeys               | receive each; share_deliveries(): U2    |
/// | 2     | masked_input(ShareDelivery, x_u): MaskedInput     | receive each (summed); unmask_request() |
/// | 3     | unmask(UnmaskRequest): UnmaskResponse             | receive each; finish(): the sum         |
///
/// - Round 0: two X25519 key pairs, c (encrypts shares) and s (agrees the pairwise masks).
/// - Round 1: a fresh self-mask seed b_u (32 bytes) and s_sk_u are each shared t-of-h with Shamir
///   (shamir.hpp) among u's holders (all of U1 on the complete graph; u's neighbours in U1 and u on
///   the SecAgg+ graph); the share for holder v is sealed with XChaCha20-Poly1305 under
///   k_uv = BLAKE2b("fedmoe-secagg-share-key" | round | X25519(c_sk_u, c_pk_v) | ids and keys of u, v),
///   with associated data (protocol, version, round id, sender u, recipient v) and a random 24-byte
///   nonce: a share replayed from another round, delivered to another client or attributed to another
///   sender fails authentication, and the client refuses it naming the sender. k_uv is symmetric, so
///   a client derives it once per peer and opens the peer's shares to it with the same key.
/// - Round 2: y_u = x_u + PRG(b_u) + sum_{v in U2, v ~ u} Delta_uv PRG(s_uv) in Z_2^32, Delta_uv = +1 if
///   u < v else -1, s_uv = BLAKE2b("fedmoe-secagg-mask-key" | round | X25519(s_sk_u, s_pk_v) | ...).
///   PRG(k) is the ChaCha20 (IETF) keystream under key k and nonce ("mask" | round id), read as
///   little-endian 32-bit words. The server adds the y_u as they arrive (it keeps one vector, not n).
/// - Round 3: each survivor v reveals, for every holder-neighbour u in U2, its share of b_u if u is in
///   U3 and its share of s_sk_u if u dropped (U2 \ U3), never both: a client answers one unmask
///   request per round. The server reconstructs from U4, checks every dropped key against its
///   advertised s_pk, and subtracts PRG(b_u) (u in U3) and the survivors' pairwise masks with the
///   dropped clients: the pairwise masks between survivors cancel in the sum.
///
/// **Dropouts.** Up to n - t clients may drop at any point; the sum of U3 is recovered when every
/// step keeps at least t of them (on the sparse graph: at least t holders of every secret). A step
/// with fewer fails cleanly, naming the counts. A client that drops before round 2 is simply not in
/// the sum. A receive() that throws leaves the server unchanged, so a caller may treat the
/// offending sender as dropped and continue.
///
/// **Why t > h/2** (h = n, or k + 1 on the sparse graph). A dishonest server could tell some clients
/// that u survived (collecting shares of b_u) and others that u dropped (collecting shares of
/// s_sk_u); with both it unmasks x_u alone. Every client answers one request per round, so the two
/// groups are disjoint, and each needs t members: 2t > h makes that impossible. (Bonawitz et al.'s
/// active-security variant adds signatures and a consistency-check round for the same purpose; see
/// "Not implemented".)
///
/// **SecAgg+** (`SecAggConfig::neighbours` = k, even): the graph is Harary(n, k) with node labels
/// permuted by fedmoe::Rng::stream(graph_seed, round_id) (public), as in Google's fcp; each client
/// masks with and shares among its k ring neighbours only, so the clients' PRG work drops from
/// O(n L) to O(k L). Security and dropout robustness then hold with a probability that depends on k,
/// t and the dropout and corruption rates (Bell et al. bound it): choosing k and t is the caller's job.
///
/// **Messages.** Every message is a 32-byte header then a body, little-endian:
///
/// | offset | type | field                                                               |
/// |--------|------|---------------------------------------------------------------------|
/// | 0      | u32  | magic 0x47474153 (bytes "SAGG")                                     |
/// | 4      | u16  | version (1)                                                         |
/// | 6      | u16  | kind (secagg::MessageKind)                                          |
/// | 8      | u32  | CRC-32 (zlib) of the header with this field zero, then the body     |
/// | 12     | u32  | reserved, 0                                                         |
/// | 16     | u64  | round id                                                            |
/// | 24     | u64  | body length in bytes                                                |
///
/// parse() rejects, naming the expected and the actual value, a truncated or over-long message, a
/// wrong magic, version or kind, a checksum mismatch (corruption; the CRC is not a MAC: the shares
/// are protected by the AEAD), counts larger than the body and trailing bytes. Whether the ids in a
/// message are consistent with the protocol is checked by the receiving client or server.
///
/// **Determinism for tests.** Keys, seeds, nonces and Shamir coefficients come from SecAggEntropy:
/// libsodium's CSPRNG by default, or, for tests and benchmarks only, a ChaCha20 stream keyed from
/// fedmoe::Rng::stream(seed, id), which makes a whole protocol run reproducible.
///
/// **Not implemented.** The active-adversary variant (signatures of a PKI on the advertised keys and
/// the consistency-check round), SecAgg+ parameter selection (k and t from the dropout and
/// corruption rates), and transports: in-process and MPI integration carry the serialized bytes.
#include <sodium.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/rng.hpp"
#include "shamir.hpp"

namespace fedmoe {

// ---------------------------------------------------------------------------------------------------
// Configuration and graph
// ---------------------------------------------------------------------------------------------------

/// The public parameters of one secure aggregation, known to the server and every client.
struct SecAggConfig {
  std::uint64_t round_id = 0;       ///< distinct per aggregation: bound into every key, nonce and AEAD tag
  std::uint32_t num_clients = 0;    ///< n: client ids are 0 .. n - 1
  std::uint32_t threshold = 0;      ///< t: shares needed to reconstruct a secret; h/2 < t <= h
  std::uint64_t vector_length = 0;  ///< L: words of Z_2^32 per input (FixedPointCodec::encoded_length)
  std::uint32_t neighbours = 0;     ///< 0: complete graph (Bonawitz); k even, 2 <= k < n: SecAgg+ Harary graph
  std::uint64_t graph_seed = 0;     ///< public seed of the SecAgg+ graph's relabelling (unused when k = 0)
  friend bool operator==(const SecAggConfig&, const SecAggConfig&) = default;
};

/// The most clients one aggregation accepts.
inline constexpr std::uint32_t secagg_max_clients = 1u << 20;
/// The longest input, in words (ChaCha20-IETF's 32-bit block counter allows 2^36).
inline constexpr std::uint64_t secagg_max_length = std::uint64_t(1) << 32;

/// h: the holders of each client's shares (n, or k + 1 on the sparse graph).
inline std::uint32_t secagg_holders(const SecAggConfig& c) { return c.neighbours == 0 ? c.num_clients : c.neighbours + 1; }

/// Checks n, k, t and L; fails naming the bad value and the expected range.
inline void check_secagg_config(const SecAggConfig& c) {
  FEDMOE_CHECK(c.num_clients >= 2 && c.num_clients <= secagg_max_clients, "SecAggConfig: expected 2 <= n <= ",
               secagg_max_clients, " clients, got n = ", c.num_clients);
  FEDMOE_CHECK(c.neighbours == 0 || (c.neighbours % 2 == 0 && c.neighbours >= 2 && c.neighbours < c.num_clients),
               "SecAggConfig: expected neighbours k = 0 (complete graph) or an even k with 2 <= k < n = ", c.num_clients,
               " (SecAgg+ Harary graph), got k = ", c.neighbours);
  const std::uint32_t h = secagg_holders(c);
  FEDMOE_CHECK(std::uint64_t(c.threshold) * 2 > h && c.threshold <= h, "SecAggConfig: expected a threshold t with ", h,
               "/2 < t <= ", h, c.neighbours == 0 ? " (n clients" : " (k + 1 holders of each secret",
               "; t > h/2 keeps a server from collecting t shares of both masks of one client), got t = ", c.threshold);
  FEDMOE_CHECK(c.vector_length >= 1 && c.vector_length <= secagg_max_length, "SecAggConfig: expected a vector length 1 <= L <= ",
               secagg_max_length, " words, got L = ", c.vector_length);
}

/// Who shares with whom: holders(u) are the clients that receive shares of u's secrets and agree a
/// pairwise mask with u, u itself included, in ascending order. Complete graph: everyone. SecAgg+:
/// the Harary graph H(n, k) (a ring, each node joined to its k/2 nearest on either side) with labels
/// permuted by Rng::stream(graph_seed, round_id). Symmetric: v in holders(u) iff u in holders(v).
class SecAggGraph {
public:
  explicit SecAggGraph(const SecAggConfig& c)
      : m_n(c.num_clients), m_h(secagg_holders(c)), m_complete(c.neighbours == 0) {
    check_secagg_config(c);
    if (m_complete) {
      m_holders.resize(m_n);
      for (std::uint32_t v = 0; v < m_n; ++v) m_holders[v] = v;
      return;
    }
    std::vector<std::uint32_t> label(m_n);  // ring position -> client id
    for (std::uint32_t p = 0; p < m_n; ++p) label[p] = p;
    Rng rng = Rng::stream(c.graph_seed, c.round_id);
    rng.shuffle(label.begin(), label.end());
    m_holders.resize(std::size_t(m_n) * m_h);
    const std::uint32_t half = c.neighbours / 2;
    for (std::uint32_t p = 0; p < m_n; ++p) {
      std::uint32_t* row = m_holders.data() + std::size_t(label[p]) * m_h;
      for (std::uint32_t d = 0; d < m_h; ++d) row[d] = label[(p + m_n - half + d) % m_n];
      std::sort(row, row + m_h);
    }
  }

  std::uint32_t num_clients() const { return m_n; }
  bool complete() const { return m_complete; }
  /// The holders of u's secrets (u's neighbours and u), ascending.
  std::span<const std::uint32_t> holders(std::uint32_t u) const {
    FEDMOE_CHECK(u < m_n, "SecAggGraph::holders: expected a client id < n = ", m_n, ", got ", u);
    if (complete()) return std::span<const std::uint32_t>(m_holders);
    return std::span<const std::uint32_t>(m_holders).subspan(std::size_t(u) * m_h, m_h);
  }
  /// Whether v holds u's shares (and masks with u); u holds its own.
  bool holds(std::uint32_t v, std::uint32_t u) const {
    const auto h = holders(u);
    return std::binary_search(h.begin(), h.end(), v);
  }

private:
  std::uint32_t m_n;
  std::uint32_t m_h;
  bool m_complete;
  std::vector<std::uint32_t> m_holders;  // complete: 0..n-1 once; sparse: n rows of h, row u = holders(u)
};

// ---------------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------------

namespace detail {
inline void ensure_sodium() {
  static const int status = sodium_init();  // 0: initialised, 1: already was, -1: failure
  FEDMOE_CHECK(status >= 0, "secure aggregation: sodium_init() failed (", status, "): libsodium is unusable");
}
inline void store_le32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::uint8_t(v >> (8 * i));
}
inline void store_le64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = std::uint8_t(v >> (8 * i));
}
inline std::uint32_t load_le32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint64_t load_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace detail

/// Where a client's keys, seeds, nonces and Shamir coefficients come from. Also a
/// std::uniform_random_bit_generator of 64-bit words (shamir::RandomWords).
class SecAggEntropy {
public:
  using result_type = std::uint64_t;

  /// The operating system's CSPRNG through libsodium's randombytes_buf: what a deployment uses.
  static SecAggEntropy system() { return SecAggEntropy(); }

  /// FOR TESTS AND BENCHMARKS ONLY: a reproducible ChaCha20 stream keyed by four words of
  /// fedmoe::Rng::stream(seed, stream). Whoever knows the seed knows every key and mask.
  static SecAggEntropy deterministic(std::uint64_t seed, std::uint64_t stream) {
    SecAggEntropy e;
    e.m_deterministic = true;
    Rng rng = Rng::stream(seed, stream);
    for (int i = 0; i < 4; ++i) detail::store_le64(e.m_key.data() + 8 * i, rng());
    return e;
  }

  SecAggEntropy(const SecAggEntropy&) = delete;
  SecAggEntropy& operator=(const SecAggEntropy&) = delete;
  SecAggEntropy(SecAggEntropy&& other) noexcept { *this = std::move(other); }
  SecAggEntropy& operator=(SecAggEntropy&& other) noexcept {
    m_deterministic = other.m_deterministic;
    m_key = other.m_key;
    m_counter = other.m_counter;
    m_word_buffer = other.m_word_buffer;
    m_word_pos = other.m_word_pos;
    sodium_memzero(other.m_key.data(), other.m_key.size());
    sodium_memzero(other.m_word_buffer.data(), other.m_word_buffer.size());
    return *this;
  }
  ~SecAggEntropy() {
    sodium_memzero(m_key.data(), m_key.size());
    sodium_memzero(m_word_buffer.data(), m_word_buffer.size());
  }

  bool is_deterministic() const { return m_deterministic; }

  /// Fills `out` with random bytes.
  void fill(std::span<std::uint8_t> out) {
    if (out.empty()) return;
    if (!m_deterministic) {
      randombytes_buf(out.data(), out.size());
      return;
    }
    std::array<std::uint8_t, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{};
    detail::store_le64(nonce.data(), m_counter++);  // a fresh nonce per call: the stream never repeats
    crypto_stream_chacha20_ietf(out.data(), out.size(), nonce.data(), m_key.data());
  }

  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() {
    if (m_word_pos == m_word_buffer.size()) {
      fill(m_word_buffer);
      m_word_pos = 0;
    }
    const result_type w = detail::load_le64(m_word_buffer.data() + m_word_pos);
    m_word_pos += 8;
    return w;
  }

private:
  SecAggEntropy() { detail::ensure_sodium(); }

  bool m_deterministic = false;
  std::array<std::uint8_t, 32> m_key{};
  std::uint64_t m_counter = 0;
  std::array<std::uint8_t, 256> m_word_buffer{};
  std::size_t m_word_pos = 256;
};

// ---------------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------------

namespace secagg {

using Key = std::array<std::uint8_t, 32>;

inline constexpr std::uint32_t magic = 0x47474153u;  // bytes "SAGG"
inline constexpr std::uint16_t version = 1;
inline constexpr std::size_t header_bytes = 32;
inline constexpr std::size_t key_bytes = 32;
/// Field elements of a share of a 32-byte secret (7-byte chunks).
inline constexpr std::size_t share_elements = shamir::chunks_for(key_bytes);
inline constexpr std::size_t nonce_bytes = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
/// Plaintext of a sealed share: the share of s_sk, then the share of b (field elements, LE u64).
inline constexpr std::size_t share_plain_bytes = 2 * share_elements * 8;
inline constexpr std::size_t share_cipher_bytes = share_plain_bytes + crypto_aead_xchacha20poly1305_ietf_ABYTES;

enum class MessageKind : std::uint16_t {
  advertise_keys = 1,   ///< client -> server, round 0
  key_directory = 2,    ///< server -> clients, round 1
  share_keys = 3,       ///< client -> server, round 1
  share_delivery = 4,   ///< server -> one client, round 2
  masked_input = 5,     ///< client -> server, round 2
  unmask_request = 6,   ///< server -> clients, round 3
  unmask_response = 7,  ///< client -> server, round 3
};

inline const char* to_string(MessageKind k) {
  switch (k) {
    case MessageKind::advertise_keys: return "advertise_keys";
    case MessageKind::key_directory: return "key_directory";
    case MessageKind::share_keys: return "share_keys";
    case MessageKind::share_delivery: return "share_delivery";
    case MessageKind::masked_input: return "masked_input";
    case MessageKind::unmask_request: return "unmask_request";
    case MessageKind::unmask_response: return "unmask_response";
  }
  return "unknown";
}

namespace detail {
using fedmoe::detail::load_le32;
using fedmoe::detail::load_le64;
using fedmoe::detail::store_le32;
using fedmoe::detail::store_le64;

inline std::uint32_t checksum(std::span<const std::uint8_t> header, std::span<const std::uint8_t> body) {
  std::array<std::uint8_t, header_bytes> h{};
  std::memcpy(h.data(), header.data(), header_bytes);
  store_le32(h.data() + 8, 0);
  uLong crc = ::crc32_z(0L, Z_NULL, 0);
  crc = ::crc32_z(crc, h.data(), h.size());
  if (!body.empty()) crc = ::crc32_z(crc, body.data(), body.size());
  return std::uint32_t(crc);
}

/// Builds one message: the header, then the body appended field by field.
class Writer {
public:
  Writer(MessageKind kind, std::uint64_t round, std::size_t body_bytes) {
    m_buf.reserve(header_bytes + body_bytes);
    m_buf.resize(header_bytes);
    store_le32(m_buf.data(), magic);
    m_buf[4] = std::uint8_t(version & 0xff);
    m_buf[5] = std::uint8_t(version >> 8);
    m_buf[6] = std::uint8_t(std::uint16_t(kind) & 0xff);
    m_buf[7] = std::uint8_t(std::uint16_t(kind) >> 8);
    store_le64(m_buf.data() + 16, round);
  }
  void u8(std::uint8_t v) { m_buf.push_back(v); }
  void u32(std::uint32_t v) {
    const std::size_t at = grow(4);
    store_le32(m_buf.data() + at, v);
  }
  void u64(std::uint64_t v) {
    const std::size_t at = grow(8);
    store_le64(m_buf.data() + at, v);
  }
  void bytes(std::span<const std::uint8_t> b) {
    const std::size_t at = grow(b.size());
    if (!b.empty()) std::memcpy(m_buf.data() + at, b.data(), b.size());
  }
  void words(std::span<const std::uint32_t> w) {
    const std::size_t at = grow(4 * w.size());
    if constexpr (std::endian::native == std::endian::little) {
      if (!w.empty()) std::memcpy(m_buf.data() + at, w.data(), 4 * w.size());
    } else {
      for (std::size_t i = 0; i < w.size(); ++i) store_le32(m_buf.data() + at + 4 * i, w[i]);
    }
  }
  std::vector<std::uint8_t> finish() && {
    const std::span<const std::uint8_t> all(m_buf);
    store_le64(m_buf.data() + 24, std::uint64_t(m_buf.size() - header_bytes));
    store_le32(m_buf.data() + 8, checksum(all.first(header_bytes), all.subspan(header_bytes)));
    return std::move(m_buf);
  }

private:
  std::size_t grow(std::size_t n) {
    const std::size_t at = m_buf.size();
    m_buf.resize(at + n);
    return at;
  }
  std::vector<std::uint8_t> m_buf;
};

/// Checks a message's header and reads its body; every read is length-checked.
class Reader {
public:
  Reader(std::span<const std::uint8_t> bytes, MessageKind expected) : m_kind(expected) {
    FEDMOE_CHECK(bytes.size() >= header_bytes, prefix(), "truncated: ", bytes.size(), " bytes, expected at least the ",
                 header_bytes, "-byte header");
    const std::uint32_t m = load_le32(bytes.data());
    FEDMOE_CHECK(m == magic, prefix(), "bad magic 0x", hex(m), ", expected 0x", hex(magic),
                 " (not a fedmoe secure-aggregation message)");
    const std::uint16_t v = std::uint16_t(bytes[4] | (bytes[5] << 8));
    FEDMOE_CHECK(v == version, prefix(), "version ", v, ", expected ", version);
    const std::uint64_t body = load_le64(bytes.data() + 24);
    const std::size_t have = bytes.size() - header_bytes;
    FEDMOE_CHECK(body == have, prefix(), "length mismatch: the header announces ", body, " body bytes, got ", have,
                 have < body ? " (truncated)" : " (trailing bytes)");
    const std::uint32_t crc = checksum(bytes.first(header_bytes), bytes.subspan(header_bytes));
    const std::uint32_t said = load_le32(bytes.data() + 8);
    FEDMOE_CHECK(crc == said, prefix(), "checksum mismatch: CRC-32 0x", hex(crc), ", the header says 0x", hex(said),
                 " (corrupted message)");
    const std::uint16_t k = std::uint16_t(bytes[6] | (bytes[7] << 8));
    FEDMOE_CHECK(k == std::uint16_t(expected), prefix(), "expected kind ", std::uint16_t(expected), " ('",
                 to_string(expected), "'), got kind ", k, " ('", to_string(MessageKind(k)), "')");
    const std::uint32_t reserved = load_le32(bytes.data() + 12);
    FEDMOE_CHECK(reserved == 0, prefix(), "reserved header field ", reserved, ", expected 0");
    m_round = load_le64(bytes.data() + 16);
    m_body = bytes.subspan(header_bytes);
  }

  std::uint64_t round() const { return m_round; }
  std::uint8_t u8() { return take(1, "u8")[0]; }
  std::uint32_t u32() { return load_le32(take(4, "u32").data()); }
  std::uint64_t u64() { return load_le64(take(8, "u64").data()); }
  void bytes(std::span<std::uint8_t> out) {
    const auto b = take(out.size(), "bytes");
    if (!out.empty()) std::memcpy(out.data(), b.data(), out.size());
  }
  void words(std::span<std::uint32_t> out) {
    const auto b = take(4 * out.size(), "words");
    if constexpr (std::endian::native == std::endian::little) {
      if (!out.empty()) std::memcpy(out.data(), b.data(), b.size());
    } else {
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_le32(b.data() + 4 * i);
    }
  }
  /// A count of items of `item_bytes` each that must fit in the rest of the body (checked before
  /// anything is allocated for them).
  std::size_t count(std::uint64_t n, std::size_t item_bytes, const char* what) const {
    const std::size_t left = m_body.size() - m_at;
    FEDMOE_CHECK(n <= left / item_bytes, prefix(), "announces ", n, " ", what, " of ", item_bytes, " bytes, but only ",
                 left, " body bytes are left (truncated or corrupt)");
    return std::size_t(n);
  }
  void finish() const {
    FEDMOE_CHECK(m_at == m_body.size(), prefix(), m_body.size() - m_at, " trailing bytes after the ", m_at,
                 "-byte body");
  }
  std::string prefix() const { return std::string("secagg '") + to_string(m_kind) + "' message: "; }

private:
  std::span<const std::uint8_t> take(std::size_t n, const char* what) {
    FEDMOE_CHECK(n <= m_body.size() - m_at, prefix(), "truncated body: reading ", n, " bytes (", what, ") at offset ",
                 m_at, ", the body has ", m_body.size());
    const auto s = m_body.subspan(m_at, n);
    m_at += n;
    return s;
  }
  static std::string hex(std::uint32_t v) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s(8, '0');
    for (int i = 7; i >= 0; --i, v >>= 4) s[std::size_t(i)] = digits[v & 15u];
    return s;
  }

  MessageKind m_kind;
  std::uint64_t m_round = 0;
  std::span<const std::uint8_t> m_body;
  std::size_t m_at = 0;
};

inline std::vector<std::uint32_t> read_ids(Reader& r, const char* what) {
  std::vector<std::uint32_t> ids(r.count(r.u32(), 4, what));
  for (auto& id : ids) id = r.u32();
  return ids;
}
inline void write_ids(Writer& w, std::span<const std::uint32_t> ids) {
  w.u32(std::uint32_t(ids.size()));
  for (auto id : ids) w.u32(id);
}
}  // namespace detail

/// The kind of a serialized message (magic and version checked, nothing else): for dispatching.
inline MessageKind peek_kind(std::span<const std::uint8_t> bytes) {
  FEDMOE_CHECK(bytes.size() >= header_bytes, "secagg message: truncated: ", bytes.size(),
               " bytes, expected at least the ", header_bytes, "-byte header");
  FEDMOE_CHECK(detail::load_le32(bytes.data()) == magic, "secagg message: bad magic, expected bytes \"SAGG\"");
  const std::uint16_t v = std::uint16_t(bytes[4] | (bytes[5] << 8));
  FEDMOE_CHECK(v == version, "secagg message: version ", v, ", expected ", version);
  return MessageKind(std::uint16_t(bytes[6] | (bytes[7] << 8)));
}

/// A client's two public keys.
struct ClientKeys {
  std::uint32_t client = 0;
  Key c_pk{};  ///< encrypts the shares sent to this client
  Key s_pk{};  ///< agrees the pairwise masks
  friend bool operator==(const ClientKeys&, const ClientKeys&) = default;
};

/// Round 0, client -> server.
struct AdvertiseKeys {
  std::uint64_t round_id = 0;
  ClientKeys keys;

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::advertise_keys, round_id, 4 + 2 * key_bytes);
    w.u32(keys.client);
    w.bytes(keys.c_pk);
    w.bytes(keys.s_pk);
    return std::move(w).finish();
  }
  static AdvertiseKeys parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::advertise_keys);
    AdvertiseKeys m;
    m.round_id = r.round();
    m.keys.client = r.u32();
    r.bytes(m.keys.c_pk);
    r.bytes(m.keys.s_pk);
    r.finish();
    return m;
  }
};

/// Round 1, server -> every client of U1: the public parameters and the keys of U1 (ascending ids).
struct KeyDirectory {
  SecAggConfig config;  ///< its round_id is the message's
  std::vector<ClientKeys> clients;

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::key_directory, config.round_id, 32 + clients.size() * (4 + 2 * key_bytes));
    w.u32(config.num_clients);
    w.u32(config.threshold);
    w.u64(config.vector_length);
    w.u32(config.neighbours);
    w.u64(config.graph_seed);
    w.u32(std::uint32_t(clients.size()));
    for (const auto& c : clients) {
      w.u32(c.client);
      w.bytes(c.c_pk);
      w.bytes(c.s_pk);
    }
    return std::move(w).finish();
  }
  static KeyDirectory parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::key_directory);
    KeyDirectory m;
    m.config.round_id = r.round();
    m.config.num_clients = r.u32();
    m.config.threshold = r.u32();
    m.config.vector_length = r.u64();
    m.config.neighbours = r.u32();
    m.config.graph_seed = r.u64();
    m.clients.resize(r.count(r.u32(), 4 + 2 * key_bytes, "client keys"));
    for (auto& c : m.clients) {
      c.client = r.u32();
      r.bytes(c.c_pk);
      r.bytes(c.s_pk);
    }
    r.finish();
    return m;
  }
};

/// A share sealed for one holder. `peer` is the recipient in ShareKeys, the sender in ShareDelivery.
struct EncryptedShare {
  std::uint32_t peer = 0;
  std::array<std::uint8_t, nonce_bytes> nonce{};
  std::array<std::uint8_t, share_cipher_bytes> ciphertext{};
  friend bool operator==(const EncryptedShare&, const EncryptedShare&) = default;
};
inline constexpr std::size_t encrypted_share_bytes = 4 + nonce_bytes + share_cipher_bytes;

namespace detail {
inline void write_shares(Writer& w, std::span<const EncryptedShare> shares) {
  w.u32(std::uint32_t(shares.size()));
  for (const auto& s : shares) {
    w.u32(s.peer);
    w.bytes(s.nonce);
    w.bytes(s.ciphertext);
  }
}
inline std::vector<EncryptedShare> read_shares(Reader& r) {
  std::vector<EncryptedShare> shares(r.count(r.u32(), encrypted_share_bytes, "encrypted shares"));
  for (auto& s : shares) {
    s.peer = r.u32();
    r.bytes(s.nonce);
    r.bytes(s.ciphertext);
  }
  return shares;
}
}  // namespace detail

/// Round 1, client -> server: one sealed share pair for each other holder in U1 (ascending ids).
struct ShareKeys {
  std::uint64_t round_id = 0;
  std::uint32_t sender = 0;
  std::vector<EncryptedShare> shares;  ///< peer = recipient

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::share_keys, round_id, 8 + shares.size() * encrypted_share_bytes);
    w.u32(sender);
    detail::write_shares(w, shares);
    return std::move(w).finish();
  }
  static ShareKeys parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::share_keys);
    ShareKeys m;
    m.round_id = r.round();
    m.sender = r.u32();
    m.shares = detail::read_shares(r);
    r.finish();
    return m;
  }
};

/// Round 2, server -> one client of U2: the shares addressed to it by the other members of U2.
struct ShareDelivery {
  std::uint64_t round_id = 0;
  std::uint32_t recipient = 0;
  std::vector<EncryptedShare> shares;  ///< peer = sender, ascending

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::share_delivery, round_id, 8 + shares.size() * encrypted_share_bytes);
    w.u32(recipient);
    detail::write_shares(w, shares);
    return std::move(w).finish();
  }
  static ShareDelivery parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::share_delivery);
    ShareDelivery m;
    m.round_id = r.round();
    m.recipient = r.u32();
    m.shares = detail::read_shares(r);
    r.finish();
    return m;
  }
};

/// Round 2, client -> server: y_u = x_u + masks, L words.
struct MaskedInput {
  std::uint64_t round_id = 0;
  std::uint32_t sender = 0;
  std::vector<std::uint32_t> masked;

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::masked_input, round_id, 12 + 4 * masked.size());
    w.u32(sender);
    w.u64(masked.size());
    w.words(masked);
    return std::move(w).finish();
  }
  static MaskedInput parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::masked_input);
    MaskedInput m;
    m.round_id = r.round();
    m.sender = r.u32();
    m.masked.resize(r.count(r.u64(), 4, "words"));
    r.words(m.masked);
    r.finish();
    return m;
  }
};

/// Round 3, server -> every client of U3: who survived (U3) and who dropped (U2 \ U3), ascending.
struct UnmaskRequest {
  std::uint64_t round_id = 0;
  std::vector<std::uint32_t> survivors;
  std::vector<std::uint32_t> dropped;

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::unmask_request, round_id, 8 + 4 * (survivors.size() + dropped.size()));
    detail::write_ids(w, survivors);
    detail::write_ids(w, dropped);
    return std::move(w).finish();
  }
  static UnmaskRequest parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::unmask_request);
    UnmaskRequest m;
    m.round_id = r.round();
    m.survivors = detail::read_ids(r, "survivor ids");
    m.dropped = detail::read_ids(r, "dropped ids");
    r.finish();
    return m;
  }
};

/// Which secret a revealed share belongs to.
enum class SecretKind : std::uint8_t {
  self_mask_seed = 1,  ///< b_u, revealed for a survivor
  mask_key = 2,        ///< s_sk_u, revealed for a dropped client
};
inline const char* to_string(SecretKind k) {
  switch (k) {
    case SecretKind::self_mask_seed: return "self-mask seed";
    case SecretKind::mask_key: return "mask key";
  }
  return "unknown";
}

/// The responder's share of `owner`'s secret (its x coordinate is the responder's id + 1).
struct RevealedShare {
  std::uint32_t owner = 0;
  SecretKind kind = SecretKind::self_mask_seed;
  std::array<std::uint64_t, share_elements> y{};
  friend bool operator==(const RevealedShare&, const RevealedShare&) = default;
};
inline constexpr std::size_t revealed_share_bytes = 4 + 1 + 8 * share_elements;

/// Round 3, client -> server: one share per holder-neighbour in U2 (itself included), ascending owners.
struct UnmaskResponse {
  std::uint64_t round_id = 0;
  std::uint32_t sender = 0;
  std::vector<RevealedShare> shares;

  std::vector<std::uint8_t> serialize() const {
    detail::Writer w(MessageKind::unmask_response, round_id, 8 + shares.size() * revealed_share_bytes);
    w.u32(sender);
    w.u32(std::uint32_t(shares.size()));
    for (const auto& s : shares) {
      w.u32(s.owner);
      w.u8(std::uint8_t(s.kind));
      for (auto e : s.y) w.u64(e);
    }
    return std::move(w).finish();
  }
  static UnmaskResponse parse(std::span<const std::uint8_t> bytes) {
    detail::Reader r(bytes, MessageKind::unmask_response);
    UnmaskResponse m;
    m.round_id = r.round();
    m.sender = r.u32();
    m.shares.resize(r.count(r.u32(), revealed_share_bytes, "revealed shares"));
    for (auto& s : m.shares) {
      s.owner = r.u32();
      const std::uint8_t k = r.u8();
      FEDMOE_CHECK(k == 1 || k == 2, r.prefix(), "secret kind ", int(k), " for owner ", s.owner,
                   ", expected 1 (self-mask seed) or 2 (mask key)");
      s.kind = SecretKind(k);
      for (auto& e : s.y) e = r.u64();
    }
    r.finish();
    return m;
  }
};

}  // namespace secagg

// ---------------------------------------------------------------------------------------------------
// Cryptographic steps shared by client and server
// ---------------------------------------------------------------------------------------------------

namespace detail {

using SecAggKey = secagg::Key;

/// A fresh X25519 key pair from `entropy`.
inline void secagg_keypair(SecAggEntropy& entropy, SecAggKey& sk, SecAggKey& pk) {
  entropy.fill(sk);
  FEDMOE_CHECK(crypto_scalarmult_base(pk.data(), sk.data()) == 0, "secure aggregation: X25519 key generation failed");
}

/// The symmetric key of the pair (a, b) for `label`: BLAKE2b-256(label | round | X25519(sk_a, pk_b) |
/// lower id | its key | higher id | its key). Both ends (and the server, holding a reconstructed sk)
/// derive the same key.
inline SecAggKey secagg_agree(const SecAggKey& my_sk, std::uint32_t me, const SecAggKey& my_pk, std::uint32_t peer,
                              const SecAggKey& peer_pk, std::string_view label, std::uint64_t round) {
  SecAggKey q;
  FEDMOE_CHECK(crypto_scalarmult(q.data(), my_sk.data(), peer_pk.data()) == 0, "secure aggregation: client ", peer,
               "'s public key is a low-order X25519 point (refused: it would give a known shared key)");
  std::array<std::uint8_t, 8> r8;
  store_le64(r8.data(), round);
  std::array<std::uint8_t, 4> lo_id, hi_id;
  const bool mine_first = me < peer;
  store_le32(lo_id.data(), mine_first ? me : peer);
  store_le32(hi_id.data(), mine_first ? peer : me);
  const SecAggKey& lo_pk = mine_first ? my_pk : peer_pk;
  const SecAggKey& hi_pk = mine_first ? peer_pk : my_pk;
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(label.data()), label.size());
  crypto_generichash_update(&st, r8.data(), r8.size());
  crypto_generichash_update(&st, q.data(), q.size());
  crypto_generichash_update(&st, lo_id.data(), lo_id.size());
  crypto_generichash_update(&st, lo_pk.data(), lo_pk.size());
  crypto_generichash_update(&st, hi_id.data(), hi_id.size());
  crypto_generichash_update(&st, hi_pk.data(), hi_pk.size());
  SecAggKey out;
  crypto_generichash_final(&st, out.data(), out.size());
  sodium_memzero(q.data(), q.size());
  sodium_memzero(&st, sizeof st);
  return out;
}

inline constexpr std::string_view secagg_share_label = "fedmoe-secagg-share-key";
inline constexpr std::string_view secagg_mask_label = "fedmoe-secagg-mask-key";
inline constexpr std::string_view secagg_ad_label = "fedmoe-secagg-share";

/// Associated data of a sealed share: label | version | round | sender | recipient.
inline std::array<std::uint8_t, secagg_ad_label.size() + 2 + 8 + 4 + 4> secagg_share_ad(std::uint64_t round,
                                                                                        std::uint32_t sender,
                                                                                        std::uint32_t recipient) {
  std::array<std::uint8_t, secagg_ad_label.size() + 2 + 8 + 4 + 4> ad{};
  std::memcpy(ad.data(), secagg_ad_label.data(), secagg_ad_label.size());
  std::uint8_t* p = ad.data() + secagg_ad_label.size();
  p[0] = std::uint8_t(secagg::version & 0xff);
  p[1] = std::uint8_t(secagg::version >> 8);
  store_le64(p + 2, round);
  store_le32(p + 10, sender);
  store_le32(p + 14, recipient);
  return ad;
}

/// One PRG stream to add (or subtract) into a vector.
struct SecAggMask {
  SecAggKey seed{};
  bool subtract = false;
};

/// y[i] (+|-)= PRG(seed)[i] for every mask: ChaCha20-IETF keystream under the seed with nonce
/// ("mask" | round), little-endian words. Chunk-outer (16 KiB of y stays in L1 while every stream
/// is added), so y is read and written once whatever the number of masks.
inline void secagg_apply_masks(std::span<std::uint32_t> y, std::span<const SecAggMask> masks, std::uint64_t round) {
  constexpr std::size_t chunk_words = 4096;  // 16 KiB = 256 ChaCha20 blocks
  static const std::array<std::uint8_t, 4 * chunk_words> zeros{};
  std::array<std::uint8_t, crypto_stream_chacha20_ietf_NONCEBYTES> nonce{'m', 'a', 's', 'k'};
  store_le64(nonce.data() + 4, round);
  alignas(64) std::array<std::uint8_t, 4 * chunk_words> stream;
  alignas(64) std::array<std::uint32_t, chunk_words> words;
  for (std::size_t off = 0; off < y.size(); off += chunk_words) {
    const std::size_t len = std::min(chunk_words, y.size() - off);
    const auto block = std::uint32_t(off / 16);  // 16 words per 64-byte block
    std::uint32_t* out = y.data() + off;
    for (const SecAggMask& m : masks) {
      crypto_stream_chacha20_ietf_xor_ic(stream.data(), zeros.data(), 4 * len, nonce.data(), block, m.seed.data());
      if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(words.data(), stream.data(), 4 * len);
      } else {
        for (std::size_t i = 0; i < len; ++i) words[i] = load_le32(stream.data() + 4 * i);
      }
      if (m.subtract)
        for (std::size_t i = 0; i < len; ++i) out[i] -= words[i];
      else
        for (std::size_t i = 0; i < len; ++i) out[i] += words[i];
    }
  }
  sodium_memzero(stream.data(), stream.size());
  sodium_memzero(words.data(), sizeof words);
}

/// Checks that ids are strictly ascending and < n; `what` names the list in the error.
inline void secagg_check_ids(std::span<const std::uint32_t> ids, std::uint32_t n, const std::string& who,
                             const char* what) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    FEDMOE_CHECK(ids[i] < n, who, ": ", what, " lists client ", ids[i], ", expected ids < n = ", n);
    FEDMOE_CHECK(i == 0 || ids[i - 1] < ids[i], who, ": ", what, " lists client ", ids[i], " after client ",
                 ids[i - 1], ", expected strictly ascending ids (no duplicates)");
  }
}

inline bool secagg_contains(std::span<const std::uint32_t> sorted, std::uint32_t id) {
  return std::binary_search(sorted.begin(), sorted.end(), id);
}

template <class Array>
void secagg_wipe(Array& a) {
  sodium_memzero(a.data(), sizeof(typename Array::value_type) * a.size());
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------------

/// One client's side of one secure aggregation. Call advertise_keys, share_keys, masked_input and
/// unmask in that order (each once); a call out of order, or on a message that fails a check, throws
/// and leaves the client as it was. Secrets are wiped on destruction.
class SecAggClient {
public:
  enum class Phase : std::uint8_t { created, advertised, shared, masked, unmasked };

  SecAggClient(const SecAggConfig& config, std::uint32_t id, SecAggEntropy entropy = SecAggEntropy::system())
      : m_config(config), m_graph(config), m_id(id), m_entropy(std::move(entropy)) {
    FEDMOE_CHECK(id < config.num_clients, "SecAggClient: expected a client id < n = ", config.num_clients, ", got ", id);
  }
  SecAggClient(const SecAggClient&) = delete;
  SecAggClient& operator=(const SecAggClient&) = delete;
  SecAggClient(SecAggClient&&) = default;
  SecAggClient& operator=(SecAggClient&&) = default;
  ~SecAggClient() {
    detail::secagg_wipe(m_c_sk);
    detail::secagg_wipe(m_s_sk);
    detail::secagg_wipe(m_b);
    for (auto& k : m_share_keys) detail::secagg_wipe(k);
    for (auto& h : m_held) {
      detail::secagg_wipe(h.s_sk);
      detail::secagg_wipe(h.b);
    }
  }

  std::uint32_t id() const { return m_id; }
  Phase phase() const { return m_phase; }
  const SecAggConfig& config() const { return m_config; }

  /// Round 0: generates the c and s key pairs and advertises their public halves.
  secagg::AdvertiseKeys advertise_keys() {
    expect_phase(Phase::created, "advertise_keys");
    detail::secagg_keypair(m_entropy, m_c_sk, m_c_pk);
    detail::secagg_keypair(m_entropy, m_s_sk, m_s_pk);
    m_phase = Phase::advertised;
    return {m_config.round_id, {m_id, m_c_pk, m_s_pk}};
  }

  /// Round 1: checks the directory, draws the self-mask seed b, shares s_sk and b t-of-h among the
  /// holders in U1 and seals each holder's pair of shares for it.
  secagg::ShareKeys share_keys(const secagg::KeyDirectory& dir) {
    expect_phase(Phase::advertised, "share_keys");
    check_directory(dir);
    // The holders of my shares that advertised keys, myself included (ascending).
    std::vector<secagg::ClientKeys> peers;
    for (const auto& c : dir.clients)
      if (m_graph.holds(c.client, m_id)) peers.push_back(c);
    const std::uint32_t t = m_config.threshold;
    FEDMOE_CHECK(peers.size() >= t, who(), ": ", peers.size(), " of the ", m_graph.holders(m_id).size(),
                 " holders of its shares (itself included) advertised keys, expected at least the threshold t = ", t);
    std::vector<std::uint64_t> xs(peers.size());
    for (std::size_t i = 0; i < peers.size(); ++i) xs[i] = std::uint64_t(peers[i].client) + 1;
    secagg::Key b;
    m_entropy.fill(b);
    auto s_shares = shamir::split_bytes(m_s_sk, t, xs, m_entropy);
    auto b_shares = shamir::split_bytes(b, t, xs, m_entropy);

    secagg::ShareKeys msg{m_config.round_id, m_id, {}};
    msg.shares.reserve(peers.size() - 1);
    std::vector<HeldShares> held;
    // k_uv is symmetric: kept to open the shares v seals for this client in the next round.
    std::vector<secagg::Key> share_keys(peers.size(), secagg::Key{});
    std::array<std::uint8_t, secagg::share_plain_bytes> plain;
    for (std::size_t i = 0; i < peers.size(); ++i) {
      const std::uint32_t v = peers[i].client;
      if (v == m_id) {
        HeldShares own{m_id, {}, {}};
        std::copy(s_shares[i].y.begin(), s_shares[i].y.end(), own.s_sk.begin());
        std::copy(b_shares[i].y.begin(), b_shares[i].y.end(), own.b.begin());
        held.push_back(own);
        continue;
      }
      for (std::size_t c = 0; c < secagg::share_elements; ++c) {
        detail::store_le64(plain.data() + 8 * c, s_shares[i].y[c]);
        detail::store_le64(plain.data() + 8 * (secagg::share_elements + c), b_shares[i].y[c]);
      }
      const secagg::Key& key = share_keys[i] = detail::secagg_agree(m_c_sk, m_id, m_c_pk, v, peers[i].c_pk,
                                                                    detail::secagg_share_label, m_config.round_id);
      secagg::EncryptedShare sealed;
      sealed.peer = v;
      m_entropy.fill(sealed.nonce);
      const auto ad = detail::secagg_share_ad(m_config.round_id, m_id, v);
      unsigned long long clen = 0;
      crypto_aead_xchacha20poly1305_ietf_encrypt(sealed.ciphertext.data(), &clen, plain.data(), plain.size(), ad.data(),
                                                 ad.size(), nullptr, sealed.nonce.data(), key.data());
      msg.shares.push_back(sealed);
    }
    detail::secagg_wipe(plain);
    for (auto* shares : {&s_shares, &b_shares})
      for (auto& s : *shares) sodium_memzero(s.y.data(), 8 * s.y.size());
    // Commit.
    m_peers = std::move(peers);
    m_share_keys = std::move(share_keys);
    m_b = b;
    detail::secagg_wipe(b);
    m_held = std::move(held);
    m_phase = Phase::shared;
    return msg;
  }

  /// Round 2: opens the shares addressed to this client (refusing any that fails authentication) and
  /// returns y = x + PRG(b) + sum_v Delta PRG(s_uv) over the holders v that shared keys.
  secagg::MaskedInput masked_input(const secagg::ShareDelivery& d, std::span<const std::uint32_t> input) {
    expect_phase(Phase::shared, "masked_input");
    FEDMOE_CHECK(d.round_id == m_config.round_id, who(), ": a share delivery of round ", d.round_id, ", expected round ",
                 m_config.round_id);
    FEDMOE_CHECK(d.recipient == m_id, who(), ": a share delivery addressed to client ", d.recipient);
    FEDMOE_CHECK(input.size() == m_config.vector_length, who(), ": an input of ", input.size(), " words, expected L = ",
                 m_config.vector_length);
    std::vector<std::uint32_t> senders(d.shares.size());
    for (std::size_t i = 0; i < d.shares.size(); ++i) senders[i] = d.shares[i].peer;
    detail::secagg_check_ids(senders, m_config.num_clients, who(), "the share delivery");
    for (auto u : senders) {
      FEDMOE_CHECK(u != m_id, who(), ": the share delivery contains a share from the client itself");
      FEDMOE_CHECK(find_peer(u) != nullptr, who(), ": the share delivery contains a share from client ", u,
                   ", which is not a holder of this client's shares in U1");
    }
    const std::uint32_t t = m_config.threshold;
    FEDMOE_CHECK(senders.size() + 1 >= t, who(), ": shares from ", senders.size(),
                 " other clients; with itself ", senders.size() + 1,
                 " holders shared keys, expected at least the threshold t = ", t, " (the sum could not be unmasked)");
    // Open every share before changing anything.
    std::vector<HeldShares> opened;
    opened.reserve(senders.size());
    std::array<std::uint8_t, secagg::share_plain_bytes> plain;
    for (const auto& s : d.shares) {
      const secagg::Key& key = m_share_keys[std::size_t(find_peer(s.peer) - m_peers.data())];
      const auto ad = detail::secagg_share_ad(m_config.round_id, s.peer, m_id);
      unsigned long long mlen = 0;
      const int ok = crypto_aead_xchacha20poly1305_ietf_decrypt(plain.data(), &mlen, nullptr, s.ciphertext.data(),
                                                                s.ciphertext.size(), ad.data(), ad.size(),
                                                                s.nonce.data(), key.data());
      FEDMOE_CHECK(ok == 0 && mlen == plain.size(), who(), ": the share from client ", s.peer,
                   " failed authentication (round ", m_config.round_id, ", sender ", s.peer, ", recipient ", m_id,
                   "): it was tampered with, replayed from another round, addressed to another client or attributed "
                   "to the wrong sender");
      HeldShares h{s.peer, {}, {}};
      for (std::size_t c = 0; c < secagg::share_elements; ++c) {
        h.s_sk[c] = detail::load_le64(plain.data() + 8 * c);
        h.b[c] = detail::load_le64(plain.data() + 8 * (secagg::share_elements + c));
      }
      opened.push_back(h);
    }
    detail::secagg_wipe(plain);
    // Masks: the self mask, and one pairwise mask per other holder that shared keys.
    std::vector<detail::SecAggMask> masks;
    masks.reserve(senders.size() + 1);
    masks.push_back({m_b, false});
    for (auto v : senders) {
      const secagg::ClientKeys& pk = *find_peer(v);
      masks.push_back({detail::secagg_agree(m_s_sk, m_id, m_s_pk, v, pk.s_pk, detail::secagg_mask_label,
                                            m_config.round_id),
                       m_id > v});  // Delta_uv = +1 if u < v, -1 if u > v
    }
    secagg::MaskedInput out{m_config.round_id, m_id, std::vector<std::uint32_t>(input.begin(), input.end())};
    detail::secagg_apply_masks(out.masked, masks, m_config.round_id);
    for (auto& m : masks) detail::secagg_wipe(m.seed);
    // Commit.
    for (auto& k : m_share_keys) detail::secagg_wipe(k);
    m_share_keys.clear();
    for (const auto& h : opened) m_held.push_back(h);
    for (auto& h : opened) {
      detail::secagg_wipe(h.s_sk);
      detail::secagg_wipe(h.b);
    }
    std::sort(m_held.begin(), m_held.end(), [](const HeldShares& a, const HeldShares& b) { return a.owner < b.owner; });
    m_u2.clear();
    for (const auto& h : m_held) m_u2.push_back(h.owner);
    m_phase = Phase::masked;
    return out;
  }

  /// Round 3: for each holder-neighbour u that shared keys, reveals the share of b_u if the request
  /// lists u as a survivor and the share of s_sk_u if it lists u as dropped. Answers once per round.
  secagg::UnmaskResponse unmask(const secagg::UnmaskRequest& r) {
    FEDMOE_CHECK(m_phase != Phase::unmasked, who(), ": already answered an unmask request in round ",
                 m_config.round_id, "; a second answer could reveal both masks of a client");
    expect_phase(Phase::masked, "unmask");
    FEDMOE_CHECK(r.round_id == m_config.round_id, who(), ": an unmask request of round ", r.round_id,
                 ", expected round ", m_config.round_id);
    const std::uint32_t n = m_config.num_clients, t = m_config.threshold;
    detail::secagg_check_ids(r.survivors, n, who(), "the unmask request's survivors");
    detail::secagg_check_ids(r.dropped, n, who(), "the unmask request's dropped clients");
    for (auto u : r.dropped)
      FEDMOE_CHECK(!detail::secagg_contains(r.survivors, u), who(), ": the unmask request lists client ", u,
                   " both as a survivor and as dropped");
    FEDMOE_CHECK(detail::secagg_contains(r.survivors, m_id), who(),
                 ": the unmask request does not list this client as a survivor");
    FEDMOE_CHECK(r.survivors.size() >= t, who(), ": the unmask request lists ", r.survivors.size(),
                 " survivors, expected at least the threshold t = ", t);
    for (const auto* list : {&r.survivors, &r.dropped})
      for (auto u : *list)
        FEDMOE_CHECK(!m_graph.holds(m_id, u) || detail::secagg_contains(m_u2, u), who(), ": the unmask request lists client ",
                     u, list == &r.survivors ? " as a survivor" : " as dropped",
                     ", but its shares never reached this client (it did not share keys)");
    secagg::UnmaskResponse out{m_config.round_id, m_id, {}};
    out.shares.reserve(m_held.size());
    for (const auto& h : m_held) {
      const bool survived = detail::secagg_contains(r.survivors, h.owner);
      FEDMOE_CHECK(survived || detail::secagg_contains(r.dropped, h.owner), who(), ": the unmask request lists client ",
                   h.owner, " (which shared keys with this client) neither as a survivor nor as dropped");
      secagg::RevealedShare s;
      s.owner = h.owner;
      s.kind = survived ? secagg::SecretKind::self_mask_seed : secagg::SecretKind::mask_key;
      s.y = survived ? h.b : h.s_sk;
      out.shares.push_back(s);
    }
    m_phase = Phase::unmasked;
    return out;
  }

private:
  struct HeldShares {
    std::uint32_t owner = 0;
    std::array<std::uint64_t, secagg::share_elements> s_sk{};  // my share of owner's s secret key
    std::array<std::uint64_t, secagg::share_elements> b{};     // my share of owner's self-mask seed
  };

  std::string who() const { return "SecAggClient " + std::to_string(m_id); }

  static const char* to_string(Phase p) {
    switch (p) {
      case Phase::created: return "created";
      case Phase::advertised: return "advertised";
      case Phase::shared: return "shared";
      case Phase::masked: return "masked";
      case Phase::unmasked: return "unmasked";
    }
    return "unknown";
  }

  void expect_phase(Phase expected, const char* call) const {
    FEDMOE_CHECK(m_phase == expected, who(), ": ", call, " called in phase '", to_string(m_phase), "', expected phase '",
                 to_string(expected), "' (rounds: advertise_keys, share_keys, masked_input, unmask)");
  }

  const secagg::ClientKeys* find_peer(std::uint32_t v) const {
    const auto it = std::lower_bound(m_peers.begin(), m_peers.end(), v,
                                     [](const secagg::ClientKeys& c, std::uint32_t id) { return c.client < id; });
    return it != m_peers.end() && it->client == v ? &*it : nullptr;
  }

  void check_directory(const secagg::KeyDirectory& dir) const {
    const SecAggConfig& c = dir.config;
    FEDMOE_CHECK(c.round_id == m_config.round_id, who(), ": a key directory of round ", c.round_id, ", expected round ",
                 m_config.round_id);
    FEDMOE_CHECK(c.num_clients == m_config.num_clients && c.threshold == m_config.threshold &&
                     c.vector_length == m_config.vector_length && c.neighbours == m_config.neighbours &&
                     c.graph_seed == m_config.graph_seed,
                 who(), ": the key directory announces n = ", c.num_clients, ", t = ", c.threshold, ", L = ",
                 c.vector_length, ", k = ", c.neighbours, ", graph seed ", c.graph_seed, "; this client expects n = ",
                 m_config.num_clients, ", t = ", m_config.threshold, ", L = ", m_config.vector_length, ", k = ",
                 m_config.neighbours, ", graph seed ", m_config.graph_seed);
    std::vector<std::uint32_t> ids(dir.clients.size());
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = dir.clients[i].client;
    detail::secagg_check_ids(ids, m_config.num_clients, who(), "the key directory");
    FEDMOE_CHECK(ids.size() >= m_config.threshold, who(), ": the key directory lists ", ids.size(),
                 " clients, expected at least the threshold t = ", m_config.threshold);
    const auto it = std::lower_bound(ids.begin(), ids.end(), m_id);
    FEDMOE_CHECK(it != ids.end() && *it == m_id, who(), ": the key directory does not list this client");
    const auto& mine = dir.clients[std::size_t(it - ids.begin())];
    FEDMOE_CHECK(mine.c_pk == m_c_pk && mine.s_pk == m_s_pk, who(),
                 ": the key directory lists other public keys for this client than it advertised");
    std::vector<std::pair<secagg::Key, std::uint32_t>> keys;
    keys.reserve(2 * ids.size());
    for (const auto& k : dir.clients) {
      keys.emplace_back(k.c_pk, k.client);
      keys.emplace_back(k.s_pk, k.client);
    }
    std::sort(keys.begin(), keys.end());
    for (std::size_t i = 1; i < keys.size(); ++i)
      FEDMOE_CHECK(keys[i].first != keys[i - 1].first, who(), ": clients ", keys[i - 1].second, " and ", keys[i].second,
                   " advertise the same public key, expected distinct keys");
  }

  SecAggConfig m_config;
  SecAggGraph m_graph;
  std::uint32_t m_id;
  SecAggEntropy m_entropy;
  Phase m_phase = Phase::created;
  secagg::Key m_c_sk{}, m_c_pk{}, m_s_sk{}, m_s_pk{}, m_b{};
  std::vector<secagg::ClientKeys> m_peers;  // holders in U1, myself included, ascending
  std::vector<secagg::Key> m_share_keys;    // k_uv with each of m_peers (rounds 1-2; mine unused)
  std::vector<HeldShares> m_held;           // shares I hold, by owner (U2 holders, myself included)
  std::vector<std::uint32_t> m_u2;          // owners of m_held, ascending
};

// ---------------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------------

/// What the server learns: the sum of the surviving clients' inputs.
struct SecAggResult {
  std::vector<std::uint32_t> sum;           ///< sum_{u in U3} x_u (mod 2^32), L words
  std::vector<std::uint32_t> contributors;  ///< U3: whose inputs are in the sum, ascending
  std::vector<std::uint32_t> dropped;       ///< U2 \ U3: shared keys but sent no masked input
};

/// The server's side of one secure aggregation. Feed it each round's messages with receive(), then
/// close the round (key_directory, share_deliveries, unmask_request, finish). A message that fails a
/// check (wrong round, unknown or duplicate sender, wrong shape, out of phase) throws and leaves the
/// server unchanged; closing a round with fewer than t clients throws naming the counts.
class SecAggServer {
public:
  enum class Phase : std::uint8_t { advertise_keys, share_keys, masked_input, unmasking, done };

  explicit SecAggServer(const SecAggConfig& config)
      : m_config(config), m_graph(config), m_keys(config.num_clients), m_inbox(config.num_clients),
        m_revealed(config.num_clients) {
    detail::ensure_sodium();
  }

  Phase phase() const { return m_phase; }
  const SecAggConfig& config() const { return m_config; }

  // ---- round 0
  void receive(const secagg::AdvertiseKeys& m) {
    expect_phase(Phase::advertise_keys, "advertise_keys");
    check_round(m.round_id, "advertise_keys");
    const std::uint32_t u = m.keys.client;
    check_sender(u, "advertise_keys");
    FEDMOE_CHECK(!has_keys(u), "SecAggServer: a second advertise_keys message from client ", u);
    FEDMOE_CHECK(m.keys.c_pk != m.keys.s_pk, "SecAggServer: client ", u, " advertises the same key as c_pk and s_pk");
    for (std::uint32_t v : m_u1)
      FEDMOE_CHECK(m_keys[v].c_pk != m.keys.c_pk && m_keys[v].s_pk != m.keys.s_pk && m_keys[v].c_pk != m.keys.s_pk &&
                       m_keys[v].s_pk != m.keys.c_pk,
                   "SecAggServer: client ", u, " advertises a public key of client ", v, ", expected distinct keys");
    m_keys[u] = m.keys;
    m_u1.insert(std::upper_bound(m_u1.begin(), m_u1.end(), u), u);
  }
  /// Closes round 0: the keys of U1, for every client in U1. Needs |U1| >= t.
  secagg::KeyDirectory key_directory() {
    expect_phase(Phase::advertise_keys, "key_directory");
    check_count(m_u1.size(), "clients advertised keys", "SecAggServer::key_directory", m_config.num_clients);
    secagg::KeyDirectory d{m_config, {}};
    for (auto u : m_u1) d.clients.push_back(m_keys[u]);
    m_phase = Phase::share_keys;
    return d;
  }

  // ---- round 1
  void receive(const secagg::ShareKeys& m) {
    expect_phase(Phase::share_keys, "share_keys");
    check_round(m.round_id, "share_keys");
    const std::uint32_t u = m.sender;
    check_sender(u, "share_keys");
    FEDMOE_CHECK(detail::secagg_contains(m_u1, u), "SecAggServer: share_keys from client ", u,
                 ", which did not advertise keys");
    FEDMOE_CHECK(!detail::secagg_contains(m_u2, u), "SecAggServer: a second share_keys message from client ", u);
    std::vector<std::uint32_t> expected;
    for (auto v : m_graph.holders(u))
      if (v != u && detail::secagg_contains(m_u1, v)) expected.push_back(v);
    FEDMOE_CHECK(m.shares.size() == expected.size(), "SecAggServer: client ", u, " sent ", m.shares.size(),
                 " encrypted shares, expected ", expected.size(), " (one per other holder in U1)");
    for (std::size_t i = 0; i < expected.size(); ++i)
      FEDMOE_CHECK(m.shares[i].peer == expected[i], "SecAggServer: client ", u, "'s share ", i, " is addressed to client ",
                   m.shares[i].peer, ", expected client ", expected[i], " (one per other holder in U1, ascending)");
    for (const auto& s : m.shares) {
      secagg::EncryptedShare routed = s;
      routed.peer = u;  // in a delivery, peer names the sender
      m_inbox[s.peer].push_back(routed);
    }
    m_u2.insert(std::upper_bound(m_u2.begin(), m_u2.end(), u), u);
  }
  /// Closes round 1: for each client in U2, the shares the other members of U2 sealed for it.
  std::vector<secagg::ShareDelivery> share_deliveries() {
    expect_phase(Phase::share_keys, "share_deliveries");
    check_count(m_u2.size(), "clients shared keys", "SecAggServer::share_deliveries", std::uint32_t(m_u1.size()));
    std::vector<secagg::ShareDelivery> out;
    out.reserve(m_u2.size());
    for (auto v : m_u2) {
      secagg::ShareDelivery d{m_config.round_id, v, {}};
      for (const auto& s : m_inbox[v])
        if (detail::secagg_contains(m_u2, s.peer)) d.shares.push_back(s);
      std::sort(d.shares.begin(), d.shares.end(),
                [](const secagg::EncryptedShare& a, const secagg::EncryptedShare& b) { return a.peer < b.peer; });
      out.push_back(std::move(d));
    }
    m_inbox.clear();
    m_inbox.shrink_to_fit();
    m_sum.assign(m_config.vector_length, 0);
    m_phase = Phase::masked_input;
    return out;
  }

  // ---- round 2
  void receive(const secagg::MaskedInput& m) {
    expect_phase(Phase::masked_input, "masked_input");
    check_round(m.round_id, "masked_input");
    const std::uint32_t u = m.sender;
    check_sender(u, "masked_input");
    FEDMOE_CHECK(detail::secagg_contains(m_u2, u), "SecAggServer: masked_input from client ", u,
                 ", which did not share keys");
    FEDMOE_CHECK(!detail::secagg_contains(m_u3, u), "SecAggServer: a second masked_input message from client ", u);
    FEDMOE_CHECK(m.masked.size() == m_config.vector_length, "SecAggServer: client ", u, "'s masked input has ",
                 m.masked.size(), " words, expected L = ", m_config.vector_length);
    std::uint32_t* sum = m_sum.data();
    const std::uint32_t* y = m.masked.data();
    for (std::size_t i = 0, n = m_sum.size(); i < n; ++i) sum[i] += y[i];  // mod 2^32
    m_u3.insert(std::upper_bound(m_u3.begin(), m_u3.end(), u), u);
  }
  /// Closes round 2: U3 (the survivors) and U2 \ U3 (dropped), for every client in U3.
  secagg::UnmaskRequest unmask_request() {
    expect_phase(Phase::masked_input, "unmask_request");
    check_count(m_u3.size(), "masked inputs arrived", "SecAggServer::unmask_request", std::uint32_t(m_u2.size()));
    secagg::UnmaskRequest r{m_config.round_id, m_u3, {}};
    std::set_difference(m_u2.begin(), m_u2.end(), m_u3.begin(), m_u3.end(), std::back_inserter(r.dropped));
    m_dropped = r.dropped;
    m_phase = Phase::unmasking;
    return r;
  }

  // ---- round 3
  void receive(const secagg::UnmaskResponse& m) {
    expect_phase(Phase::unmasking, "unmask_response");
    check_round(m.round_id, "unmask_response");
    const std::uint32_t v = m.sender;
    check_sender(v, "unmask_response");
    FEDMOE_CHECK(detail::secagg_contains(m_u3, v), "SecAggServer: unmask_response from client ", v,
                 ", which is not a survivor (it sent no masked input)");
    FEDMOE_CHECK(!detail::secagg_contains(m_u4, v), "SecAggServer: a second unmask_response message from client ", v);
    std::vector<std::uint32_t> expected;
    for (auto u : m_graph.holders(v))
      if (detail::secagg_contains(m_u2, u)) expected.push_back(u);
    FEDMOE_CHECK(m.shares.size() == expected.size(), "SecAggServer: client ", v, " revealed ", m.shares.size(),
                 " shares, expected ", expected.size(), " (one per holder-neighbour that shared keys, itself included)");
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const auto& s = m.shares[i];
      FEDMOE_CHECK(s.owner == expected[i], "SecAggServer: client ", v, "'s revealed share ", i, " is of client ", s.owner,
                   ", expected client ", expected[i]);
      const auto kind = detail::secagg_contains(m_u3, s.owner) ? secagg::SecretKind::self_mask_seed
                                                               : secagg::SecretKind::mask_key;
      FEDMOE_CHECK(s.kind == kind, "SecAggServer: client ", v, " revealed its share of client ", s.owner, "'s ",
                   secagg::to_string(s.kind), ", expected its ", secagg::to_string(kind));
      for (auto y : s.y)
        FEDMOE_CHECK(y < shamir::prime, "SecAggServer: client ", v, "'s share of client ", s.owner,
                     " holds a value outside the field, ", y);
    }
    for (const auto& s : m.shares)
      m_revealed[s.owner].push_back(shamir::Share{std::uint64_t(v) + 1, std::vector<std::uint64_t>(s.y.begin(), s.y.end())});
    m_u4.insert(std::upper_bound(m_u4.begin(), m_u4.end(), v), v);
  }

  /// Closes round 3: reconstructs b_u of every survivor and s_sk_u of every dropped client from the
  /// responders' shares, removes the masks and returns the sum of U3's inputs.
  SecAggResult finish() {
    expect_phase(Phase::unmasking, "finish");
    check_count(m_u4.size(), "unmask responses arrived", "SecAggServer::finish", std::uint32_t(m_u3.size()));
    const std::uint32_t t = m_config.threshold;
    std::vector<detail::SecAggMask> masks;
    const auto reconstruct = [&](std::uint32_t u, const char* what) {
      const auto& shares = m_revealed[u];
      FEDMOE_CHECK(shares.size() >= t, "SecAggServer::finish: ", shares.size(), " shares of client ", u, "'s ", what,
                   " from the unmasking responders, expected at least the threshold t = ", t,
                   " (too many of its holders dropped)");
      std::vector<std::uint8_t> bytes;
#if FEDMOE_HAS_EXCEPTIONS
      try {
        bytes = shamir::reconstruct_bytes(shares, t, secagg::key_bytes);
      } catch (const Error& e) {
        FEDMOE_FAIL("SecAggServer::finish: reconstructing client ", u, "'s ", what, ": ", e.what());
      }
#else
      bytes = shamir::reconstruct_bytes(shares, t, secagg::key_bytes);
#endif
      secagg::Key k;
      std::copy(bytes.begin(), bytes.end(), k.begin());
      sodium_memzero(bytes.data(), bytes.size());
      return k;
    };
    for (auto u : m_u3) masks.push_back({reconstruct(u, "self-mask seed"), true});
    for (auto u : m_dropped) {
      secagg::Key sk = reconstruct(u, "mask key");
      secagg::Key pk;
      const bool ok = crypto_scalarmult_base(pk.data(), sk.data()) == 0 && pk == m_keys[u].s_pk;
      if (!ok) {
        detail::secagg_wipe(sk);
        for (auto& m : masks) detail::secagg_wipe(m.seed);
        FEDMOE_FAIL("SecAggServer::finish: the reconstructed mask key of dropped client ", u,
                    " does not match its advertised public key (a responder revealed a wrong share)");
      }
      // Survivor v added Delta_vu PRG(s_vu), Delta_vu = +1 if v < u: take it out.
      for (auto v : m_graph.holders(u))
        if (v != u && detail::secagg_contains(m_u3, v))
          masks.push_back({detail::secagg_agree(sk, u, m_keys[u].s_pk, v, m_keys[v].s_pk, detail::secagg_mask_label,
                                                m_config.round_id),
                           v < u});
      detail::secagg_wipe(sk);
    }
    detail::secagg_apply_masks(m_sum, masks, m_config.round_id);
    for (auto& m : masks) detail::secagg_wipe(m.seed);
    for (auto& shares : m_revealed)
      for (auto& s : shares) sodium_memzero(s.y.data(), 8 * s.y.size());
    m_revealed.clear();
    m_phase = Phase::done;
    return {std::move(m_sum), m_u3, m_dropped};
  }

  /// The clients at each step so far (ascending): advertised keys (U1), shared keys (U2), sent a
  /// masked input (U3), answered the unmask request (U4).
  const std::vector<std::uint32_t>& advertised() const { return m_u1; }
  const std::vector<std::uint32_t>& shared() const { return m_u2; }
  const std::vector<std::uint32_t>& masked() const { return m_u3; }
  const std::vector<std::uint32_t>& responded() const { return m_u4; }

private:
  static const char* to_string(Phase p) {
    switch (p) {
      case Phase::advertise_keys: return "advertise_keys";
      case Phase::share_keys: return "share_keys";
      case Phase::masked_input: return "masked_input";
      case Phase::unmasking: return "unmasking";
      case Phase::done: return "done";
    }
    return "unknown";
  }
  void expect_phase(Phase expected, const char* what) const {
    FEDMOE_CHECK(m_phase == expected, "SecAggServer: '", what, "' in phase '", to_string(m_phase), "', expected phase '",
                 to_string(expected), "'");
  }
  void check_round(std::uint64_t round, const char* what) const {
    FEDMOE_CHECK(round == m_config.round_id, "SecAggServer: a '", what, "' message of round ", round,
                 ", expected round ", m_config.round_id);
  }
  void check_sender(std::uint32_t u, const char* what) const {
    FEDMOE_CHECK(u < m_config.num_clients, "SecAggServer: a '", what, "' message from client ", u,
                 ", expected ids < n = ", m_config.num_clients);
  }
  /// Fails unless at least t clients reached this step.
  void check_count(std::size_t have, const char* what, const char* where, std::uint32_t before) const {
    const std::uint32_t n = m_config.num_clients, t = m_config.threshold;
    FEDMOE_CHECK(have >= t, where, ": ", have, " ", what, " (of ", before, " at the previous step: ", before - have,
                 " dropped), expected at least the threshold t = ", t, "; at most n - t = ", n - t, " of the n = ", n,
                 " clients may drop out");
  }
  bool has_keys(std::uint32_t u) const { return detail::secagg_contains(m_u1, u); }

  SecAggConfig m_config;
  SecAggGraph m_graph;
  Phase m_phase = Phase::advertise_keys;
  std::vector<secagg::ClientKeys> m_keys;                   // by id (valid for U1)
  std::vector<std::vector<secagg::EncryptedShare>> m_inbox;  // by recipient, peer = sender
  std::vector<std::vector<shamir::Share>> m_revealed;        // by owner
  std::vector<std::uint32_t> m_u1, m_u2, m_u3, m_u4, m_dropped;
  std::vector<std::uint32_t> m_sum;
};

}  // namespace fedmoe
