#pragma once
/// @file linear_router.hpp
/// @brief The linear router of the gates, logits = W x + b, with register-blocked forward and backward kernels.
///
/// **Layout.** `routers` routers of the same shape, one after the other in the parameter slice, each
/// [W^T (width x experts, column-major = PyTorch's [experts, width] row-major), b (experts)].
/// Each router's logits are an (experts x tokens) matrix. The noisy top-k gate runs its gate router and
/// its noise router together, so each pass reads the tokens once (and dx sums both routers' terms).
///
/// **Why hand-written kernels.** A router is a GEMM with very few rows (experts) and a long depth
/// (width), at any token count. Eigen's blocked GEMM packs its operands into buffers it allocates on
/// the heap for large token counts, and its coefficient-based (lazy) product computes one dot product
/// per (row, token) and is bound by loads. The three products below are register-blocked over Eigen's
/// packet primitives instead (`Eigen::internal::ploadu/pmadd/predux`, the layer Eigen's own kernels
/// are written in; SSE, AVX, AVX-512, NEON or a scalar fallback), allocate nothing, and keep the
/// x tile they work on in cache:
/// - forward: dot products along the width for blocks of 4 rows x NT tokens (each loaded packet of x
///   and of W feeds several accumulators; with AVX-512, a 4 x 4 block's 16 packets are reduced together,
///   in Eigen's predux order, see predux16);
/// - dW: per tile of `tile_tokens()` tokens, blocks of 4 rows x NI packets of width (8 rows x 2 packets
///   on 32-register targets) accumulate x_j dl(a, j);
/// - dx: blocks of NI packets of width x NT tokens accumulate W_a dl(a, j) over the rows.
/// NT and NI follow the register count (2 on 16-register targets, 4 on 32).
///
/// **Large batches** (tokens over 1 MiB, which come from memory rather than cache): the kernels prefetch
/// the tokens ahead a line or two per step, spread over their compute (the forward two blocks of tokens
/// ahead, the backward the next tile, whose tiles shrink to ~32 KiB), and a dx over 16 MiB is written
/// with streaming stores. When the routers' weights exceed 16 KiB (two routers at K = 8), the forward
/// instead runs tiles of ~256 KiB of tokens (they stay in L2) one group of rows with at most 16 KiB of
/// weights at a time, fetching the next tile, and the backward keeps its ~256 KiB tiles (see tiles()).
/// None of this changes a bit of the results (tested).
///
/// **Determinism.** Every output is one sum in a fixed order: logits(a, j) over the width (packet lanes,
/// then Eigen's fixed reduction tree, then the scalar tail), dW(i, a) over the tokens in token order,
/// dx(i, j) over the rows in row order. The order does not depend on where a row or token falls in a
/// block, so a token's logits and input gradient do not depend on the other tokens of the batch, and
/// results are bitwise equal for a given build whatever the thread count.
#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__SSE2__)
#include <immintrin.h>  // streaming stores
#endif

#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace fedmoe::detail {

/// Tokens x (width x tokens) with contiguous columns: a Matrix, a Map or a block of columns binds
/// without a copy (any other expression is evaluated into a temporary).
template <class Scalar>
using TokensRef = Eigen::Ref<const Matrix<Scalar>, 0, Eigen::OuterStride<>>;

namespace kernel {

// Fully unrolls the loops over a block's rows, tokens and packets before register allocation, so
// that the accumulators live in registers (GCC otherwise keeps arrays of packets on the stack).
#if defined(__GNUC__)
#define FEDMOE_UNROLL _Pragma("GCC unroll 16")
#else
#define FEDMOE_UNROLL
#endif

// The dot-product block kernel is compiled as a function of its own: inlined into the loops over
// routers and row blocks, GCC spilled its accumulators inside the hot loop (the forward ran 15 %
// slower). A call per block (thousands of FMAs) costs nothing measurable. The other two kernels
// measured faster inlined.
#if defined(__GNUC__)
#define FEDMOE_KERNEL [[gnu::noinline]] inline
#else
#define FEDMOE_KERNEL inline
#endif

/// Keeps a loaded packet in a register. A packet that feeds several FMAs is otherwise re-read from
/// memory by each of them (GCC folds the load into the FMA), which makes the kernels bound by loads
/// rather than by FMAs. An empty asm statement is the portable-enough way to stop that on x86.
template <class P>
inline void in_register(P& p) {
#if defined(__GNUC__) && defined(__AVX512F__)
  __asm__("" : "+v"(p));
#elif defined(__GNUC__) && (defined(__SSE2__) || defined(__AVX__))
  __asm__("" : "+x"(p));
#else
  (void)p;
#endif
}

/// Stores a packet to `to` with a non-temporal (streaming) store where the target has one for the packet
/// type; `to` must then be aligned to the packet size. Used for outputs too large to stay in cache: the store
/// neither reads the line first nor evicts the inputs. Call stream_fence() after the last one.
template <class P, class Scalar>
inline void stream_store(Scalar* to, const P& v) {
  Eigen::internal::pstoreu(to, v);
}
#if defined(__AVX512F__)
inline void stream_store(float* to, const __m512& v) { _mm512_stream_ps(to, v); }
inline void stream_store(double* to, const __m512d& v) { _mm512_stream_pd(to, v); }
#endif
#if defined(__AVX__)
inline void stream_store(float* to, const __m256& v) { _mm256_stream_ps(to, v); }
inline void stream_store(double* to, const __m256d& v) { _mm256_stream_pd(to, v); }
#endif
#if defined(__SSE2__)
inline void stream_store(float* to, const __m128& v) { _mm_stream_ps(to, v); }
inline void stream_store(double* to, const __m128d& v) { _mm_stream_pd(to, v); }
#endif
/// Orders earlier streaming stores before later stores (they are weakly ordered).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

template <class Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
template <class Scalar>
inline constexpr Index lanes = Eigen::internal::unpacket_traits<Packet<Scalar>>::size;

#ifdef EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS
inline constexpr int registers = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;
#else
inline constexpr int registers = 16;
#endif
/// Block width (tokens or packets) of the second blocking dimension; the first is always 4 rows.
inline constexpr int wide = registers >= 32 ? 4 : 2;

/// Sets a kernel's block of accumulators to zero (a plain function of the array: a lambda over the
/// accumulators kept them out of registers, 17 % slower).
template <class P, int A, int B>
inline void set_zero(P (&acc)[A][B]) {
  FEDMOE_UNROLL
  for (int a = 0; a < A; ++a)
    FEDMOE_UNROLL
    for (int b = 0; b < B; ++b) acc[a][b] = Eigen::internal::pset1<P>(0);
}

/// Cache lines of a few token columns, fetched a few at a time from inside the kernels, so that the fetches
/// of later tokens spread evenly over the compute of the current ones. (Prefetching a whole block at the
/// start of its first kernel fills the core's miss buffers and stalls the FMAs behind them: the forward then
/// ran compute and memory one after the other, not side by side.)
template <class Scalar>
struct LineStream {
  static constexpr Index line = Index(64 / sizeof(Scalar));  // elements per cache line
  const Scalar* col = nullptr;                               // column being fetched
  Index ld = 0, len = 0, at = 0;                             // column stride and length, next element
  Index left = 0, per_step = 0;                              // lines still to fetch, lines per step()

  /// Columns [c0, c1) of x (stride ld, n elements each), spread over `steps` calls of step().
  LineStream(const Scalar* x, Index ld_, Index n, Index c0, Index c1, Index steps)
      : col(x + c0 * ld_), ld(ld_), len(n), left(c1 > c0 ? (c1 - c0) * ((n + line - 1) / line) : 0),
        per_step(steps > 0 ? (left + steps - 1) / steps : left) {}

  void step() {
    for (Index k = 0; k < per_step && left > 0; ++k, --left) {
      Eigen::internal::prefetch(col + at);
      if ((at += line) >= len) {
        at = 0;
        col += ld;
      }
    }
  }
};

#if defined(EIGEN_VECTORIZE_AVX512DQ)
/// The 16 sums predux(v[4a + b]) of 16-float packets, computed together: lane 4b + a of the result. Each sum
/// adds in the order of Eigen's AVX512DQ predux (the halves of 8 lanes, then of 4, then (0 + 2) + (1 + 3)),
/// so the result is bitwise that of 16 predux calls, in 45 shuffles and adds instead of 16 x 8 (the forward's
/// 4 x 4 blocks: 10 % of the one-router forward in cache, 13 % of the two-router one).
inline __m512 predux16(const __m512 (&v)[16]) {
  __m512 y[8], z[4], w[2];
  for (int k = 0; k < 8; ++k)  // y[k]: lo8 + hi8 of v[2k], then of v[2k + 1]
    y[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
  for (int k = 0; k < 4; ++k)  // z[k]: lo4 + hi4 of those of v[4k], v[4k + 1], v[4k + 2], v[4k + 3]
    z[k] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * k], y[2 * k + 1], 0xDD));
  for (int k = 0; k < 2; ++k)  // quad q of w[k]: (z0 + z2, z1 + z3) of v[8k + q], then of v[8k + 4 + q]
    w[k] = _mm512_add_ps(_mm512_shuffle_ps(z[2 * k], z[2 * k + 1], 0x44),
                         _mm512_shuffle_ps(z[2 * k], z[2 * k + 1], 0xEE));
  // quad q: the sums of v[q], v[4 + q], v[8 + q], v[12 + q]
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}
#endif

/// out(a, b) = bias[a] + <w[a], x_b> for BA rows and BT tokens (x_b = x + b * ldx; out(a, b) = out[a + b * ldo]).
/// With a stream, each packet step also fetches the stream's next lines.
template <int BA, int BT, bool Prefetch, class Scalar>
FEDMOE_KERNEL void dot_block(const Scalar* const (&w)[BA], const Scalar (&bias)[BA], const Scalar* x, Index ldx,
                             Index n, Scalar* out, Index ldo, LineStream<Scalar>* stream) {
  using namespace Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index L = lanes<Scalar>;
  P acc[BA][BT];
  set_zero(acc);
  Index i = 0;
  for (; i + L <= n; i += L) {
    P xv[BT];
    FEDMOE_UNROLL
    for (int b = 0; b < BT; ++b) {
      xv[b] = ploadu<P>(x + b * ldx + i);
      in_register(xv[b]);
    }
    if constexpr (Prefetch) stream->step();
    FEDMOE_UNROLL
    for (int a = 0; a < BA; ++a) {
      P wv = ploadu<P>(w[a] + i);
      in_register(wv);
      FEDMOE_UNROLL
      for (int b = 0; b < BT; ++b) acc[a][b] = pmadd(wv, xv[b], acc[a][b]);
    }
  }
#if defined(EIGEN_VECTORIZE_AVX512DQ)
  if constexpr (BA == 4 && BT == 4 && std::is_same_v<Scalar, float> && L == 16) {
    if (i == n) {  // no scalar tail: the 16 reductions together (bitwise the same), 4 rows per token stored
      __m512 v[16];
      FEDMOE_UNROLL
      for (int a = 0; a < 4; ++a)
        FEDMOE_UNROLL
        for (int b = 0; b < 4; ++b) v[4 * a + b] = acc[a][b];
      const __m512 sums = _mm512_add_ps(predux16(v), _mm512_broadcast_f32x4(_mm_loadu_ps(bias)));
      _mm_storeu_ps(out, _mm512_castps512_ps128(sums));
      _mm_storeu_ps(out + ldo, _mm512_extractf32x4_ps(sums, 1));
      _mm_storeu_ps(out + 2 * ldo, _mm512_extractf32x4_ps(sums, 2));
      _mm_storeu_ps(out + 3 * ldo, _mm512_extractf32x4_ps(sums, 3));
      return;
    }
  }
#endif
  FEDMOE_UNROLL
  for (int a = 0; a < BA; ++a)
    FEDMOE_UNROLL
    for (int b = 0; b < BT; ++b) {
      Scalar s = predux(acc[a][b]);
      for (Index r = i; r < n; ++r) s += w[a][r] * x[b * ldx + r];
      out[a + b * ldo] = s + bias[a];
    }
}

/// dx(i .. i + BI*L, b) = sum_{r, e} w_re(i ..) dl_r(e, b) for BT tokens, rows in order (router by router).
/// Router r's weights for expert e start at p + r * stride + e * n; dl[r] points at its (experts x BT) block.
/// Stream: the stores are streaming stores (dx aligned to the packet size, see stream_store).
template <int BI, int BT, bool Stream, class Scalar>
inline void axpy_block(const Scalar* p, Index routers, Index experts, Index stride, Index n,
                       const Scalar* const* dl, Index i, Scalar* dx, Index lddx, LineStream<Scalar>& stream) {
  using namespace Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index L = lanes<Scalar>;
  P acc[BI][BT];
  set_zero(acc);
  for (Index r = 0; r < routers; ++r)
    for (Index e = 0; e < experts; ++e) {
      const Scalar* w = p + r * stride + e * n + i;
      P d[BT];
      FEDMOE_UNROLL
      for (int b = 0; b < BT; ++b) d[b] = pset1<P>(dl[r][e + b * experts]);
      FEDMOE_UNROLL
      for (int q = 0; q < BI; ++q) {
        P wv = ploadu<P>(w + q * L);
        in_register(wv);
        FEDMOE_UNROLL
        for (int b = 0; b < BT; ++b) acc[q][b] = pmadd(wv, d[b], acc[q][b]);
      }
    }
  stream.step();
  FEDMOE_UNROLL
  for (int q = 0; q < BI; ++q)
    FEDMOE_UNROLL
    for (int b = 0; b < BT; ++b) {
      if constexpr (Stream)
        stream_store(dx + b * lddx + i + q * L, acc[q][b]);
      else
        pstoreu(dx + b * lddx + i + q * L, acc[q][b]);
    }
}

/// g[a](i .. i + BI*L) (+)= sum_{j in [j0, j1)} x_j(i ..) dl(a, j) for BA rows, tokens in order.
/// With a stream, each token step also fetches the stream's next lines.
template <int BA, int BI, class Scalar>
inline void outer_block(Scalar* const (&g)[BA], const Scalar* dl, Index lddl, const Scalar* x, Index ldx, Index i,
                        Index j0, Index j1, bool first, LineStream<Scalar>& stream) {
  using namespace Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index L = lanes<Scalar>;
  P acc[BA][BI];
  FEDMOE_UNROLL
  for (int a = 0; a < BA; ++a)
    FEDMOE_UNROLL
    for (int q = 0; q < BI; ++q) acc[a][q] = first ? pset1<P>(Scalar(0)) : ploadu<P>(g[a] + i + q * L);
  for (Index j = j0; j < j1; ++j) {
    P xv[BI];
    FEDMOE_UNROLL
    for (int q = 0; q < BI; ++q) xv[q] = ploadu<P>(x + j * ldx + i + q * L);
    stream.step();
    FEDMOE_UNROLL
    for (int a = 0; a < BA; ++a) {
      const P d = pset1<P>(dl[a + j * lddl]);
      FEDMOE_UNROLL
      for (int q = 0; q < BI; ++q) acc[a][q] = pmadd(xv[q], d, acc[a][q]);
    }
  }
  FEDMOE_UNROLL
  for (int a = 0; a < BA; ++a)
    FEDMOE_UNROLL
    for (int q = 0; q < BI; ++q) pstoreu(g[a] + i + q * L, acc[a][q]);
}

/// Calls f.template operator()<N>() with N = n for n in 1 .. 4 (block remainders).
template <class F>
inline void with_block(Index n, F&& f) {
  switch (n) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 3: f.template operator()<3>(); break;
    case 4: f.template operator()<4>(); break;
    default: break;
  }
}

}  // namespace kernel

/// `routers` linear routers of width x experts over the same tokens (see the file comment).
template <class Scalar>
struct LinearRouter {
  Index width = 0;
  Index experts = 0;
  Index routers = 1;

  /// Tokens per tile of the backward pass: each tile's dW partial sums are loaded and stored once, and
  /// its x columns (about 256 KiB, 16 to 128 tokens) stay in L2 between the dW and the dx kernels.
  Index tile_tokens() const {
    const Index fit = (Index(256) << 10) / (std::max<Index>(width, 1) * Index(sizeof(Scalar)));
    return std::clamp<Index>(fit, 16, 128);
  }
  /// When x streams from memory (and the weights fit group_bytes): tiles of about 32 KiB (at least 4
  /// tokens), whose x stays in L1 across the row blocks (measured 5-10 % faster at 65536 tokens; slower
  /// when x is in cache).
  Index streaming_tile_tokens() const {
    const Index fit = (Index(32) << 10) / (std::max<Index>(width, 1) * Index(sizeof(Scalar)));
    return std::clamp<Index>(fit, 4, 128);
  }
  /// Tokens larger than this (bytes) come from memory rather than cache: the kernels prefetch ahead.
  static constexpr std::size_t prefetch_bytes = std::size_t(1) << 20;

  static bool streams(const TokensRef<Scalar>& x) {
    return static_cast<std::size_t>(x.size()) * sizeof(Scalar) > prefetch_bytes;
  }

  /// dx larger than this (bytes) would not stay in cache for its consumer: the full packets of dx are
  /// written with streaming stores (when its columns are aligned to the packet size).
  static constexpr std::size_t stream_store_bytes = std::size_t(16) << 20;

  static bool streams_out(const Matrix<Scalar>& dx) {
    constexpr std::size_t align = sizeof(kernel::Packet<Scalar>);
    return static_cast<std::size_t>(dx.size()) * sizeof(Scalar) > stream_store_bytes &&
           reinterpret_cast<std::uintptr_t>(dx.data()) % align == 0 &&
           static_cast<std::size_t>(dx.rows()) * sizeof(Scalar) % align == 0;
  }

  /// Router weights (bytes) that one pass over streamed tokens keeps in L1 beside them.
  static constexpr std::size_t group_bytes = std::size_t(16) << 10;

  /// Whether x streams from memory and the weights of `used` routers exceed group_bytes: then the forward
  /// runs tiles of tile_tokens() tokens group of rows by group of rows (see forward_tiles), and the backward
  /// keeps its tiles of tile_tokens() (measured 10 % faster than its ~32 KiB tiles for two routers at K = 8,
  /// slower for one).
  bool tiles(const TokensRef<Scalar>& x, std::size_t used) const {
    return streams(x) && used * static_cast<std::size_t>(experts * width) * sizeof(Scalar) > group_bytes;
  }

  /// Parameters of one router: width * experts weights, then experts biases.
  Index router_params() const { return width * experts + experts; }
  Index num_params() const { return routers * router_params(); }

  /// logits = W x + b (experts x tokens) of the first router.
  void forward(const Scalar* p, const TokensRef<Scalar>& x, Matrix<Scalar>& logits) const {
    forward<1>(p, x, {&logits});
  }
  /// logits[r] = W_r x + b_r (experts x tokens) for the first R routers (R <= routers; the others are
  /// not computed).
  template <std::size_t R>
  void forward(const Scalar* p, const TokensRef<Scalar>& x, const std::array<Matrix<Scalar>*, R>& logits) const {
    const Index t = x.cols();
    for (std::size_t r = 0; r < R; ++r) logits[r]->resize(experts, t);
    constexpr Index NT = kernel::wide;
    if (tiles(x, R)) {
      forward_tiles<R>(p, x, logits);
      return;
    }
    // Tokens outer, rows inner: a block of tokens is read from memory once and stays in L1 for every row.
    Index j = 0;
    for (; j + NT <= t; j += NT) forward_tokens<R, NT>(p, x, logits, j);
    if (j < t) kernel::with_block(t - j, [&]<int BT>() { forward_tokens<R, BT>(p, x, logits, j); });
  }

  /// g = dL/d(parameters) (overwritten) from dlogits = dL/dlogits of the first router (experts x tokens);
  /// when dx is given, *dx = dL/dx = W^T dlogits (width x tokens, resized). Further routers get zero gradients.
  void backward(const Scalar* p, const TokensRef<Scalar>& x, const Matrix<Scalar>& dlogits, Scalar* g,
                Matrix<Scalar>* dx) const {
    backward<1>(p, x, {&dlogits}, g, dx);
  }
  /// The same for the first R routers' dlogits[r]; dx sums over them (routers beyond R contribute nothing
  /// and get zero gradients).
  template <std::size_t R>
  void backward(const Scalar* p, const TokensRef<Scalar>& x, const std::array<const Matrix<Scalar>*, R>& dlogits,
                Scalar* g, Matrix<Scalar>* dx) const {
    const Index t = x.cols(), n = width, m = experts, rp = router_params(), ldx = x.outerStride();
    if (dx) dx->resize(n, t);
    for (Index r = 0; r < routers; ++r) {
      VectorMap<Scalar> gr(g + r * rp, rp);
      if (r >= static_cast<Index>(R) || t == 0) {
        gr.setZero();
        continue;
      }
      gr.tail(m).setZero();  // db = sum of dlogits' columns (token order)
      for (Index j = 0; j < t; ++j) gr.tail(m) += dlogits[r]->col(j);
    }
    const Scalar* dl[R];
    for (std::size_t r = 0; r < R; ++r) dl[r] = dlogits[r]->data();
    // Tiles of tokens: dW, then dx. When x streams from memory, the kernels of a tile fetch the next
    // tile's x, a line or two per step (steps: about one per token and row block of dW, one per dx block),
    // so that it arrives while this tile computes.
    constexpr Index L = kernel::lanes<Scalar>, NI = kernel::wide;
    const Index pf = streams(x) ? 1 : 0, tile = pf && !tiles(x, R) ? streaming_tile_tokens() : tile_tokens();
    const bool nt = dx && streams_out(*dx);
    for (Index j0 = 0; j0 < t; j0 += tile) {
      const Index j1 = std::min(t, j0 + tile);
      const Index chunks = std::max<Index>(1, n / (NI * L));
      const Index blocks = static_cast<Index>(R) * ((m + 3) / 4) * (j1 - j0) + (dx ? (j1 - j0 + NI - 1) / NI : 0);
      const Index steps = blocks * chunks;
      kernel::LineStream<Scalar> stream(x.data(), ldx, n, j1, pf * std::min(t, j1 + tile), steps);
      for (std::size_t r = 0; r < R; ++r)
        weight_gradient_tile(g + static_cast<Index>(r) * rp, dl[r], x.data(), ldx, j0, j1, stream);
      if (dx) input_gradient_tile<R>(p, dl, *dx, j0, j1, nt, stream);
    }
    if (nt) kernel::stream_fence();
  }

  /// PyTorch nn.Linear's default for the first router: U(-1/sqrt(width), 1/sqrt(width)) for weight
  /// and bias. Further routers are left as they are (the noisy gate sets its noise router itself).
  void init(Scalar* p, Rng& rng) const {
    const double bound = 1.0 / std::sqrt(static_cast<double>(width));
    for (Index i = 0; i < router_params(); ++i) p[i] = rng.uniform<Scalar>(Scalar(-bound), Scalar(bound));
  }

private:
  /// logits[r](:, j .. j + BT) for every router r < R. When x streams from memory, the kernels fetch
  /// the block of tokens two blocks ahead, spread over all their packet steps.
  template <std::size_t R, int BT>
  void forward_tokens(const Scalar* p, const TokensRef<Scalar>& x, const std::array<Matrix<Scalar>*, R>& logits,
                      Index j) const {
    constexpr Index L = kernel::lanes<Scalar>;
    const Index n = width, m = experts, ldx = x.outerStride(), t = x.cols();
    const bool pf = streams(x);
    const Index ahead = j + 2 * BT, calls = static_cast<Index>(R) * ((m + 3) / 4);
    kernel::LineStream<Scalar> stream(x.data(), ldx, n, pf ? std::min(ahead, t) : 0, pf ? std::min(ahead + BT, t) : 0,
                                      calls * (n / L));
    for (std::size_t r = 0; r < R; ++r) forward_rows<BT>(p, x, *logits[r], static_cast<Index>(r), 0, m, j, stream);
  }

  /// Streamed tokens whose routers' weights exceed group_bytes: tiles of tile_tokens() tokens (~256 KiB,
  /// they stay in L2), and within a tile, groups of rows with at most group_bytes of weights, each over
  /// all the tile's tokens, while the kernels fetch the next tile, spread over all their packet steps.
  /// (With every row per block of tokens, 32 KiB of weights and the arriving tokens overflowed L1 and
  /// the reads from memory stopped overlapping the FMAs: the noisy gate's two routers at K = 8.)
  template <std::size_t R>
  void forward_tiles(const Scalar* p, const TokensRef<Scalar>& x, const std::array<Matrix<Scalar>*, R>& logits) const {
    constexpr Index L = kernel::lanes<Scalar>, NT = kernel::wide;
    const Index n = width, m = experts, ldx = x.outerStride(), t = x.cols();
    const Index tile = std::max<Index>(NT, tile_tokens() / NT * NT);
    const Index fit = static_cast<Index>(group_bytes / (static_cast<std::size_t>(n) * sizeof(Scalar)));
    const Index group = std::max<Index>(4, fit / 4 * 4);  // rows per group, whole row blocks
    for (Index j0 = 0; j0 < t; j0 += tile) {
      const Index j1 = std::min(t, j0 + tile);
      const Index steps = static_cast<Index>(R) * ((m + 3) / 4) * ((j1 - j0 + NT - 1) / NT) * (n / L);
      kernel::LineStream<Scalar> stream(x.data(), ldx, n, j1, std::min(t, j1 + tile), steps);
      for (std::size_t r = 0; r < R; ++r)
        for (Index a0 = 0; a0 < m; a0 += group) {
          const Index a1 = std::min(m, a0 + group);
          Index j = j0;
          for (; j + NT <= j1; j += NT) forward_rows<NT>(p, x, *logits[r], static_cast<Index>(r), a0, a1, j, stream);
          if (j < j1)
            kernel::with_block(j1 - j, [&]<int BT>() {
              forward_rows<BT>(p, x, *logits[r], static_cast<Index>(r), a0, a1, j, stream);
            });
        }
    }
  }

  /// Rows [a0, a1) of router r's logits for tokens j .. j + BT; the kernels step `stream` while it has lines.
  template <int BT>
  void forward_rows(const Scalar* p, const TokensRef<Scalar>& x, Matrix<Scalar>& logits, Index r, Index a0, Index a1,
                    Index j, kernel::LineStream<Scalar>& stream) const {
    const Index n = width, m = experts, ldx = x.outerStride();
    const Scalar* pr = p + r * router_params();
    const Scalar* xj = x.data() + j * ldx;
    Scalar* out = logits.data() + j * m;
    for (Index b0 = a0; b0 < a1; b0 += 4)
      kernel::with_block(std::min<Index>(4, a1 - b0), [&]<int BA>() {
        const Scalar* w[BA];
        Scalar bias[BA];
        FEDMOE_UNROLL
        for (int a = 0; a < BA; ++a) {
          w[a] = pr + (b0 + a) * n;
          bias[a] = pr[n * m + b0 + a];
        }
        if (stream.left > 0)
          kernel::dot_block<BA, BT, true>(w, bias, xj, ldx, n, out + b0, m, &stream);
        else
          kernel::dot_block<BA, BT, false>(w, bias, xj, ldx, n, out + b0, m, &stream);
      });
  }

  /// One router's dW(:, e) (+)= x_j dl(e, j) for the tokens of one tile (overwrites at the first tile);
  /// the kernels step `stream` (see backward).
  void weight_gradient_tile(Scalar* g, const Scalar* dl, const Scalar* x, Index ldx, Index j0, Index j1,
                            kernel::LineStream<Scalar>& stream) const {
    constexpr Index L = kernel::lanes<Scalar>, NI = kernel::wide;
    const Index m = experts, n = width;
    const bool first = j0 == 0;
    const auto rows = [&]<int BA, int BI>(Index a0) {
      Scalar* ga[BA];
      FEDMOE_UNROLL
      for (int a = 0; a < BA; ++a) ga[a] = g + (a0 + a) * n;
      const Scalar* dla = dl + a0;
      Index i = 0;
      for (; i + BI * L <= n; i += BI * L) kernel::outer_block<BA, BI>(ga, dla, m, x, ldx, i, j0, j1, first, stream);
      for (; i + L <= n; i += L) kernel::outer_block<BA, 1>(ga, dla, m, x, ldx, i, j0, j1, first, stream);
      for (; i < n; ++i)
        FEDMOE_UNROLL
        for (int a = 0; a < BA; ++a) {
          Scalar s = first ? Scalar(0) : ga[a][i];
          for (Index j = j0; j < j1; ++j) s += x[i + j * ldx] * dla[a + j * m];
          ga[a][i] = s;
        }
    };
    Index a0 = 0;
    // Blocks of 8 rows x NI/2 packets where the registers allow: each x packet loaded feeds 8 rows.
    if constexpr (NI == 4)
      for (; a0 + 8 <= m; a0 += 8) rows.template operator()<8, 2>(a0);
    for (; a0 < m; a0 += 4)
      kernel::with_block(std::min<Index>(4, m - a0), [&]<int BA>() { rows.template operator()<BA, NI>(a0); });
  }

  /// dx(:, j) = sum_{r < R, e} W_re dl_r(e, j) for the tokens of one tile.
  template <std::size_t R>
  void input_gradient_tile(const Scalar* p, const Scalar* const (&dl)[R], Matrix<Scalar>& dx, Index j0, Index j1,
                           bool nt, kernel::LineStream<Scalar>& stream) const {
    constexpr Index L = kernel::lanes<Scalar>, NI = kernel::wide, NT = kernel::wide;
    const Index m = experts, n = width, rp = router_params();
    const Index used = static_cast<Index>(R);
    Scalar* out = dx.data();
    for (Index j = j0; j < j1; j += NT) {
      kernel::with_block(std::min<Index>(NT, j1 - j), [&]<int BT>() {
        const Scalar* dlj[R];
        for (std::size_t r = 0; r < R; ++r) dlj[r] = dl[r] + j * m;
        Scalar* dxj = out + j * n;
        Index i = 0;
        for (; i + NI * L <= n; i += NI * L) {
          if (nt)
            kernel::axpy_block<NI, BT, true>(p, used, m, rp, n, dlj, i, dxj, n, stream);
          else
            kernel::axpy_block<NI, BT, false>(p, used, m, rp, n, dlj, i, dxj, n, stream);
        }
        for (; i + L <= n; i += L) kernel::axpy_block<1, BT, false>(p, used, m, rp, n, dlj, i, dxj, n, stream);
        for (; i < n; ++i)
          FEDMOE_UNROLL
          for (int b = 0; b < BT; ++b) {
            Scalar s = 0;
            for (Index r = 0; r < used; ++r)
              for (Index e = 0; e < m; ++e) s += p[r * rp + e * n + i] * dlj[r][e + b * m];
            dxj[i + b * n] = s;
          }
      });
    }
  }
};

}  // namespace fedmoe::detail
