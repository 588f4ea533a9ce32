/// @file fuzz_frame.cpp
/// @brief Fuzz target: MPI frames (distributed/framing.hpp) as MpiTransport checks them, and the client
/// result records (federated/client_result.hpp) a `result` frame carries.
///
/// Input: one selector byte, then the frame. Selector bit 0 set: the header's CRC is recomputed over the
/// mutated frame, so mutations get past the checksum to the checks behind it. Bits 1-3: the kind the
/// receiver expects (global, update, report, count, value, result, message); bit 4: an expected element
/// count of 3 instead of any. Elements are float for global/update, double for report/value, bytes for
/// result/message (as MpiTransport receives them); a checked result frame is then decoded.
#include <cstring>
#include <vector>

#include <fedmoe/distributed/framing.hpp>
#include <fedmoe/federated/client_result.hpp>

#include "fuzz_target.hpp"

namespace {

/// The payload of a frame checked as MpiTransport checks one (kind, element type, count), copied out.
template <class T>
std::vector<T> checked_payload(std::span<const std::byte> view, fedmoe::FrameKind kind, std::int64_t count) {
  const fedmoe::FrameView f = fedmoe::check_frame<T>(view, kind, count, "fuzz");
  std::vector<T> out(std::size_t(f.header.count));
  f.copy_to(std::span<T>(out));
  return out;
}

}  // namespace

FEDMOE_FUZZ_TARGET {
  using namespace fedmoe;
  if (size < 1) return 0;
  const unsigned sel = data[0];
  std::vector<std::byte> bytes(size - 1);
  if (!bytes.empty()) std::memcpy(bytes.data(), data + 1, size - 1);
  if ((sel & 1u) && bytes.size() >= frame_header_bytes) {
    FrameHeader h;
    std::memcpy(&h, bytes.data(), sizeof h);
    h.crc = detail::frame_crc(h, std::span<const std::byte>(bytes).subspan(frame_header_bytes));
    std::memcpy(bytes.data(), &h, sizeof h);
  }
  static constexpr FrameKind kinds[8] = {FrameKind::global, FrameKind::update,  FrameKind::report,
                                         FrameKind::count,  FrameKind::value,   FrameKind::result,
                                         FrameKind::message, FrameKind::update};
  const FrameKind kind = kinds[(sel >> 1) & 7u];
  const std::int64_t count = (sel & 16u) ? 3 : -1;
  const std::span<const std::byte> view(bytes);
  return fuzz::expect_clean_error([&] {
    switch (kind) {
      case FrameKind::global:
      case FrameKind::update: (void)checked_payload<float>(view, kind, count); break;
      case FrameKind::report:
      case FrameKind::value:
      case FrameKind::count: (void)checked_payload<double>(view, kind, count); break;
      case FrameKind::result:
      case FrameKind::message: {
        const std::vector<std::uint8_t> payload = checked_payload<std::uint8_t>(view, kind, count);
        if (kind == FrameKind::result) (void)decode_result(payload);
        break;
      }
    }
  });
}
