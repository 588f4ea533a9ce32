#pragma once
/// @file order_statistics.hpp
/// @brief The coordinate-wise order-statistics kernel behind CoordinateMedian, TrimmedMean and Bulyan:
/// every coordinate's n values (one per update) sorted together, many coordinates at once.
///
/// The vector is cut into blocks of `lanes` coordinates. For each block the n update slices are copied
/// into a contiguous (n x lanes) buffer, row r = update r (a copy of `lanes` contiguous values per
/// update, no gather: the coordinates sit in the SIMD lanes). A compare-exchange network then runs on
/// whole rows with Eigen's packet pmin / pmax, so one network application sorts `lanes` coordinates,
/// and the rule reads its statistic from the sorted rows. The buffer (at most ~25 KiB) stays in L1.
///
/// The network is Batcher's odd-even merge sort (Knuth, TAOCP vol. 3, 5.3.4) for the next power of two
/// M >= n, specialised to the rule when it is built (SortingNetwork):
/// - the M - n padding wires hold +inf, which sorts last: every comparator touching them is either a
///   no-op or a wire swap, so it is resolved when the network is built (the buffer has n rows only);
/// - comparators that cannot influence the outputs the rule reads are dropped (a backward pass): the
///   median needs the one or two middle positions; a comparator whose two outputs are only ever summed
///   together (`Need::sum`) cannot change the sum and is dropped too; a comparator one of whose outputs
///   is unused becomes a lone min or max.
/// The first stages (each aligned group of register_group = 32 rows sorted) run in registers, fused with
/// the copy: one packet of each of the group's rows is loaded straight from the updates, checked, sorted
/// by a compile-time network (RegisterNetwork) and stored to the buffer. Only the merges after them are
/// in ops(), each costing two loads, a min, a max and two stores per packet, from L1. For n = 100 the
/// median's remaining network is 317 comparators (it was 898 with every stage from L1), the trimmed
/// mean's (beta = 0.1) 319.
///
/// Finiteness is checked in the copy (x - x is 0 for finite x, NaN otherwise, summed per lane): a block
/// holding a non-finite value is reported to the caller, which rejects the offending updates and reruns.
/// Everything is sequential and data-independent: bitwise reproducible.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../aggregator.hpp"

namespace fedmoe::detail {

/// What a rule reads from sorted position p of each coordinate.
enum class Need : std::uint8_t {
  none,   ///< not read
  exact,  ///< read as the p-th smallest value
  sum,    ///< read only through the sum over all `sum` positions (their order among themselves is free)
};

/// Rows sorted together in registers (the first stages of the network, see RegisterSort).
inline constexpr Index register_group = 32;

/// Batcher's odd-even merge sort for W wires (the next power of two, +inf padding resolved), as a
/// compile-time list of compare-exchanges (lo receives the min), for the register-resident first stages.
template <int W>
struct RegisterNetwork {
  static_assert(W >= 1 && W <= register_group);
  struct List {
    std::array<std::int8_t, 192> lo{}, hi{};  // Batcher's network for 32 wires: 191
    int count = 0;
  };
  static constexpr List make() {
    int m = 1;
    while (m < W) m *= 2;
    // Batcher's comparators, in depth-first order (each half sorted before the merge that joins them:
    // a stable sort by the end of the comparator's block, then by stage). Fewer values are live at a
    // time than in the stage-by-stage order, so fewer spill when the group exceeds the register file.
    struct Wired { int a, b, key, stage; };
    std::array<Wired, 192> wired{};
    int count = 0;
    for (int p = 1; p < m; p *= 2)
      for (int k = p; k >= 1; k /= 2)
        for (int j = k % p; j + k < m; j += 2 * k)
          for (int i = 0; i < std::min(k, m - j - k); ++i)
            if ((i + j) / (2 * p) == (i + j + k) / (2 * p))
              wired[std::size_t(count++)] = {i + j, i + j + k, ((i + j) / (2 * p) + 1) * 2 * p, p};
    for (int x = 1; x < count; ++x)  // insertion sort: stable, and constexpr
      for (int y = x; y > 0; --y) {
        const Wired& u = wired[std::size_t(y - 1)];
        const Wired& v = wired[std::size_t(y)];
        if (u.key < v.key || (u.key == v.key && u.stage <= v.stage)) break;
        std::swap(wired[std::size_t(y - 1)], wired[std::size_t(y)]);
      }
    // Resolve the +inf padding (see SortingNetwork).
    List list;
    std::array<int, register_group> row{};
    for (int i = 0; i < m; ++i) row[std::size_t(i)] = i < W ? i : -1;
    for (int c = 0; c < count; ++c) {
      int& a = row[std::size_t(wired[std::size_t(c)].a)];
      int& b = row[std::size_t(wired[std::size_t(c)].b)];
      if (a < 0 && b >= 0) std::swap(a, b);
      else if (a >= 0 && b >= 0) {
        list.lo[std::size_t(list.count)] = std::int8_t(a);
        list.hi[std::size_t(list.count)] = std::int8_t(b);
        ++list.count;
      }
    }
    return list;
  }
  static constexpr List list = make();
};

template <class Packet>
[[gnu::always_inline]] inline void compare_exchange(Packet& lo, Packet& hi) {
  const Packet a = lo;
  lo = Eigen::internal::pmin(a, hi);
  hi = Eigen::internal::pmax(a, hi);
}

/// The sum of x - x over r[B .. E): 0 if all are finite, NaN otherwise. A tree with constant indices,
/// not a chain: the registers stay registers and no add waits on the previous one.
template <int B, int E, class Packet>
[[gnu::always_inline]] inline Packet nonfinite_sum(const Packet* r) {
  if constexpr (E - B == 1) return Eigen::internal::psub(r[B], r[B]);
  else return Eigen::internal::padd(nonfinite_sum<B, (B + E) / 2>(r), nonfinite_sum<(B + E) / 2, E>(r));
}

/// Loads one packet from each of W rows (src[i] + offset), folds their finiteness into `check`, sorts
/// the W packets lane-wise in registers and stores them to dst + i * stride. A sort is a sort: the
/// rows come out exactly as the first stages of the full network would leave them.
template <int W, class Scalar, class Packet, std::size_t... L, std::size_t... I>
[[gnu::always_inline]] inline void register_sort(const Scalar* const* src, Index offset, Scalar* dst, Index stride,
                                                 Packet& check, std::index_sequence<L...>, std::index_sequence<I...>) {
  namespace ei = Eigen::internal;
  constexpr auto& net = RegisterNetwork<W>::list;
  Packet r[W] = {ei::ploadu<Packet>(src[L] + offset)...};
  check = ei::padd(check, nonfinite_sum<0, W>(r));
  (compare_exchange(r[net.lo[I]], r[net.hi[I]]), ...);
  (ei::pstoreu(dst + Index(L) * stride, r[L]), ...);
}

template <int W, class Scalar, class Packet>
[[gnu::always_inline]] inline void register_sort(const Scalar* const* src, Index offset, Scalar* dst, Index stride,
                                                 Packet& check) {
  register_sort<W>(src, offset, dst, stride, check, std::make_index_sequence<W>(),
                   std::make_index_sequence<std::size_t(RegisterNetwork<W>::list.count)>());
}

/// A compare-exchange network on n rows, specialised to what the rule reads (see the file comment).
class SortingNetwork {
public:
  enum class Kind : std::uint8_t { exchange, min_only, max_only };
  struct Op {
    std::int32_t lo = 0;  ///< receives min (exchange, min_only)
    std::int32_t hi = 0;  ///< receives max (exchange, max_only)
    Kind kind = Kind::exchange;
  };

  SortingNetwork() = default;

  /// needs[p]: what is read from sorted position p (needs.size() = n rows).
  explicit SortingNetwork(const std::vector<Need>& needs) : m_rows(Index(needs.size())) {
    const std::int32_t n = std::int32_t(needs.size());
    std::int32_t m = 1;
    while (m < n) m *= 2;
    // Forward: resolve the +inf padding. wire -> physical row (-1: +inf padding).
    std::vector<std::int32_t> row(std::size_t(m), -1);
    for (std::int32_t i = 0; i < n; ++i) row[std::size_t(i)] = i;
    std::vector<Op> ops;
    // Stages p < group sort each aligned group of `group` wires: the kernel does that in registers.
    for (std::int32_t p = std::min(m, std::int32_t(register_group)); p < m; p *= 2)
      for (std::int32_t k = p; k >= 1; k /= 2)
        for (std::int32_t j = k % p; j + k < m; j += 2 * k)
          for (std::int32_t i = 0; i < std::min(k, m - j - k); ++i)
            if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
              auto& a = row[std::size_t(i + j)];
              auto& b = row[std::size_t(i + j + k)];
              if (a < 0 && b >= 0) std::swap(a, b);  // +inf moves up: a relabelling, no work
              else if (a >= 0 && b >= 0) ops.push_back({a, b, Kind::exchange});
            }
    // Physical row of each sorted position (positions >= n hold the padding).
    m_position_row.assign(row.begin(), row.begin() + n);
    // Backward: drop what the outputs do not depend on.
    std::vector<Need> state(std::size_t(n), Need::none);  // per physical row, after the current op
    for (std::int32_t p = 0; p < n; ++p) state[std::size_t(m_position_row[std::size_t(p)])] = needs[std::size_t(p)];
    std::vector<Op> kept;
    for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
      Op op = *it;
      Need& a = state[std::size_t(op.lo)];
      Need& b = state[std::size_t(op.hi)];
      if (a == Need::none && b == Need::none) continue;
      if (a == Need::sum && b == Need::sum) continue;  // a swap inside a sum changes nothing
      if (a == Need::none) op.kind = Kind::max_only;
      else if (b == Need::none) op.kind = Kind::min_only;
      a = b = Need::exact;
      kept.push_back(op);
    }
    m_ops.assign(kept.rbegin(), kept.rend());
  }

  Index rows() const { return m_rows; }
  const std::vector<Op>& ops() const { return m_ops; }
  /// The buffer row holding sorted position p after the network ran (valid where needs[p] != none).
  std::int32_t position_row(Index p) const { return m_position_row[std::size_t(p)]; }

private:
  Index m_rows = 0;
  std::vector<Op> m_ops;
  std::vector<std::int32_t> m_position_row;
};

/// Coordinates per block: 256 bytes per row, so 100 rows fill 25 KiB of L1.
template <class Scalar>
inline constexpr Index order_statistics_lanes = Index(256 / sizeof(Scalar));
template <class Scalar>
inline constexpr Index order_statistics_stride = order_statistics_lanes<Scalar>;  // rows back to back (padding the stride measured no gain)

/// Sorted rows of one block, as the rule reads them: value(p, j) is the p-th smallest value of
/// coordinate start + j (for the positions the network was built to deliver).
template <class Scalar>
struct SortedBlock {
  const Scalar* data = nullptr;
  const SortingNetwork* network = nullptr;
  Index start = 0;  ///< first coordinate of the block
  Index len = 0;    ///< coordinates in the block (the last block may be short)
  static constexpr Index lanes = order_statistics_lanes<Scalar>;
  static constexpr Index stride = order_statistics_stride<Scalar>;

  /// Row of sorted position p, `lanes` values (coordinates start .. start + lanes).
  const Scalar* row(Index p) const { return data + Index(network->position_row(p)) * stride; }
  Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> position(Index p) const {
    return {row(p), len};
  }
};

/// Sorts every coordinate's values across `rows` (n pointers to `size` values each) with `network`
/// (built for n rows) and calls reduce(SortedBlock) once per block, in order. Returns -1, or the first
/// coordinate of the first block holding a non-finite value (nothing is reduced from that block on).
template <class Scalar, class Reduce>
std::int64_t sort_coordinates(std::span<const Scalar* const> rows, Index size, const SortingNetwork& network,
                              Reduce&& reduce) {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  constexpr Index ps = Eigen::internal::packet_traits<Scalar>::size;
  constexpr Index lanes = order_statistics_lanes<Scalar>;
  constexpr Index stride = order_statistics_stride<Scalar>;
  static_assert(lanes % ps == 0, "a block row must be a whole number of packets");
  static_assert(register_group == 32, "the register-sort dispatch below covers group sizes 1 .. 32");
  namespace ei = Eigen::internal;

  const Index n = Index(rows.size());
  thread_local std::vector<Scalar, Eigen::aligned_allocator<Scalar>> storage;  // reused across calls
  storage.resize(std::size_t(std::max<Index>(n, 1) * stride));
  Scalar* buf = storage.data();
  const auto& ops = network.ops();
  SortedBlock<Scalar> block{buf, &network, 0, 0};
  thread_local std::vector<const Scalar*> buf_rows;  // the buffer's rows, as sources (a short last block)
  buf_rows.resize(std::size_t(n));
  for (Index r = 0; r < n; ++r) buf_rows[std::size_t(r)] = buf + r * stride;

  for (Index start = 0; start < size; start += lanes) {
    const Index len = std::min(lanes, size - start);
    // Copy, check finiteness and sort each group of `register_group` rows in registers: one pass over
    // the n slices. A short last block is first copied (zero-padded) and sorted in place.
    Packet check = ei::pset1<Packet>(Scalar(0));
    const Scalar* const* src = rows.data();
    Index offset = start;
    if (len < lanes) {
      for (Index r = 0; r < n; ++r) {
        Scalar* dst = buf + r * stride;
        for (Index v = 0; v < len; ++v) dst[v] = rows[std::size_t(r)][start + v];
        for (Index v = len; v < lanes; ++v) dst[v] = Scalar(0);
      }
      src = buf_rows.data();
      offset = 0;
    }
    for (Index g = 0; g < n; g += register_group) {
      const Scalar* const* gsrc = src + g;
      Scalar* gdst = buf + g * stride;
      const Index w = std::min(register_group, n - g);
      // The next block: 100 short streams defeat the hardware prefetchers (further ahead evicts the
      // buffer from L1; measured). Its w * lines_per_row cache lines are requested a few per packet,
      // spread over the group's sorts (all at once, they stalled on the full miss buffers; measured).
      constexpr Index lines_per_row = Index(lanes * sizeof(Scalar)) / 64;
      const bool prefetch = start + 2 * lanes <= size;
      const Index per_packet = (w * lines_per_row + lanes / ps - 1) / (lanes / ps);
      Index line = 0;
      for (Index v = 0; v < lanes; v += ps) {
#if defined(__GNUC__)
        if (prefetch)
          for (Index e = std::min(line + per_packet, w * lines_per_row); line < e; ++line)
            __builtin_prefetch(reinterpret_cast<const char*>(rows[std::size_t(g + line / lines_per_row)] + start + lanes) +
                               64 * (line % lines_per_row));
#endif
        switch (w) {
#define FEDMOE_REGISTER_SORT_CASE(W) \
  case W: register_sort<W>(gsrc, offset + v, gdst + v, stride, check); break;
          FEDMOE_REGISTER_SORT_CASE(1) FEDMOE_REGISTER_SORT_CASE(2) FEDMOE_REGISTER_SORT_CASE(3)
          FEDMOE_REGISTER_SORT_CASE(4) FEDMOE_REGISTER_SORT_CASE(5) FEDMOE_REGISTER_SORT_CASE(6)
          FEDMOE_REGISTER_SORT_CASE(7) FEDMOE_REGISTER_SORT_CASE(8) FEDMOE_REGISTER_SORT_CASE(9)
          FEDMOE_REGISTER_SORT_CASE(10) FEDMOE_REGISTER_SORT_CASE(11) FEDMOE_REGISTER_SORT_CASE(12)
          FEDMOE_REGISTER_SORT_CASE(13) FEDMOE_REGISTER_SORT_CASE(14) FEDMOE_REGISTER_SORT_CASE(15)
          FEDMOE_REGISTER_SORT_CASE(16) FEDMOE_REGISTER_SORT_CASE(17) FEDMOE_REGISTER_SORT_CASE(18)
          FEDMOE_REGISTER_SORT_CASE(19) FEDMOE_REGISTER_SORT_CASE(20) FEDMOE_REGISTER_SORT_CASE(21)
          FEDMOE_REGISTER_SORT_CASE(22) FEDMOE_REGISTER_SORT_CASE(23) FEDMOE_REGISTER_SORT_CASE(24)
          FEDMOE_REGISTER_SORT_CASE(25) FEDMOE_REGISTER_SORT_CASE(26) FEDMOE_REGISTER_SORT_CASE(27)
          FEDMOE_REGISTER_SORT_CASE(28) FEDMOE_REGISTER_SORT_CASE(29) FEDMOE_REGISTER_SORT_CASE(30)
          FEDMOE_REGISTER_SORT_CASE(31) FEDMOE_REGISTER_SORT_CASE(32)
#undef FEDMOE_REGISTER_SORT_CASE
          default: break;
        }
      }
    }
    if (!(ei::predux(check) == Scalar(0))) [[unlikely]]
      return std::int64_t(start);
    // The network, one comparator at a time over the whole row (all lanes).
    for (const auto& op : ops) {
      Scalar* lo = buf + Index(op.lo) * stride;
      Scalar* hi = buf + Index(op.hi) * stride;
      switch (op.kind) {
        case SortingNetwork::Kind::exchange:
#pragma GCC unroll 16
          for (Index v = 0; v < lanes; v += ps) {
            const Packet a = ei::ploadu<Packet>(lo + v), b = ei::ploadu<Packet>(hi + v);
            ei::pstoreu(lo + v, ei::pmin(a, b));
            ei::pstoreu(hi + v, ei::pmax(a, b));
          }
          break;
        case SortingNetwork::Kind::min_only:
#pragma GCC unroll 16
          for (Index v = 0; v < lanes; v += ps)
            ei::pstoreu(lo + v, ei::pmin(ei::ploadu<Packet>(lo + v), ei::ploadu<Packet>(hi + v)));
          break;
        case SortingNetwork::Kind::max_only:
#pragma GCC unroll 16
          for (Index v = 0; v < lanes; v += ps)
            ei::pstoreu(hi + v, ei::pmax(ei::ploadu<Packet>(lo + v), ei::ploadu<Packet>(hi + v)));
          break;
      }
    }
    block.start = start;
    block.len = len;
    reduce(std::as_const(block));
  }
  return -1;
}

/// The driver of a coordinate-wise rule over `use`: builds the rule's network for the current count,
/// sorts, reduces into `result`; on a non-finite block rejects its offenders and starts again without
/// them. infeasible(n) returns why n updates are too few for the rule (empty: fine). Returns false with
/// report.note set if the rule cannot run; `use` loses the rejected updates.
template <class Scalar, class Infeasible, class MakeNeeds, class Reduce>
bool coordinatewise(std::vector<const ClientUpdate<Scalar>*>& use, Index size, Infeasible infeasible,
                    MakeNeeds make_needs, Reduce reduce, AggregationReport& report) {
  while (true) {
    const Index n = Index(use.size());
    if (n == 0) {
      report.note = "no valid update to aggregate";
      return false;
    }
    if (std::string why = infeasible(n); !why.empty()) {
      report.note = std::move(why);
      return false;
    }
    const SortingNetwork network(make_needs(n));
    std::vector<const Scalar*> rows;
    rows.reserve(use.size());
    for (const auto* u : use) rows.push_back(u->delta.data());
    const std::int64_t bad = sort_coordinates<Scalar>(rows, size, network, reduce);
    if (bad < 0) return true;
    const Index start = Index(bad), len = std::min(order_statistics_lanes<Scalar>, size - start);
    std::vector<const ClientUpdate<Scalar>*> keep;
    for (const auto* u : use) {
      if (all_finite(u->delta.segment(start, len))) keep.push_back(u);
      else report.rejected.push_back({u->client, Rejection::non_finite});
    }
    use.swap(keep);
  }
}

}  // namespace fedmoe::detail
