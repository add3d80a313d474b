// The recurrence of crnn's fast CPU RNN path (crnn/layers/fast_rnn.py), compiled: float32, AVX-512 or
// AVX2 + FMA (one source, built for the CPU at hand).
//
// A step of a vanilla RNN over many sequences is `h[rows] = act(P[rows] + h_previous[rows] @ W_hh^T)`:
// a (rows x H) @ (H x H) product with H ~ 64, too small for a BLAS call to pay off (on a Zen 5 core
// MKL's addmm_ runs it at ~90 GFLOP/s, oneDNN at 65-90: their fixed cost per call dominates), then
// an activation, which torch runs as a further pass over the block. Here a whole pass (every step,
// both directions of a weight-shared pass) is one call: a register-tiled kernel (6 rows x 64 columns
// of accumulators with AVX-512, 6 x 16 with AVX2; the weight panel streamed from L1; ~210 GFLOP/s on
// one Zen 5 core) computes each
// step with the activation applied in registers, reading the input projection and writing the states
// out of place; the backward pass likewise fuses the activation's derivative and accumulates the
// W_hh gradient block by block while the blocks are in cache.
//
// The passes read their input rows through an index and write their output in any layout of elements
// (the 2-D layers' NCHW maps: 8 neighbouring pixels moved as an 8x8 block transposed in registers);
// `pixel_columns` copies NCHW maps into the rows the 2-D layers' row pass reads, the same way.
//
// Layout (as `_VanillaRNNFunction`): sequences step-major, block s = the next steps[s] rows, one token
// of every sequence at least s + 1 long, longer sequences first; steps never increase. Forward
// direction: all rows of block s > 0 continue the first steps[s] rows of block s - 1. Reverse
// direction: the first steps[s + 1] rows of block s continue block s + 1; its other rows start there.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

namespace {

// The vector width is the build's: the AVX-512 build (-mavx512f) works on 16 floats a register and
// tiles of 6 rows x 64 columns; the AVX2 build (-mavx2 -mfma; 16 registers of 8 floats) on tiles of
// 6 rows x 16 columns (12 accumulators + 2 weights + 1 broadcast). `fast_rnn.compiled_kernel` builds
// the one the CPU runs.
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;       // floats per register
constexpr int kMaxVectors = 4;   // registers per tile row: 64 columns
constexpr int64_t kOuterChunk = 512;  // rows of a and b per sweep of `outer` over g's tiles (see outer)
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec set1(float x) { return _mm512_set1_ps(x); }
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec vabs(Vec a) { return _mm512_abs_ps(a); }
inline Vec round_nearest(Vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec times_pow2(Vec a, Vec n) { return _mm512_scalef_ps(a, n); }  // a 2^n, n integral
inline Vec with_sign_of(Vec a, Vec s) {                                  // |a| with s's sign (a >= 0)
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(a), _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(0x80000000))));
}
inline Vec where_positive(Vec h, Vec a) {  // h > 0 ? a : 0
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, zero(), _CMP_GT_OQ), a);
}
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int kMaxVectors = 2;  // 16 columns: 6 x 2 accumulators fit AVX2's 16 registers
constexpr int64_t kOuterChunk = 48;  // (see outer)
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec set1(float x) { return _mm256_set1_ps(x); }
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec vabs(Vec a) { return _mm256_andnot_ps(set1(-0.0f), a); }
inline Vec round_nearest(Vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Vec times_pow2(Vec a, Vec n) {  // 2^n built in the exponent field: tanh_lanes' n is in [0, 26]
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
}
inline Vec with_sign_of(Vec a, Vec s) { return _mm256_or_ps(a, _mm256_and_ps(s, set1(-0.0f))); }
inline Vec where_positive(Vec h, Vec a) { return _mm256_and_ps(_mm256_cmp_ps(h, zero(), _CMP_GT_OQ), a); }
#else
#error "crnn's compiled RNN pass needs AVX-512 (-mavx512f) or AVX2 with FMA (-mavx2 -mfma)"
#endif

constexpr int kRows = 6;          // rows per register tile
constexpr int64_t kGrain = 192;   // rows per thread at least: a smaller step stays on one thread

enum class Epilogue { kNone, kTanh, kRelu, kTanhGrad, kReluGrad };

// tanh(x) for float32 lanes: m / (m + 2) with m = expm1(2|x|), x's sign. expm1 from Cephes' expf
// (2|x| = n ln 2 + r, |r| <= ln 2 / 2, degree-5 polynomial): expm1(2|x|) = 2^n (q + 1) - 1 with
// q = expm1(r) = r + r^2 P(r), formed as 2^n q + (2^n - 1), so that nothing cancels near 0 (n = 0: m = q).
// |x| is clamped to 9 (tanh(9) is 1 in float32; 2^n stays finite; a NaN passes). ~2 ulp at most.
inline Vec tanh_lanes(Vec x) {
  const Vec t = vmin(set1(9.0f), vabs(x));  // min returns its second operand where either is NaN
  const Vec two_t = add(t, t);
  const Vec n = round_nearest(mul(two_t, set1(1.44269504088896341f)));
  Vec r = fnmadd(n, set1(0.693359375f), two_t);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  Vec y = set1(1.9875691500e-4f);
  y = fmadd(y, r, set1(1.3981999507e-3f));
  y = fmadd(y, r, set1(8.3334519073e-3f));
  y = fmadd(y, r, set1(4.1665795894e-2f));
  y = fmadd(y, r, set1(1.6666665459e-1f));
  y = fmadd(y, r, set1(5.0000001201e-1f));
  const Vec q = fmadd(y, mul(r, r), r);
  const Vec p = times_pow2(set1(1.0f), n);
  const Vec m = fmadd(p, q, sub(p, set1(1.0f)));
  return with_sign_of(div(m, add(m, set1(2.0f))), x);
}

template <Epilogue E>
inline Vec finish(Vec acc, const float* aux) {
  if constexpr (E == Epilogue::kNone) {
    return acc;
  } else if constexpr (E == Epilogue::kTanh) {
    return tanh_lanes(acc);
  } else if constexpr (E == Epilogue::kRelu) {
    return vmax(acc, zero());
  } else if constexpr (E == Epilogue::kTanhGrad) {  // tanh' = 1 - h^2
    const Vec h = load(aux);
    return mul(acc, fnmadd(h, h, set1(1.0f)));
  } else {  // relu' = [h > 0]
    return where_positive(load(aux), acc);
  }
}

// float32 rows (unit column stride): row r at p + r * ld, or at p + idx[r] * ld (a gather; for an
// output, a scatter: out(r) writes)
struct Rows {
  const float* p;
  int64_t ld;
  const int64_t* idx = nullptr;
  const float* row(int64_t r) const { return p + (idx ? idx[r] : r) * ld; }
  float* out(int64_t r) const { return const_cast<float*>(row(r)); }
  Rows at(int64_t r) const { return !p ? *this : idx ? Rows{p, ld, idx + r} : Rows{p + r * ld, ld, nullptr}; }
  Rows col(int64_t c) const { return {p ? p + c : nullptr, ld, idx}; }
};

struct Product {  // a[rows, 0:K] @ b[0:K, columns] (b row-major with row stride ldb); K = 0: nothing
  Rows a;
  const float* b;
  int64_t ldb, K;
};

// For r < R: out[r] = finish(init[r] (or bias, or 0) + a1[r] @ b1 + a2[r] @ b2) over kLanes*NV columns;
// side (if given) gets the sum before a2[r] @ b2. out may be init (in place: a tile reads its rows first)
template <int R, int NV, Epilogue E>
inline void tile(Rows init, const float* bias, Product p1, Rows side, Product p2, Rows out, Rows aux) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = init.p ? load(init.row(r) + v * kLanes) : (bias ? load(bias + v * kLanes) : zero());
  for (const Product* p : {&p1, &p2}) {
    for (int64_t k = 0; k < p->K; ++k) {
      Vec w[NV];
      for (int v = 0; v < NV; ++v) w[v] = load(p->b + k * p->ldb + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const Vec x = set1(p->a.row(r)[k]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(x, w[v], acc[r][v]);
      }
    }
    if (p == &p1 && side.p)
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store(side.out(r) + v * kLanes, acc[r][v]);
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      store(out.out(r) + v * kLanes, finish<E>(acc[r][v], aux.p ? aux.row(r) + v * kLanes : nullptr));
}

template <int NV, Epilogue E>
void panel(int64_t rows, Rows init, const float* bias, Product p1, Rows side, Product p2, Rows out, Rows aux) {
  int64_t r = 0;
  auto call = [&](auto rows_tag) {
    constexpr int n = decltype(rows_tag)::value;
    tile<n, NV, E>(init.at(r), bias, {p1.a.at(r), p1.b, p1.ldb, p1.K}, side.at(r), {p2.a.at(r), p2.b, p2.ldb, p2.K},
                   out.at(r), aux.at(r));
  };
  for (; r + kRows <= rows; r += kRows) call(std::integral_constant<int, kRows>{});
  switch (rows - r) {
    case 5: call(std::integral_constant<int, 5>{}); break;
    case 4: call(std::integral_constant<int, 4>{}); break;
    case 3: call(std::integral_constant<int, 3>{}); break;
    case 2: call(std::integral_constant<int, 2>{}); break;
    case 1: call(std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// fn(std::integral_constant<int, NV>) for the NV = min(kMaxVectors, columns / kLanes) registers of a
// column panel (columns a multiple of kLanes)
template <class Fn>
inline void with_vectors(int64_t columns, const Fn& fn) {
  switch (std::min<int64_t>(kMaxVectors, columns / kLanes)) {
    case 4: if constexpr (kMaxVectors >= 4) fn(std::integral_constant<int, 4>{}); break;
    case 3: if constexpr (kMaxVectors >= 3) fn(std::integral_constant<int, 3>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    default: fn(std::integral_constant<int, 1>{}); break;
  }
}

// Rows [0, rows) of: out = finish(init + p1 + p2), where p2 applies to the first `fed` rows only (the
// rows with a previous state); N output columns (a multiple of 16) in panels of kMaxVectors registers;
// rows split over threads.
template <Epilogue E>
void step(int64_t rows, int64_t fed, int64_t N, Rows init, const float* bias, Product p1, Product p2, Rows out,
          Rows aux, Rows side = {nullptr, 0}) {
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t c = 0; c < N; c += kMaxVectors * kLanes) {
      for (int part = 0; part < 2; ++part) {  // rows with a previous state, then rows without
        const int64_t lo = part ? std::max(begin, fed) : begin, hi = part ? end : std::min(end, fed);
        if (lo >= hi) continue;
        const Product q1{p1.a.at(lo), p1.b ? p1.b + c : nullptr, p1.ldb, p1.K};
        const Product q2{p2.a.at(lo), p2.b ? p2.b + c : nullptr, p2.ldb, part ? 0 : p2.K};
        const Rows i = init.at(lo).col(c), o = out.at(lo).col(c), a = aux.at(lo).col(c), sd = side.at(lo).col(c);
        const float* bc = bias ? bias + c : nullptr;
        with_vectors(N - c, [&](auto nv) { panel<decltype(nv)::value, E>(hi - lo, i, bc, q1, sd, q2, o, a); });
      }
    }
  });
}

// g[i, c:c+kLanes*NV] += sum_t a[t, i] * b[t, c:...] for i0 <= i < i0 + R (g row stride ldg)
template <int R, int NV>
inline void outer_tile(int64_t rows, Rows a, int64_t i0, Rows b, int64_t c, float* g, int64_t ldg) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = load(g + (i0 + r) * ldg + c + v * kLanes);
  for (int64_t t = 0; t < rows; ++t) {
    Vec w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load(b.row(t) + c + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec x = set1(a.row(t)[i0 + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(x, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(g + (i0 + r) * ldg + c + v * kLanes, acc[r][v]);
}

template <int NV>
void outer_rows(int64_t R, int64_t rows, Rows a, int64_t i, Rows b, int64_t c, float* g, int64_t ldg) {
  switch (R) {
    case 6: outer_tile<6, NV>(rows, a, i, b, c, g, ldg); break;
    case 5: outer_tile<5, NV>(rows, a, i, b, c, g, ldg); break;
    case 4: outer_tile<4, NV>(rows, a, i, b, c, g, ldg); break;
    case 3: outer_tile<3, NV>(rows, a, i, b, c, g, ldg); break;
    case 2: outer_tile<2, NV>(rows, a, i, b, c, g, ldg); break;
    default: outer_tile<1, NV>(rows, a, i, b, c, g, ldg); break;
  }
}

// g (M x N) += a[0:rows, 0:M]^T @ b[0:rows, 0:N], N a multiple of 16: tiles of kRows rows of g (one
// thread each, so no two threads write the same g) x column panels of kMaxVectors registers
void outer(int64_t rows, Rows a, int64_t M, Rows b, int64_t N, float* g) {
  static_assert(kRows == 6, "outer_rows dispatches 1..6 rows");
  const int64_t tiles = (M + kRows - 1) / kRows;
  const int64_t grain = rows * N * kRows >= (1 << 16) ? 1 : tiles;  // split from ~64K MACs a tile
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    // a chunk of the rows of a and b at a time, read by every tile of g while it is in cache. AVX2: 48
    // rows, in L1 (a stand-alone micro-benchmark on a Zen 3 core: 61-65 GFLOP/s streaming all rows per
    // tile, 76-77 in chunks of 48). AVX-512: up to 512, from L2: fewer loads and stores of the 6 x 64
    // tiles of g (sws_birnn's backward passes at the detection-tower shapes on a Zen 5 core, interleaved
    // medians: 0.88-0.90x their time in chunks of 48)
    for (int64_t t = 0; t < rows; t += kOuterChunk) {
      const int64_t n = std::min(kOuterChunk, rows - t);
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t i = tile * kRows, R = std::min<int64_t>(kRows, M - i);
        for (int64_t c = 0; c < N; c += kMaxVectors * kLanes)
          with_vectors(N - c, [&](auto nv) { outer_rows<decltype(nv)::value>(R, n, a.at(t), i, b.at(t), c, g, N); });
      }
    }
  });
}

std::vector<int64_t> block_starts(const std::vector<int64_t>& steps) {
  std::vector<int64_t> starts(steps.size(), 0);
  for (size_t s = 1; s < steps.size(); ++s) starts[s] = starts[s - 1] + steps[s - 1];
  return starts;
}

void check(const torch::Tensor& t, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(t.dtype() == torch::kFloat32 && t.device().is_cpu(), name, ": a float32 CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols && t.stride(1) == 1, name, ": (", rows,
              ", ", cols, ") rows with unit column stride");
  TORCH_CHECK(cols % 16 == 0, name, ": the compiled pass needs a multiple of 16 columns");
}

const Rows kNone{nullptr, 0};
const Product kNoProduct{kNone, nullptr, 0, 0};

}  // namespace

// An index's values are not checked here: its one caller, the 2-D layers' packed node
// (separable._PackedPasses), builds them (a permutation of x's rows; every element of the output layout
// written once: tests/test_fast_rnn.py).
const int64_t* index_of(const c10::optional<torch::Tensor>& index, int64_t T, const char* name) {
  if (!index) return nullptr;
  TORCH_CHECK(index->dtype() == torch::kInt64 && index->is_contiguous() && index->dim() == 1 && index->size(0) == T,
              name, ": a contiguous int64 index of the T = ", T, " tokens");
  return index->data_ptr<int64_t>();
}

// Runs fn(0) and fn(1) at once on two threads where there are two (each single-threaded inside: a
// parallel_for within a parallel region runs inline), one after the other otherwise; fn(0) alone
// (with its own row splitting) for one.
template <class Fn>
void each_direction(int64_t directions, const Fn& fn) {
  if (directions == 1) return fn(0);
  at::parallel_for(0, directions, 1, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) fn(d);
  });
}

// Where the merged output goes: token t's state, channel c, at element offset[t] + c * stride[t] of a
// flat output (row-major (T, H): offset t H, stride 1; NCHW maps: the pixel's channel-0 element and
// the map's H W). Without a layout, (T, H) rows.
struct Layout {
  const int64_t* offset = nullptr;
  const int64_t* stride = nullptr;
};

Layout layout_of(const c10::optional<torch::Tensor>& offset, const c10::optional<torch::Tensor>& stride, int64_t T) {
  TORCH_CHECK(offset.has_value() == stride.has_value(), "an output layout needs both offsets and strides");
  return {index_of(offset, T, "offset"), index_of(stride, T, "stride")};
}

// 8 vectors of 8 floats transposed in registers: lane j of v[i] <-> lane i of v[j]
inline void transpose8(__m256 (&v)[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]), t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[i + 2 * j + 1] = _mm256_shuffle_ps(t[i + j], t[i + j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    }
  for (int i = 0; i < 4; ++i) v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20), v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
}

// How a group of 8 tokens (fewer at the end) lies in a layout: all with contiguous channels (stride 1:
// rows), 8 at consecutive elements with one stride (8 neighbouring pixels of an NCHW map: 8x8 blocks,
// transposed), or neither (element by element).
enum class Group { kRows, kBlocks, kElements };

inline Group group_of(Layout layout, int64_t r, int64_t n, int64_t H) {
  bool rows = true, blocks = n == 8 && H % 8 == 0;
  for (int64_t i = 0; i < n; ++i) {
    rows = rows && layout.stride[r + i] == 1;
    blocks = blocks && layout.stride[r + i] == layout.stride[r] && layout.offset[r + i] == layout.offset[r] + i;
  }
  return rows ? Group::kRows : blocks ? Group::kBlocks : Group::kElements;
}

// The token rows [begin, end) of (T, H), h0 (+ h1: the directions' sum), written to a flat layout
void scatter(int64_t begin, int64_t end, int64_t H, const float* h0, const float* h1, Layout layout, float* dst) {
  auto row = [&](int64_t r, int64_t c) {
    const int64_t i = r * H + c;
    return h1 ? _mm256_add_ps(_mm256_loadu_ps(h0 + i), _mm256_loadu_ps(h1 + i)) : _mm256_loadu_ps(h0 + i);
  };
  for (int64_t r = begin; r < end; r += 8) {
    const int64_t n = std::min<int64_t>(8, end - r);
    switch (group_of(layout, r, n, H)) {
      case Group::kRows:
        for (int64_t i = r; i < r + n; ++i)
          for (int64_t c = 0; c < H; c += 8) _mm256_storeu_ps(dst + layout.offset[i] + c, row(i, c));
        break;
      case Group::kBlocks:
        for (int64_t c = 0; c < H; c += 8) {
          __m256 v[8];
          for (int i = 0; i < 8; ++i) v[i] = row(r + i, c);
          transpose8(v);
          for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + layout.offset[r] + (c + j) * layout.stride[r], v[j]);
        }
        break;
      case Group::kElements:
        for (int64_t c = 0; c < H; ++c)
          for (int64_t i = r; i < r + n; ++i)
            dst[layout.offset[i] + c * layout.stride[i]] = h1 ? h0[i * H + c] + h1[i * H + c] : h0[i * H + c];
    }
  }
}

// The token rows [begin, end) of (T, H) read from a flat layout: the inverse of `scatter`
void gather(int64_t begin, int64_t end, int64_t H, const float* src, Layout layout, float* dst) {
  for (int64_t r = begin; r < end; r += 8) {
    const int64_t n = std::min<int64_t>(8, end - r);
    switch (group_of(layout, r, n, H)) {
      case Group::kRows:
        for (int64_t i = r; i < r + n; ++i)
          for (int64_t c = 0; c < H; c += 8) _mm256_storeu_ps(dst + i * H + c, _mm256_loadu_ps(src + layout.offset[i] + c));
        break;
      case Group::kBlocks:
        for (int64_t c = 0; c < H; c += 8) {
          __m256 v[8];
          for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(src + layout.offset[r] + (c + j) * layout.stride[r]);
          transpose8(v);
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (r + i) * H + c, v[i]);
        }
        break;
      case Group::kElements:
        for (int64_t c = 0; c < H; ++c)
          for (int64_t i = r; i < r + n; ++i) dst[i * H + c] = src[layout.offset[i] + c * layout.stride[i]];
    }
  }
}

// [states (directions, T, H), merged] of a pass over the T tokens whose inputs are the rows of x
// (x_index[t] for token t, a permutation, else row t): h = act(x W_ih^T + bias + h_previous W_hh^T)
// from a zero state; direction 1 (if any) reads every sequence backwards with the same weights (on two
// threads the directions run at once, one per thread). merge: `merged` holds the sum of the directions'
// states, (T, H), or with an output layout (out_offset, out_stride) a flat tensor of T H elements laid
// out by it; else undefined.
std::vector<torch::Tensor> forward(torch::Tensor x, c10::optional<torch::Tensor> x_index, torch::Tensor w_ih,
                                   torch::Tensor bias, torch::Tensor w_hh, std::vector<int64_t> steps, bool relu,
                                   int64_t directions, bool merge, c10::optional<torch::Tensor> out_offset,
                                   c10::optional<torch::Tensor> out_stride) {
  const auto starts = block_starts(steps);
  const int64_t S = static_cast<int64_t>(steps.size()), T = S ? starts[S - 1] + steps[S - 1] : 0,
                I = x.size(1), H = w_hh.size(0);
  check(x, T, I, "x");  // one row per token (x_index: a permutation of them)
  check(w_hh, H, H, "w_hh");
  TORCH_CHECK(directions == 1 || directions == 2, "directions: 1 or 2");
  const auto w_ih_t = w_ih.t().contiguous(), w_hh_t = w_hh.t().contiguous(), b = bias.contiguous();
  const Rows xs{x.data_ptr<float>(), x.stride(0), index_of(x_index, T, "x_index")};
  const Layout out = layout_of(out_offset, out_stride, T);
  const Product input{xs, w_ih_t.data_ptr<float>(), H, I};
  // Two directions read one projection. On two threads it is computed first over all tokens, into a
  // buffer of its own, and the directions run at once; on one, direction 0 fuses it into its steps and
  // leaves it in direction 1's states, which direction 1 overwrites in place, block by block (a step
  // reads its rows of the projection before it writes their states): one pass less over it, and one
  // (T, H) buffer fewer to write. One direction fuses it into its steps.
  const bool at_once = directions == 2 && at::get_num_threads() > 1;
  const auto states = torch::empty({directions, T, H}, x.options());
  torch::Tensor projection;
  if (directions == 2) projection = at_once ? torch::empty({T, H}, x.options()) : states[1];
  if (at_once)
    step<Epilogue::kNone>(T, 0, H, kNone, b.data_ptr<float>(), input, kNoProduct, {projection.data_ptr<float>(), H},
                          kNone);
  auto run = [&](int64_t d) {
    float* h = states[d].data_ptr<float>();
    for (int64_t i = 0; i < S; ++i) {
      const int64_t s = d ? S - 1 - i : i, rows = steps[s];
      const int64_t fed = d ? (s + 1 < S ? steps[s + 1] : 0) : (s ? rows : 0);
      const Product recurrent{{fed ? h + starts[d ? s + 1 : s - 1] * H : nullptr, H}, w_hh_t.data_ptr<float>(), H, H};
      // the projection: read (direction 1, or 0 when computed first) or computed in the step
      const bool read = d == 1 || at_once;
      const Rows init = read ? Rows{projection.data_ptr<float>() + starts[s] * H, H} : kNone;
      const float* b0 = read ? nullptr : b.data_ptr<float>();
      const Product in = read ? kNoProduct : Product{xs.at(starts[s]), input.b, H, I};
      const Rows side = !read && directions == 2 ? Rows{projection.data_ptr<float>() + starts[s] * H, H} : kNone;
      const Rows out{h + starts[s] * H, H};
      if (relu)
        step<Epilogue::kRelu>(rows, fed, H, init, b0, in, recurrent, out, kNone, side);
      else
        step<Epilogue::kTanh>(rows, fed, H, init, b0, in, recurrent, out, kNone, side);
    }
  };
  if (at_once)
    each_direction(directions, run);
  else
    for (int64_t d = 0; d < directions; ++d) run(d);
  if (!merge) return {states, torch::Tensor()};
  if (directions == 1 && !out.offset) return {states, states[0]};
  auto merged = out.offset ? torch::empty({T * H}, x.options()) : torch::empty({T, H}, x.options());
  const float* h0 = states[0].data_ptr<float>();
  const float* h1 = directions == 2 ? states[1].data_ptr<float>() : nullptr;
  float* dst = merged.data_ptr<float>();
  at::parallel_for(0, T, 4 * kGrain, [&](int64_t begin, int64_t end) {
    if (!out.offset) {  // rows
      for (int64_t i = begin * H; i < end * H; i += kLanes)
        store(dst + i, h1 ? add(load(h0 + i), load(h1 + i)) : load(h0 + i));
      return;
    }
    scatter(begin, end, H, h0, h1, out, dst);
  });
  return {states, merged};
}

// The gradients [x (or undefined), W_ih, W_hh, bias] of the pass from the states `forward` returned
// and `grad`: d loss / d merged (every direction's: (T, H), or flat, laid out by (grad_offset,
// grad_stride) as `forward`'s output), or (directions, T, H) = d loss / d states. The recurrences run
// (the two directions at once, one per thread, where there are two), each accumulating its W_hh gradient
// block by block while the blocks are in cache; the other gradients follow block by block, on one
// thread as soon as a block is final; x's gradient goes to the rows the tokens read (each read once).
std::vector<torch::Tensor> backward(torch::Tensor grad, c10::optional<torch::Tensor> grad_offset,
                                    c10::optional<torch::Tensor> grad_stride, torch::Tensor states, torch::Tensor x,
                                    c10::optional<torch::Tensor> x_index, torch::Tensor w_ih, torch::Tensor w_hh,
                                    std::vector<int64_t> steps, bool relu, bool need_grad_x) {
  const int64_t D = states.size(0), T = states.size(1), H = states.size(2), I = x.size(1),
                S = static_cast<int64_t>(steps.size());
  for (int64_t d = 0; d < D; ++d) check(states[d], T, H, "states");
  check(x, T, I, "x");  // one row per token (x_index: a permutation of them)
  const Rows xs{x.data_ptr<float>(), x.stride(0), index_of(x_index, T, "x_index")};
  const Layout in = layout_of(grad_offset, grad_stride, T);
  if (in.offset) {  // gathered into token rows first: the recurrence reads rows
    TORCH_CHECK(grad.dim() == 1 && grad.size(0) == T * H && grad.is_contiguous() && grad.dtype() == torch::kFloat32,
                "grad: the flat float32 output of the layout");
    const float* src = grad.data_ptr<float>();
    auto rows = torch::empty({T, H}, states.options());
    float* dst = rows.data_ptr<float>();
    at::parallel_for(0, T, 4 * kGrain, [&](int64_t begin, int64_t end) { gather(begin, end, H, src, in, dst); });
    grad = rows;
  }
  TORCH_CHECK(grad.dim() == 2 || (grad.dim() == 3 && grad.size(0) == D),
              "grad: (T, H), flat with a layout, or (directions, T, H)");
  check(grad.dim() == 2 ? grad : grad[0], T, H, "grad");
  const auto w = w_hh.contiguous(), w_in = w_ih.contiguous();  // d pre-activation @ W passes the gradient back
  const auto options = states.options();
  const auto starts = block_starts(steps);
  // d loss / d pre-activation of each direction, and each direction's W_hh gradient
  auto da = torch::empty({D, T, H}, options);
  auto grad_w_hh = torch::zeros({D, H, H}, options);
  // Then, block by block, d loss / d projection (the directions' sum, in place in da[0]) and from it the
  // W_ih, bias and x gradients. A block is final once the last direction's recurrence has passed it: on
  // one thread (the directions one after the other) that is done right then, while the block is in
  // cache (one pass over memory instead of one per gradient); with the directions on two threads at once,
  // after both.
  float* t = da[0].data_ptr<float>();
  const float* other = D == 2 ? da[1].data_ptr<float>() : nullptr;
  auto grad_w_ih = torch::zeros({H, I}, options);
  auto grad_bias = torch::zeros({H}, options);
  torch::Tensor grad_x;
  if (need_grad_x) grad_x = torch::empty({T, I}, options);
  const Rows token_grads = need_grad_x ? Rows{grad_x.data_ptr<float>(), I, xs.idx} : kNone;  // scattered back
  auto finish_block = [&](int64_t s) {
    const int64_t rows = steps[s];
    float* block = t + starts[s] * H;
    float* gb = grad_bias.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < H; c += kLanes) {
        float* p = block + r * H + c;
        const Vec sum = other ? add(load(p), load(other + starts[s] * H + r * H + c)) : load(p);
        store(p, sum);
        store(gb + c, add(load(gb + c), sum));
      }
    outer(rows, {block, H}, H, xs.at(starts[s]), I, grad_w_ih.data_ptr<float>());
    if (need_grad_x)
      step<Epilogue::kNone>(rows, 0, I, kNone, nullptr, {{block, H}, w_in.data_ptr<float>(), I, H}, kNoProduct,
                            token_grads.at(starts[s]), kNone);
  };
  const bool in_turn = D == 1 || at::get_num_threads() == 1;  // the directions one after the other
  each_direction(D, [&](int64_t d) {
    const Rows upstream = grad.dim() == 2 ? Rows{grad.data_ptr<float>(), grad.stride(0)}
                                          : Rows{grad[d].data_ptr<float>(), grad.stride(1)};
    const float* h = states[d].data_ptr<float>();
    float* a = da[d].data_ptr<float>();
    float* g = grad_w_hh[d].data_ptr<float>();
    const bool last = in_turn && d == D - 1;
    for (int64_t i = 0; i < S; ++i) {
      // direction 0 backwards from its last step; direction 1 from ITS last step, block 0
      const int64_t s = d ? i : S - 1 - i, rows = steps[s];
      // rows of block s whose state a later step read: its gradient flows back into them
      const int64_t later = d ? s - 1 : s + 1;
      const int64_t fed = d ? (s ? rows : 0) : (s + 1 < S ? steps[s + 1] : 0);
      const Product recurrent{{fed ? a + starts[later] * H : nullptr, H}, w.data_ptr<float>(), H, H};
      const Rows init = upstream.at(starts[s]), aux{h + starts[s] * H, H};
      float* out = a + starts[s] * H;
      if (relu)
        step<Epilogue::kReluGrad>(rows, fed, H, init, nullptr, kNoProduct, recurrent, {out, H}, aux);
      else
        step<Epilogue::kTanhGrad>(rows, fed, H, init, nullptr, kNoProduct, recurrent, {out, H}, aux);
      // W_hh's gradient: this block's pre-activation gradient times the states it read
      if (d == 0 && s > 0) outer(rows, {out, H}, H, {h + starts[s - 1] * H, H}, H, g);
      if (d == 1 && s + 1 < S) outer(steps[s + 1], {out, H}, H, {h + starts[s + 1] * H, H}, H, g);
      // the block this step read is final now (the last direction's last block: after the loop)
      if (last && 0 <= later && later < S) finish_block(later);
    }
    if (last && S) finish_block(d ? S - 1 : 0);
  });
  if (!in_turn)
    for (int64_t s = 0; s < S; ++s) finish_block(s);
  return {grad_x, grad_w_ih, D == 2 ? grad_w_hh[0].add_(grad_w_hh[1]) : grad_w_hh[0], grad_bias};
}

// Maps (B_k, C, H_k, W_k) <-> their pixels column by column, (sum_k W_k B_k H_k, C) rows (map k's
// (W_k, B_k, H_k, C) permutation, one map after another): 8 neighbouring pixels x 8 channels at a time,
// transposed in registers (a permuting torch copy moves one element at a time). to_rows: maps -> rows.
void move_columns(bool to_rows, float* rows, const std::vector<float*>& maps, const std::vector<std::vector<int64_t>>& shapes) {
  int64_t start = 0;
  for (size_t k = 0; k < maps.size(); ++k) {
    const int64_t B = shapes[k][0], C = shapes[k][1], H = shapes[k][2], W = shapes[k][3];
    float* map = maps[k];
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        auto element = [&](int64_t c, int64_t w) { return map + ((b * C + c) * H + h) * W + w; };
        auto row = [&](int64_t w) { return rows + (start + (w * B + b) * H + h) * C; };
        int64_t w = 0;
        for (; w + 8 <= W && C % 8 == 0; w += 8)
          for (int64_t c = 0; c < C; c += 8) {
            __m256 v[8];
            for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(to_rows ? element(c + j, w) : row(w + j) + c);
            transpose8(v);
            for (int j = 0; j < 8; ++j) _mm256_storeu_ps(to_rows ? row(w + j) + c : element(c + j, w), v[j]);
          }
        for (; w < W; ++w)
          for (int64_t c = 0; c < C; ++c) (to_rows ? row(w)[c] : *element(c, w)) = to_rows ? *element(c, w) : row(w)[c];
      }
    });
    start += B * H * W;
  }
}

torch::Tensor pixel_columns(std::vector<torch::Tensor> maps) {
  std::vector<float*> data;
  std::vector<std::vector<int64_t>> shapes;
  int64_t pixels = 0;
  for (auto& m : maps) {
    TORCH_CHECK(m.dtype() == torch::kFloat32 && m.device().is_cpu() && m.is_contiguous() && m.dim() == 4 &&
                    m.size(1) == maps[0].size(1),
                "pixel_columns: contiguous float32 CPU (B, C, H, W) maps of one C");
    data.push_back(m.data_ptr<float>());
    shapes.push_back(m.sizes().vec());
    pixels += m.size(0) * m.size(2) * m.size(3);
  }
  auto rows = torch::empty({pixels, maps[0].size(1)}, maps[0].options());
  move_columns(true, rows.data_ptr<float>(), data, shapes);
  return rows;
}

std::vector<torch::Tensor> pixel_columns_backward(torch::Tensor rows, std::vector<std::vector<int64_t>> shapes) {
  TORCH_CHECK(rows.dtype() == torch::kFloat32 && rows.device().is_cpu() && rows.is_contiguous(),
              "pixel_columns_backward: contiguous float32 CPU rows");
  std::vector<torch::Tensor> maps;
  std::vector<float*> data;
  for (auto& shape : shapes) {
    maps.push_back(torch::empty(shape, rows.options()));
    data.push_back(maps.back().data_ptr<float>());
  }
  move_columns(false, rows.data_ptr<float>(), data, shapes);
  return maps;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pixel_columns", &pixel_columns, "maps (B, C, H, W) -> their pixels, column by column");
  m.def("pixel_columns_backward", &pixel_columns_backward, "the inverse of pixel_columns");
  m.def("forward", &forward, "the states of a (weight-shared bidirectional) pass");
  m.def("backward", &backward, "its gradients: x, W_ih, W_hh, bias");
}
