// Message framing of the distributed transports (no MPI needed): round trips, and rejection of
// truncated, over-long, corrupted, wrong-kind, wrong-type and wrong-shape messages with an error
// naming the sender and the expected and actual values.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <fedmoe/core/rng.hpp>
#include <fedmoe/distributed/framing.hpp>

using namespace fedmoe;
using Catch::Matchers::Contains;

namespace {
template <class S>
std::vector<S> random_payload(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<S> v(n);
  for (auto& x : v) x = rng.uniform<S>(S(-3), S(3));
  return v;
}
}  // namespace

TEMPLATE_TEST_CASE("frames round-trip header fields and payload bit for bit", "[framing]", float, double) {
  const auto payload = random_payload<TestType>(37, 5);
  const auto bytes = encode_frame(FrameKind::update, 12, 300, std::span<const TestType>(payload));
  REQUIRE(bytes.size() == frame_header_bytes + payload.size() * sizeof(TestType));
  const FrameView f = check_frame<TestType>(bytes, FrameKind::update, 37, "rank 2");
  CHECK(f.header.client == 12);
  CHECK(f.header.aux == 300);
  CHECK(f.header.count == 37);
  std::vector<TestType> back(payload.size());
  f.copy_to(std::span<TestType>(back));
  CHECK(back == payload);
  // Any count is accepted when the receiver does not fix one.
  CHECK(check_frame<TestType>(bytes, FrameKind::update, -1, "rank 2").header.count == 37);
  // A frame without payload (a count announcement).
  const auto empty = encode_frame(FrameKind::count, -1, 4, std::span<const TestType>());
  const FrameView c = check_frame<TestType>(empty, FrameKind::count, 0, "rank 1");
  CHECK(c.header.aux == 4);
  CHECK(c.payload.empty());
  // copy_to refuses a destination of the wrong size.
  std::vector<TestType> small(3);
  CHECK_THROWS_WITH(f.copy_to(std::span<TestType>(small)), Contains("expected a destination of") &&
                                                             Contains(std::to_string(37 * sizeof(TestType))));
}

TEMPLATE_TEST_CASE("truncated and over-long frames are rejected naming the sender", "[framing]", float, double) {
  const auto payload = random_payload<TestType>(20, 7);
  const auto bytes = encode_frame(FrameKind::global, -1, 0, std::span<const TestType>(payload));
  const std::span<const std::byte> all(bytes);
  // Shorter than a header.
  CHECK_THROWS_WITH(check_frame<TestType>(all.first(10), FrameKind::global, 20, "rank 3"),
                    Contains("rank 3") && Contains("truncated: 10 bytes") && Contains("48-byte"));
  CHECK_THROWS_WITH(check_frame<TestType>(all.first(0), FrameKind::global, 20, "rank 3"),
                    Contains("truncated: 0 bytes"));
  // Header intact, payload cut short by one byte.
  const std::size_t full = payload.size() * sizeof(TestType);
  CHECK_THROWS_WITH(check_frame<TestType>(all.first(bytes.size() - 1), FrameKind::global, 20, "rank 3"),
                    Contains("rank 3") && Contains("announces " + std::to_string(full)) &&
                        Contains("received " + std::to_string(full - 1)) && Contains("truncated"));
  // Trailing garbage.
  auto longer = bytes;
  longer.push_back(std::byte{0});
  CHECK_THROWS_WITH(check_frame<TestType>(longer, FrameKind::global, 20, "rank 1"),
                    Contains("rank 1") && Contains("received " + std::to_string(full + 1)));
}

TEMPLATE_TEST_CASE("corrupted frames fail the checksum", "[framing]", float, double) {
  const auto payload = random_payload<TestType>(16, 9);
  const auto bytes = encode_frame(FrameKind::update, 4, 100, std::span<const TestType>(payload));
  // A flipped bit anywhere in the payload.
  for (std::size_t at : {frame_header_bytes, frame_header_bytes + 17, bytes.size() - 1}) {
    auto bad = bytes;
    bad[at] ^= std::byte{0x10};
    INFO("flipped byte " << at);
    CHECK_THROWS_WITH(check_frame<TestType>(bad, FrameKind::update, 16, "rank 2"),
                      Contains("rank 2") && Contains("checksum mismatch") && Contains("corrupted"));
  }
  // A changed header field (client id 4 -> 5, sample count): the header is checksummed too.
  for (std::size_t at : {std::size_t(16), std::size_t(24)}) {
    auto bad = bytes;
    bad[at] ^= std::byte{0x01};
    CHECK_THROWS_WITH(check_frame<TestType>(bad, FrameKind::update, 16, "rank 2"), Contains("checksum mismatch"));
  }
  // Not a fedmoe frame at all.
  auto garbage = bytes;
  garbage[0] = std::byte{0x7f};
  CHECK_THROWS_WITH(check_frame<TestType>(garbage, FrameKind::update, 16, "rank 2"),
                    Contains("rank 2") && Contains("bad magic") && Contains("expected 0x454f4d46"));
  // A future version.
  auto version = bytes;
  version[4] = std::byte{9};
  CHECK_THROWS_WITH(check_frame<TestType>(version, FrameKind::update, 16, "rank 2"),
                    Contains("frame version 9, expected 1"));
}

TEMPLATE_TEST_CASE("wrong-kind, wrong-type and wrong-shape frames are rejected", "[framing]", float, double) {
  const auto payload = random_payload<TestType>(12, 11);
  const auto bytes = encode_frame(FrameKind::update, 2, 50, std::span<const TestType>(payload));
  CHECK_THROWS_WITH(check_frame<TestType>(bytes, FrameKind::report, -1, "rank 1"),
                    Contains("rank 1") && Contains("expected a 'report' message") && Contains("'update'"));
  // Wrong shape: the receiver expects the global model's parameter count.
  CHECK_THROWS_WITH(check_frame<TestType>(bytes, FrameKind::update, 13, "rank 4"),
                    Contains("rank 4") && Contains("wrong shape") && Contains("12 elements, expected 13"));
  // Wrong element type (float sent, double expected, or the reverse).
  using Other = std::conditional_t<std::is_same_v<TestType, float>, double, float>;
  CHECK_THROWS_WITH(check_frame<Other>(bytes, FrameKind::update, 12, "rank 1"),
                    Contains("elements of " + std::to_string(sizeof(TestType)) + " bytes, expected " +
                             std::to_string(sizeof(Other))));
}

TEMPLATE_TEST_CASE("a header's element count is checked without overflow against the payload length",
                   "[framing]", float, double) {
  // A CRC-valid header announcing 2^62 elements with an empty payload: 2^62 x sizeof(T) wraps to 0 in
  // 64 bits, so a multiplying check took it for a consistent empty frame.
  for (const std::int64_t count : {std::int64_t(1) << 62, std::int64_t(1) << 61, std::int64_t(-1), std::int64_t(3)}) {
    INFO("count " << count);
    std::vector<std::byte> bytes = encode_frame(FrameKind::update, 0, 5, std::span<const TestType>());
    FrameHeader h;
    std::memcpy(&h, bytes.data(), sizeof h);
    h.count = count;
    h.crc = detail::frame_crc(h, std::span<const std::byte>());
    std::memcpy(bytes.data(), &h, sizeof h);
    CHECK_THROWS_WITH(check_frame<TestType>(bytes, FrameKind::update, -1, "rank 3"),
                      Contains("rank 3") && Contains("announces " + std::to_string(count) + " elements") &&
                          Contains("expected 0"));
  }
}
