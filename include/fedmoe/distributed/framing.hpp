#pragma once
/// @file framing.hpp
/// @brief Message framing for distributed transports: a fixed header (magic, version, kind,
/// element size, client id, auxiliary count, element count, payload length, CRC-32) followed by
/// the payload. Independent of MPI (this header never includes mpi.h), so it is unit tested alone.
///
/// Layout (native byte order; a cluster is assumed homogeneous - the magic catches a byte-order
/// mismatch, the element size a float/double mismatch):
///
/// | offset | type | field                                                              |
/// |--------|------|--------------------------------------------------------------------|
/// | 0      | u32  | magic 0x454F4D46 ("FMOE" read little-endian)                       |
/// | 4      | u16  | version (1)                                                        |
/// | 6      | u16  | kind (FrameKind)                                                   |
/// | 8      | u32  | element size in bytes (4: float, 8: double)                        |
/// | 12     | u32  | CRC-32 (zlib) of the header with this field zero, then the payload |
/// | 16     | i64  | client id (-1 when the message is not about one client)            |
/// | 24     | i64  | aux: sample count (update, report) or number of frames (count)     |
/// | 32     | i64  | element count of the payload                                       |
/// | 40     | u64  | payload length in bytes = element count x element size            |
/// | 48     |      | payload                                                            |
///
/// `check_frame` rejects - with an error naming the sender (`source`), the expected and the
/// actual value - a truncated or over-long message, a wrong magic/version/kind/element size,
/// a checksum mismatch (corruption anywhere in header or payload), and a payload whose element
/// count differs from the one the receiver expects (wrong shape). The 64-bit count fields are checked
/// in 64 bits against the payload before anything is sized from them; `frame_index` narrows a 64-bit
/// field (a sample count) to this target's Index, refusing what a 32-bit Index cannot hold.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../core/checked_size.hpp"
#include "../core/error.hpp"

namespace fedmoe {

/// What a frame carries.
enum class FrameKind : std::uint16_t {
  global = 1,  ///< the global parameters, then the algorithm's extras (server -> clients); aux = extras
  update = 2,  ///< a client's update: its delta, then its extra vectors; aux = training samples
  report = 3,  ///< a client's validation loss sum (one double); aux = validation samples
  count = 4,   ///< announces how many frames follow; aux = that number, no payload
  value = 5,   ///< one double decided by the server (e.g. the validation loss)
  result = 6,  ///< a client's evaluation metrics (doubles), never model parameters
  message = 7, ///< an opaque protocol message (bytes) from or to one client (e.g. secure aggregation)
};

inline const char* to_string(FrameKind k) {
  switch (k) {
    case FrameKind::global: return "global";
    case FrameKind::update: return "update";
    case FrameKind::report: return "report";
    case FrameKind::count: return "count";
    case FrameKind::value: return "value";
    case FrameKind::result: return "result";
    case FrameKind::message: return "message";
  }
  return "unknown";
}

struct FrameHeader {
  std::uint32_t magic = 0;
  std::uint16_t version = 0;
  std::uint16_t kind = 0;
  std::uint32_t element_size = 0;
  std::uint32_t crc = 0;
  std::int64_t client = -1;
  std::int64_t aux = 0;
  std::int64_t count = 0;
  std::uint64_t payload_bytes = 0;
};
static_assert(sizeof(FrameHeader) == 48 && std::is_trivially_copyable_v<FrameHeader>);

inline constexpr std::uint32_t frame_magic = 0x454F4D46u;  // bytes "FMOE" on a little-endian machine
inline constexpr std::uint16_t frame_version = 1;
inline constexpr std::size_t frame_header_bytes = sizeof(FrameHeader);

namespace detail {
inline std::uint32_t frame_crc(FrameHeader header, std::span<const std::byte> payload) {
  header.crc = 0;
  uLong crc = ::crc32_z(0L, Z_NULL, 0);
  crc = ::crc32_z(crc, reinterpret_cast<const Bytef*>(&header), sizeof header);
  // zlib's crc32 of a null buffer is its reset value 0, not a no-op: an empty payload whose span has no
  // data pointer would otherwise zero the header's checksum.
  if (!payload.empty()) crc = ::crc32_z(crc, reinterpret_cast<const Bytef*>(payload.data()), payload.size());
  return std::uint32_t(crc);
}
inline std::string frame_hex(std::uint32_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s = "0x00000000";
  for (int i = 9; i >= 2; --i, v >>= 4) s[std::size_t(i)] = digits[v & 15u];
  return s;
}
}  // namespace detail

/// Encodes `payload` (count = payload.size() elements of T) as one frame.
template <class T>
std::vector<std::byte> encode_frame(FrameKind kind, std::int64_t client, std::int64_t aux, std::span<const T> payload) {
  static_assert(std::is_trivially_copyable_v<T>, "encode_frame: the payload must be trivially copyable");
  FrameHeader h;
  h.magic = frame_magic;
  h.version = frame_version;
  h.kind = std::uint16_t(kind);
  h.element_size = std::uint32_t(sizeof(T));
  h.client = client;
  h.aux = aux;
  h.count = std::int64_t(payload.size());
  h.payload_bytes = std::uint64_t(payload.size_bytes());
  std::vector<std::byte> out(frame_header_bytes + payload.size_bytes());
  if (!payload.empty()) std::memcpy(out.data() + frame_header_bytes, payload.data(), payload.size_bytes());
  h.crc = detail::frame_crc(h, std::span<const std::byte>(out).subspan(frame_header_bytes));
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

/// A checked frame: its header and a view of its payload (inside the checked buffer).
struct FrameView {
  FrameHeader header;
  std::span<const std::byte> payload;

  /// Copies the payload into `out`, which must hold exactly header.count elements of T.
  template <class T>
  void copy_to(std::span<T> out) const {
    FEDMOE_CHECK(out.size_bytes() == payload.size(), "FrameView::copy_to: expected a destination of ",
                 payload.size(), " bytes, got ", out.size_bytes());
    if (!payload.empty()) std::memcpy(out.data(), payload.data(), payload.size());
  }
};

/// Validates `bytes` as a frame of `expected` kind with elements of type T and, if
/// `expected_count` >= 0, exactly that many elements. `source` names the sender in errors
/// (e.g. "rank 2").
template <class T>
FrameView check_frame(std::span<const std::byte> bytes, FrameKind expected, std::int64_t expected_count,
                      std::string_view source) {
  FEDMOE_CHECK(bytes.size() >= frame_header_bytes, "message from ", source, ": truncated: ", bytes.size(),
               " bytes, expected at least the ", frame_header_bytes, "-byte frame header");
  FrameHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  FEDMOE_CHECK(h.magic == frame_magic, "message from ", source, ": bad magic ", detail::frame_hex(h.magic),
               ", expected ", detail::frame_hex(frame_magic), " (not a fedmoe frame, or a different byte order)");
  FEDMOE_CHECK(h.version == frame_version, "message from ", source, ": frame version ", h.version, ", expected ",
               frame_version);
  const std::size_t body = bytes.size() - frame_header_bytes;
  FEDMOE_CHECK(h.payload_bytes == body, "message from ", source, ": length mismatch: the header announces ",
               h.payload_bytes, " payload bytes, received ", body, body < h.payload_bytes ? " (truncated)" : "");
  const auto payload = bytes.subspan(frame_header_bytes);
  const std::uint32_t crc = detail::frame_crc(h, payload);
  FEDMOE_CHECK(crc == h.crc, "message from ", source, ": checksum mismatch: CRC-32 ", detail::frame_hex(crc),
               ", the header says ", detail::frame_hex(h.crc), " (corrupted message)");
  FEDMOE_CHECK(h.kind == std::uint16_t(expected), "message from ", source, ": expected a '", to_string(expected),
               "' message (kind ", std::uint16_t(expected), "), got kind ", h.kind, " ('",
               to_string(FrameKind(h.kind)), "')");
  FEDMOE_CHECK(h.element_size == sizeof(T), "message from ", source, ": elements of ", h.element_size,
               " bytes, expected ", sizeof(T), " (float vs double mismatch?)");
  // Divide instead of multiplying: count x sizeof(T) wraps in 64 bits for a hostile count (2^62 x 4 = 0).
  FEDMOE_CHECK(h.count >= 0 && h.payload_bytes % sizeof(T) == 0 && h.payload_bytes / sizeof(T) == std::uint64_t(h.count),
               "message from ", source, ": the header announces ", h.count, " elements of ", sizeof(T),
               " bytes, expected ", h.payload_bytes / sizeof(T), " (", h.payload_bytes, " payload bytes)");
  FEDMOE_CHECK(expected_count < 0 || h.count == expected_count, "message from ", source, ": wrong shape: a '",
               to_string(expected), "' message of ", h.count, " elements, expected ", expected_count);
  return {h, payload};
}

/// A 64-bit header field (`what`, e.g. "sample count") as an Index: an error naming the sender and the
/// limit when this target's Index cannot hold it (a 32-bit Index would wrap 2^40 to 0); its sign is the
/// caller's to check.
inline Index frame_index(std::int64_t value, std::string_view what, std::string_view source) {
  const std::uint64_t magnitude = value < 0 ? 0 - std::uint64_t(value) : std::uint64_t(value);
  FEDMOE_CHECK(magnitude <= detail::max_index, "message from ", source, ": a ", what, " of ", value,
               ", expected at most ", detail::max_index_text(), " in magnitude");
  return Index(value);
}

}  // namespace fedmoe
