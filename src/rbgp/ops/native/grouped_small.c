/* The grouped-sparse product for small batches, values read once: y (n, out) = x (n, in) W^T.
 *
 * W is G row groups of R rows; group g's rows all read the same K input columns, given as K / BW
 * aligned micro-blocks of BW columns (col_blocks, block ids) or, with BW = 1, as columns. For every
 * group (groups split over threads) the K inputs of each sample are copied into a small buffer
 * (whole micro-blocks with memcpy), then each of the group's rows is one dot product per sample
 * against it: every value of W is read from memory once per call, which is what bounds a batch-1
 * (decode) product. Rows with ids >= out are padding rows and are skipped. The output is written
 * in row order, row-major. A sample with an inf or NaN input gets NaN in every row, as the dense
 * product of the densified weight does (its zeros times inf or NaN). `rbgp_dense_small` is the same
 * product for a dense (out, in) weight (no gather; rows split over threads), for the layers a
 * sparse model keeps dense, such as an LM's output head, stored in bf16 or int8.
 *
 * Two builds of the row products, picked at run time: AVX2+FMA intrinsics (tiles of 4 rows by 2
 * samples, values widened in registers) where the CPU has them, else plain C vectorised by the
 * compiler (target_clones for AVX-512, AVX2+FMA or baseline x86-64). Never -march=native, so the
 * library can move to another CPU. From `wide_from` samples on, the AVX2 build runs as a GEMM instead
 * (x transposed a panel of 24 samples at a time, tiles of 4 rows by 24 samples, 8 rows where the CPU has AVX-512VL,
 * with 512-bit vectors there: "Wide batches" below), which takes a linear layer's prefill and training-size
 * batches too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RBGP_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define RBGP_CLONES
#endif

typedef uint16_t bf16_t;

static inline float widen_f32(float v) { return v; }
static inline float widen_bf16(bf16_t v) {
    union { uint32_t u; float f; } w = {(uint32_t)v << 16};  /* bf16 -> fp32: exact */
    return w.f;
}
static inline float widen_i8(int8_t v) { return (float)v; }

/* Row i of a tile is output row ROW_ID(i) (a table, or consecutive from row0 where `rows` is NULL),
 * scaled by SCALE(i) (int8's per-row scales, else 1); `nf` (per sample, 0 or NaN, or NULL) and `bias`
 * (per output row, or NULL) are added to every output; rows with ids >= out (padding) are not stored. */
#define ROW_ID(I) (rows ? rows[I] : row0 + (I))
#define SCALE(I) (scale ? scale[I] : 1.0f)
#define STORE(ROW, S, ACC, F)                                                                                \
    do {                                                                                                     \
        if ((ROW) < out) y[(S) * out + (ROW)] = (ACC) * (F) + (nf ? nf[S] : 0.0f) + (bias ? bias[ROW] : 0.0f); \
    } while (0)

/* The plain-C build: two rows by four samples at a time (each loaded value serves four dot products
 * and each loaded input two), the samples left over (all of them below four: decode) one row and one
 * sample at a time. */
#define ROWS_KERNEL(NAME, T, WIDEN)                                                                          \
    RBGP_CLONES                                                                                              \
    static void NAME(int64_t n, int64_t r, int64_t k, const void *vv, const float *scale, const float *xg,   \
                     int64_t ldx, const int64_t *rows, int64_t row0, int64_t out, const float *nf,           \
                     const float *bias, float *y) {                                                          \
        const T *v = (const T *)vv;                                                                          \
        for (int64_t i = 0; i + 2 <= r; i += 2) {                                                            \
            const int64_t id0 = ROW_ID(i), id1 = ROW_ID(i + 1);                                              \
            if (id0 >= out && id1 >= out) continue;                                                          \
            const T *v0 = v + i * k, *v1 = v0 + k;                                                           \
            const float f0 = SCALE(i), f1 = SCALE(i + 1);                                                    \
            for (int64_t s = 0; s + 4 <= n; s += 4) {                                                        \
                const float *x0 = xg + s * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;              \
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f; \
                _Pragma("omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)")                            \
                for (int64_t j = 0; j < k; j++) {                                                            \
                    const float w = WIDEN(v0[j]), u = WIDEN(v1[j]);                                          \
                    a0 += w * x0[j];                                                                         \
                    a1 += w * x1[j];                                                                         \
                    a2 += w * x2[j];                                                                         \
                    a3 += w * x3[j];                                                                         \
                    b0 += u * x0[j];                                                                         \
                    b1 += u * x1[j];                                                                         \
                    b2 += u * x2[j];                                                                         \
                    b3 += u * x3[j];                                                                         \
                }                                                                                            \
                STORE(id0, s, a0, f0);                                                                       \
                STORE(id0, s + 1, a1, f0);                                                                   \
                STORE(id0, s + 2, a2, f0);                                                                   \
                STORE(id0, s + 3, a3, f0);                                                                   \
                STORE(id1, s, b0, f1);                                                                       \
                STORE(id1, s + 1, b1, f1);                                                                   \
                STORE(id1, s + 2, b2, f1);                                                                   \
                STORE(id1, s + 3, b3, f1);                                                                   \
            }                                                                                                \
        }                                                                                                    \
        const int64_t n4 = n - n % 4; /* the samples left over, and an odd last row */                       \
        for (int64_t i = 0; i < r; i++) {                                                                    \
            const int64_t row = ROW_ID(i);                                                                   \
            if (row >= out) continue;                                                                        \
            const T *vi = v + i * k;                                                                         \
            const float f = SCALE(i);                                                                        \
            for (int64_t s = (i < r - r % 2) ? n4 : 0; s < n; s++) {                                         \
                const float *xs = xg + s * ldx;                                                              \
                float a = 0.0f;                                                                              \
                _Pragma("omp simd reduction(+ : a)")                                                         \
                for (int64_t j = 0; j < k; j++) a += WIDEN(vi[j]) * xs[j];                                   \
                STORE(row, s, a, f);                                                                         \
            }                                                                                                \
        }                                                                                                    \
    }

ROWS_KERNEL(rows_f32, float, widen_f32)
ROWS_KERNEL(rows_bf16, bf16_t, widen_bf16)
ROWS_KERNEL(rows_i8, int8_t, widen_i8)

/* ---- AVX2 + FMA kernels (intrinsics; picked at run time where the CPU has both) ------------------- */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RBGP_AVX2_KERNELS 1
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
AVX2 static inline __m256 load8_bf16(const bf16_t *p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
AVX2 static inline __m256 load8_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[t * SS + u] = dot(row t of v, sample u of x) for RR rows (stride k) and SS samples (stride ldx):
 * eight columns per step, every loaded value serving SS samples and every loaded input RR rows. */
#define AVX2_TILE(NAME, T, LOAD8, WIDEN, RR, SS)                                                             \
    AVX2 static inline void NAME(int64_t k, const T *v, const float *x, int64_t ldx, float *acc) {           \
        __m256 a[RR][SS];                                                                                    \
        for (int t = 0; t < RR; t++)                                                                         \
            for (int u = 0; u < SS; u++) a[t][u] = _mm256_setzero_ps();                                      \
        int64_t j = 0;                                                                                       \
        for (; j + 8 <= k; j += 8) {                                                                         \
            __m256 xv[SS];                                                                                   \
            for (int u = 0; u < SS; u++) xv[u] = _mm256_loadu_ps(x + u * ldx + j);                           \
            for (int t = 0; t < RR; t++) {                                                                   \
                const __m256 w = LOAD8(v + t * k + j);                                                       \
                for (int u = 0; u < SS; u++) a[t][u] = _mm256_fmadd_ps(w, xv[u], a[t][u]);                   \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < RR; t++)                                                                         \
            for (int u = 0; u < SS; u++) {                                                                   \
                float s = hsum8(a[t][u]);                                                                    \
                for (int64_t jj = j; jj < k; jj++) s += WIDEN(v[t * k + jj]) * x[u * ldx + jj];              \
                acc[t * SS + u] = s;                                                                         \
            }                                                                                                \
    }

/* One row against one sample with four partial sums: the values streamed in order, which is what
 * a batch-1 product is bound by; narrow values are prefetched AHEAD bytes ahead (the hardware
 * prefetcher alone leaves int8 below the memory's speed; fp32, which is at it, takes none). */
#define AVX2_DOT(NAME, T, LOAD8, WIDEN, AHEAD)                                                               \
    AVX2 static inline void NAME(int64_t k, const T *v, const float *x, int64_t ldx, float *acc) {           \
        (void)ldx;                                                                                           \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                          \
        int64_t j = 0;                                                                                       \
        for (; j + 32 <= k; j += 32) {                                                                       \
            if (AHEAD) _mm_prefetch((const char *)(v + j) + (AHEAD), _MM_HINT_T0);                           \
            a0 = _mm256_fmadd_ps(LOAD8(v + j), _mm256_loadu_ps(x + j), a0);                                  \
            a1 = _mm256_fmadd_ps(LOAD8(v + j + 8), _mm256_loadu_ps(x + j + 8), a1);                          \
            a2 = _mm256_fmadd_ps(LOAD8(v + j + 16), _mm256_loadu_ps(x + j + 16), a2);                        \
            a3 = _mm256_fmadd_ps(LOAD8(v + j + 24), _mm256_loadu_ps(x + j + 24), a3);                        \
        }                                                                                                    \
        for (; j + 8 <= k; j += 8) a0 = _mm256_fmadd_ps(LOAD8(v + j), _mm256_loadu_ps(x + j), a0);           \
        float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                        \
        for (; j < k; j++) s += WIDEN(v[j]) * x[j];                                                          \
        acc[0] = s;                                                                                          \
    }

/* Tiles of H rows (from row i, while they fit below END) against every sample, two at a time (PAIR),
 * an odd last one alone (ONE); tiles of padding rows only are skipped. Inside AVX2_ROWS. */
#define ROW_TILES(H, PAIR, ONE, END)                                                                         \
    for (; i + (H) <= (END); i += (H)) {                                                                     \
        int64_t id[H];                                                                                       \
        int padding = 1;                                                                                     \
        for (int t = 0; t < (H); t++) id[t] = ROW_ID(i + t), padding &= id[t] >= out;                        \
        if (padding) continue;                                                                               \
        int64_t s = 0;                                                                                       \
        for (; s + 2 <= n; s += 2) {                                                                         \
            PAIR(k, v + i * k, xg + s * ldx, ldx, acc);                                                      \
            for (int t = 0; t < (H); t++) {                                                                  \
                STORE(id[t], s, acc[2 * t], SCALE(i + t));                                                   \
                STORE(id[t], s + 1, acc[2 * t + 1], SCALE(i + t));                                           \
            }                                                                                                \
        }                                                                                                    \
        if (s < n) {                                                                                         \
            ONE(k, v + i * k, xg + s * ldx, ldx, acc);                                                       \
            for (int t = 0; t < (H); t++) STORE(id[t], s, acc[t], SCALE(i + t));                             \
        }                                                                                                    \
    }

/* The group's rows against every sample: from batch 4, tiles of 6 or 4 rows by 2 samples (an odd
 * sample: by 1); below (decode), and for the rows left over, one row at a time, the values in order. */
#define AVX2_ROWS(NAME, T, LOAD8, WIDEN, AHEAD)                                                              \
    AVX2_TILE(NAME##_62, T, LOAD8, WIDEN, 6, 2)                                                              \
    AVX2_TILE(NAME##_61, T, LOAD8, WIDEN, 6, 1)                                                              \
    AVX2_TILE(NAME##_42, T, LOAD8, WIDEN, 4, 2)                                                              \
    AVX2_TILE(NAME##_41, T, LOAD8, WIDEN, 4, 1)                                                              \
    AVX2_DOT(NAME##_11, T, LOAD8, WIDEN, AHEAD)                                                              \
    AVX2 static void NAME(int64_t n, int64_t r, int64_t k, const void *vv, const float *scale,               \
                          const float *xg, int64_t ldx, const int64_t *rows, int64_t row0, int64_t out,      \
                          const float *nf, const float *bias, float *y) {                                    \
        const T *v = (const T *)vv;                                                                          \
        float acc[12];                                                                                       \
        int64_t i = 0;                                                                                       \
        /* on long rows (k >= 128), 6-row tiles (12 partial sums hide the FMA latency better) where          \
         * 4-row tiles then end the group exactly: 16 rows as 6 + 6 + 4, 128 as 20 x 6 + 2 x 4 */            \
        int64_t sixes = n >= 4 && k >= 128 ? r / 6 : 0;                                                      \
        while (sixes > 0 && (r - 6 * sixes) % 4 != 0) sixes--;                                               \
        ROW_TILES(6, NAME##_62, NAME##_61, 6 * sixes)                                                        \
        ROW_TILES(4, NAME##_42, NAME##_41, n >= 4 ? r : 0)                                                   \
        for (; i < r; i++) {                                                                                 \
            const int64_t row = ROW_ID(i);                                                                   \
            if (row >= out) continue;                                                                        \
            for (int64_t s = 0; s < n; s++) {                                                                \
                NAME##_11(k, v + i * k, xg + s * ldx, ldx, acc);                                             \
                STORE(row, s, acc[0], SCALE(i));                                                             \
            }                                                                                                \
        }                                                                                                    \
    }

AVX2_ROWS(avx2_f32, float, load8_f32, widen_f32, 0)
AVX2_ROWS(avx2_bf16, bf16_t, load8_bf16, widen_bf16, 1024)
AVX2_ROWS(avx2_i8, int8_t, load8_i8, widen_i8, 2048)

/* ---- Wide batches: x transposed a panel at a time, each value broadcast against WIDE samples -----
 * The tiles above take a dot product per row and sample and reduce it across the vector at the end,
 * with every group's inputs copied first: from a few dozen samples on, that copy and those reductions
 * cost as much as the products. Here x is transposed into panels of WIDE samples, one at a time (each
 * (in, WIDE): a column's WIDE samples contiguous, zeros past n); a tile of H rows by WIDE samples then
 * loads WIDE / 8 vectors of one column and broadcasts one value per row, H * WIDE / 8 multiply-adds
 * per H + WIDE / 8 loads, the group's micro-blocks read where they lie: a GEMM micro-kernel. */
#define WIDE 24

/* out[e * ldo + t] = sum over the group's columns j of w[t * ldw + j] * xt[col(j) * np + e], for H rows
 * and 8 * V samples e (np: the panel's width): sample-major, so that a sample's rows are stored together;
 * added to what is in `out` where `add`. */
#define WIDE_TILE(NAME, H, V)                                                                                \
    AVX2 static void NAME(int64_t kb, int64_t bw, const int64_t *blocks, const float *w, int64_t ldw,        \
                          const float *xt, int64_t np, float *out, int64_t ldo, int add) {                   \
        __m256 a[H][V];                                                                                      \
        for (int t = 0; t < (H); t++)                                                                        \
            for (int u = 0; u < (V); u++) a[t][u] = _mm256_setzero_ps();                                     \
        int64_t j = 0;                                                                                       \
        for (int64_t b = 0; b < kb; b++) {                                                                   \
            const float *p = xt + blocks[b] * bw * np;                                                       \
            for (int64_t jj = 0; jj < bw; jj++, j++, p += np) {                                              \
                __m256 xv[V];                                                                                \
                for (int u = 0; u < (V); u++) xv[u] = _mm256_load_ps(p + 8 * u);                             \
                for (int t = 0; t < (H); t++) {                                                              \
                    const __m256 wv = _mm256_broadcast_ss(w + t * ldw + j);                                  \
                    for (int u = 0; u < (V); u++) a[t][u] = _mm256_fmadd_ps(wv, xv[u], a[t][u]);             \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        float tmp[8];                                                                                        \
        for (int t = 0; t < (H); t++)                                                                        \
            for (int u = 0; u < (V); u++) {                                                                  \
                _mm256_storeu_ps(tmp, a[t][u]);                                                              \
                for (int e = 0; e < 8; e++) {                                                                \
                    float *o = out + (8 * u + e) * ldo + t;                                                  \
                    *o = (add ? *o : 0.0f) + tmp[e];                                                         \
                }                                                                                            \
            }                                                                                                \
    }
WIDE_TILE(wide_4x1, 4, 1)
WIDE_TILE(wide_4x2, 4, 2)
WIDE_TILE(wide_2x1, 2, 1)
WIDE_TILE(wide_2x2, 2, 2)
WIDE_TILE(wide_2x3, 2, 3)
WIDE_TILE(wide_1x1, 1, 1)
WIDE_TILE(wide_1x2, 1, 2)
WIDE_TILE(wide_1x3, 1, 3)

/* Four rows' sums over eight samples (one vector per row) stored sample-major, four floats a sample
 * (added to what is there where `add`). */
#define PUT4(P, V) _mm_storeu_ps(P, add ? _mm_add_ps(_mm_loadu_ps(P), V) : V)
AVX2 static inline void store_4x8(__m256 r0, __m256 r1, __m256 r2, __m256 r3, float *out, int64_t ldo, int add) {
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE); /* samples 0|4, 1|5 */
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE); /* samples 2|6, 3|7 */
    PUT4(out, _mm256_castps256_ps128(s0)), PUT4(out + 4 * ldo, _mm256_extractf128_ps(s0, 1));
    PUT4(out + ldo, _mm256_castps256_ps128(s1)), PUT4(out + 5 * ldo, _mm256_extractf128_ps(s1, 1));
    PUT4(out + 2 * ldo, _mm256_castps256_ps128(s2)), PUT4(out + 6 * ldo, _mm256_extractf128_ps(s2, 1));
    PUT4(out + 3 * ldo, _mm256_castps256_ps128(s3)), PUT4(out + 7 * ldo, _mm256_extractf128_ps(s3, 1));
}

/* WIDE_TILE for 4 rows by 24 samples, written out: its 12 sums, 3 inputs and a broadcast value take all 16 ymm
 * registers, which the compiler only finds without the arrays (with them it spilled sums to the stack
 * in the inner loop, at half the speed). */
#define FMA3(A0, A1, A2, P)                                                                                  \
    do {                                                                                                     \
        const __m256 wv = _mm256_broadcast_ss(P);                                                            \
        A0 = _mm256_fmadd_ps(wv, x0, A0);                                                                    \
        A1 = _mm256_fmadd_ps(wv, x1, A1);                                                                    \
        A2 = _mm256_fmadd_ps(wv, x2, A2);                                                                    \
    } while (0)
/* A row T of such a tile: its 3 sums and its values' row, its multiply-adds for column j; and the stores
 * of four rows' sums (sample-major, from output column O). */
#define X3_ROW(T)                                                                                            \
    __m256 a##T##0 = _mm256_setzero_ps(), a##T##1 = a##T##0, a##T##2 = a##T##0;                              \
    const float *w##T = w + (T) * ldw;
#define X3_STEP(T) FMA3(a##T##0, a##T##1, a##T##2, w##T + j);
#define X3_STORE4(A, B, C, D, O)                                                                             \
    store_4x8(a##A##0, a##B##0, a##C##0, a##D##0, out + (O), ldo, add);                                      \
    store_4x8(a##A##1, a##B##1, a##C##1, a##D##1, out + (O) + 8 * ldo, ldo, add);                            \
    store_4x8(a##A##2, a##B##2, a##C##2, a##D##2, out + (O) + 16 * ldo, ldo, add);
#define ROWS4(X) X(0) X(1) X(2) X(3)
#define ROWS8(X) ROWS4(X) X(4) X(5) X(6) X(7)

#define X3_LOADS(S)                                                                                          \
    const __m256 x0 = _mm256_loadu_ps(p), x1 = _mm256_loadu_ps(p + (S)), x2 = _mm256_loadu_ps(p + 2 * (S));

/* A written-out tile of the rows ROWS lists by 24 samples (3 vectors): ROW declares a row's sums, LOADS
 * loads a column's samples from p, STEP multiply-adds a row's value of column j, STORES stores the sums. */
#define WIDE_X3(NAME, ATTR, ROWS, ROW, STEP, LOADS, STORES)                                                  \
    ATTR static void NAME(int64_t kb, int64_t bw, const int64_t *blocks, const float *w, int64_t ldw,        \
                          const float *xt, int64_t np, float *out, int64_t ldo, int add) {                   \
        ROWS(ROW)                                                                                            \
        int64_t j = 0;                                                                                       \
        for (int64_t b = 0; b < kb; b++) {                                                                   \
            const float *p = xt + blocks[b] * bw * np;                                                       \
            for (int64_t jj = 0; jj < bw; jj++, j++, p += np) {                                              \
                LOADS                                                                                        \
                ROWS(STEP)                                                                                   \
            }                                                                                                \
        }                                                                                                    \
        STORES                                                                                               \
    }
WIDE_X3(wide_4x3, AVX2, ROWS4, X3_ROW, X3_STEP, X3_LOADS(8), X3_STORE4(0, 1, 2, 3, 0))

/* The same for 8 rows, where AVX-512VL gives 32 vector registers (24 sums, 3 inputs and a broadcast
 * value): each input vector loaded serves twice the multiply-adds. */
#define AVX512VL __attribute__((target("avx2,fma,avx512f,avx512vl")))
#define STORES8 X3_STORE4(0, 1, 2, 3, 0) X3_STORE4(4, 5, 6, 7, 4)
WIDE_X3(wide_8x3, AVX512VL, ROWS8, X3_ROW, X3_STEP, X3_LOADS(8), STORES8)

/* And with 512-bit vectors (`rbgp_native_vector_bits`): a row's first 16 samples in one zmm sum, the
 * last 8 in a ymm one, so that a CPU with full-width AVX-512 units does a row's 24 multiply-adds in two
 * instructions instead of three (16 sums, 2 inputs and a broadcast value; as many multiply-adds per
 * cycle as before where the units are 256 bits wide). The samples p[0..24) are contiguous. */
#define Z3_ROW(T)                                                                                            \
    __m512 z##T = _mm512_setzero_ps();                                                                       \
    __m256 a##T##2 = _mm256_setzero_ps();                                                                    \
    const float *w##T = w + (T) * ldw;
#define Z3_STEP(T)                                                                                           \
    do {                                                                                                     \
        const __m512 wv = _mm512_set1_ps(w##T[j]);                                                           \
        z##T = _mm512_fmadd_ps(wv, xz, z##T);                                                                \
        a##T##2 = _mm256_fmadd_ps(_mm512_castps512_ps256(wv), x2, a##T##2);                                  \
    } while (0);
#define Z3_LOADS                                                                                             \
    const __m512 xz = _mm512_loadu_ps(p);                                                                    \
    const __m256 x2 = _mm256_loadu_ps(p + 16);
#define Z3_SPLIT(T)                                                                                          \
    const __m256 a##T##0 = _mm512_castps512_ps256(z##T),                                                     \
                 a##T##1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z##T), 1));
#define STORES8_Z3 ROWS8(Z3_SPLIT) STORES8
WIDE_X3(wide_8x3z, AVX512VL, ROWS8, Z3_ROW, Z3_STEP, Z3_LOADS, STORES8_Z3)
/* 16 samples as one zmm sum per row (Z2_*; its two halves stored as X2_STORE4 stores two ymm sums). */
#define Z2_ROW(T)                                                                                            \
    __m512 z##T = _mm512_setzero_ps();                                                                       \
    const float *w##T = w + (T) * ldw;
#define Z2_STEP(T) z##T = _mm512_fmadd_ps(_mm512_set1_ps(w##T[j]), xz, z##T);
#define Z2_LOADS const __m512 xz = _mm512_loadu_ps(p);
#define X2_STORE4(A, B, C, D, O)                                                                             \
    store_4x8(a##A##0, a##B##0, a##C##0, a##D##0, out + (O), ldo, add);                                      \
    store_4x8(a##A##1, a##B##1, a##C##1, a##D##1, out + (O) + 8 * ldo, ldo, add);
#define STORES8_X2 X2_STORE4(0, 1, 2, 3, 0) X2_STORE4(4, 5, 6, 7, 4)
#define STORES8_Z2 ROWS8(Z3_SPLIT) STORES8_X2
WIDE_X3(wide_8x2z, AVX512VL, ROWS8, Z2_ROW, Z2_STEP, Z2_LOADS, STORES8_Z2)
/* The pieces of 16 and 8 samples in ymm sums (the convs' tiles; X1 also 8-sample panels, 8 rows high). */
#define X2_ROW(T)                                                                                            \
    __m256 a##T##0 = _mm256_setzero_ps(), a##T##1 = a##T##0;                                                 \
    const float *w##T = w + (T) * ldw;
#define X2_STEP(T)                                                                                           \
    do {                                                                                                     \
        const __m256 wv = _mm256_broadcast_ss(w##T + j);                                                     \
        a##T##0 = _mm256_fmadd_ps(wv, x0, a##T##0);                                                          \
        a##T##1 = _mm256_fmadd_ps(wv, x1, a##T##1);                                                          \
    } while (0);
#define X1_ROW(T)                                                                                            \
    __m256 a##T##0 = _mm256_setzero_ps();                                                                    \
    const float *w##T = w + (T) * ldw;
#define X1_STEP(T) a##T##0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w##T + j), x0, a##T##0);
#define X1_STORE4(A, B, C, D, O) store_4x8(a##A##0, a##B##0, a##C##0, a##D##0, out + (O), ldo, add);
#define X2_LOADS(S) const __m256 x0 = _mm256_loadu_ps(p), x1 = _mm256_loadu_ps(p + (S));
#define X1_LOADS(S) const __m256 x0 = _mm256_loadu_ps(p);
#define STORES8_X1 X1_STORE4(0, 1, 2, 3, 0) X1_STORE4(4, 5, 6, 7, 4)
WIDE_X3(wide_8x1, AVX512VL, ROWS8, X1_ROW, X1_STEP, X1_LOADS(8), STORES8_X1)
#endif

static void gather(int64_t n, int64_t k, int64_t bw, const float *x, int64_t ldx, const int64_t *blocks, float *xg) {
    const int64_t kb = k / bw;
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * ldx;
        float *dst = xg + s * k;
        if (bw == 1) {
            for (int64_t j = 0; j < k; j++) dst[j] = xs[blocks[j]];
        } else {
            for (int64_t b = 0; b < kb; b++) memcpy(dst + b * bw, xs + blocks[b] * bw, (size_t)bw * sizeof(float));
        }
    }
}

/* 0 for a sample whose inputs are all finite, NaN otherwise (x * 0 is NaN exactly for inf and NaN). */
RBGP_CLONES
static void nonfinite(int64_t n, int64_t in, const float *x, int64_t ldx, float *nf) {
    for (int64_t s = 0; s < n; s++) {
        const float *xs = x + s * ldx;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < in; j++) acc += xs[j] * 0.0f;
        nf[s] = acc;
    }
}

typedef void (*rows_fn)(int64_t n, int64_t r, int64_t k, const void *v, const float *scale, const float *xg,
                        int64_t ldx, const int64_t *rows, int64_t row0, int64_t out, const float *nf,
                        const float *bias, float *y);

/* 1 where the AVX2 kernels run, 0 for the plain-C build; chosen on first use, or forced. */
static int isa = -1;

static int avx2_supported(void) {
#ifdef RBGP_AVX2_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* The build that runs: request -1 reports it, 0 forces plain C, 1 the AVX2 kernels (where the CPU
 * has them). Returns the build now in use (tests run both). */
int rbgp_native_isa(int request) {
    if (request >= 0) isa = request && avx2_supported();
    else if (isa < 0) isa = avx2_supported();
    return isa;
}

/* The tallest wide tile: 8 rows where the CPU has AVX-512VL (`wide_8x3`), else 4; chosen on first use,
 * or forced. */
static int64_t wide_rows = -1;

static int avx512vl_supported(void) {
#ifdef RBGP_AVX2_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* request 4 or 8 sets the tallest wide tile (8 only where the CPU has AVX-512VL; tests run both);
 * returns it. */
int64_t rbgp_native_wide_rows(int64_t request) {
    if (request == 4 || request == 8) wide_rows = request == 8 && avx512vl_supported() ? 8 : 4;
    else if (wide_rows < 0) wide_rows = avx512vl_supported() ? 8 : 4;
    return wide_rows;
}

/* 512 where the 8-row wide tiles use 512-bit vectors (the *z tiles), else 256: 512 where the
 * CPU has AVX-512VL; chosen on first use, or forced by request 256 or 512 (512 only where the CPU has it). */
static int64_t vector_bits = -1;

int64_t rbgp_native_vector_bits(int64_t request) {
    if (request == 256 || request == 512) vector_bits = request == 512 && avx512vl_supported() ? 512 : 256;
    else if (vector_bits < 0) vector_bits = avx512vl_supported() ? 512 : 256;
    return vector_bits;
}

static rows_fn pick(int kind) {
    static const rows_fn plain[3] = {rows_f32, rows_bf16, rows_i8};
#ifdef RBGP_AVX2_KERNELS
    static const rows_fn avx2[3] = {avx2_f32, avx2_bf16, avx2_i8};
    if (rbgp_native_isa(-1)) return avx2[kind];
#endif
    return plain[kind];
}

static size_t value_size(int kind) { return kind == 0 ? 4 : kind == 1 ? 2 : 1; }

typedef void (*task_fn)(const void *ctx, int tid, int64_t begin, int64_t end);

/* fn(ctx, tid, begin, end) over [0, total) in `threads` even shares, on the OpenMP runtime torch
 * loads (a second pool would fight torch's threads for the cores). */
static void parallel_for(task_fn fn, const void *ctx, int64_t total, int threads) {
    if (threads > total) threads = (int)total;
    if (threads <= 1) {
        if (total > 0) fn(ctx, 0, 0, total);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num(), parts = omp_get_num_threads();
        const int64_t begin = total * tid / parts, end = total * (tid + 1) / parts;
        if (begin < end) fn(ctx, tid, begin, end);
    }
}

/* One call's arguments, shared by its threads. */
typedef struct {
    rows_fn fn;
    size_t value_size;
    int64_t n, r, k, bw, ldx, out, per;
    const float *x, *scales, *bias, *nf;
    const void *values;
    const int64_t *blocks, *rows;
    float *buffers, *y;
} call_t;

static void grouped_task(const void *ctx, int tid, int64_t begin, int64_t end) {
    const call_t *c = ctx;
    const int64_t kb = c->k / c->bw;
    float *xg = c->buffers + c->per * tid;
    for (int64_t gi = begin; gi < end; gi++) {
        gather(c->n, c->k, c->bw, c->x, c->ldx, c->blocks + gi * kb, xg);
        c->fn(c->n, c->r, c->k, (const char *)c->values + (size_t)(gi * c->r * c->k) * c->value_size,
              c->scales ? c->scales + gi * c->r : NULL, xg, c->k, c->rows + gi * c->r, 0, c->out, c->nf, c->bias,
              c->y);
    }
}

#ifdef RBGP_AVX2_KERNELS
typedef void (*wide_fn)(int64_t kb, int64_t bw, const int64_t *blocks, const float *w, int64_t ldw, const float *xt,
                        int64_t np, float *out, int64_t ldo, int add);

/* One call's wide-batch state beyond call_t: the transposed inputs (panels of `in` columns), whether
 * every group's rows are consecutive output rows, the 8-row tile where those run (`rbgp_native_wide_rows`,
 * `rbgp_native_vector_bits`; NULL: 4-row tiles; `eight2` for panels of 16 samples, with 512-bit vectors), and
 * for rows in any other order than consecutive or strided (fitted layouts) the row of the group-major
 * sums that gives each output row (`inv`) and the panel's sums, (G * R, WIDE), shared by the threads. */
typedef struct {
    const call_t *c;
    float *xt;
    int64_t in, g;
    int consecutive;
    wide_fn eight, eight2;
    const int64_t *inv;
    float *sums;
} wide_t;

/* The width of the panel from sample s: WIDE, or the samples left rounded up to 8. */
static int64_t panel_width(int64_t n, int64_t s) { return n - s >= WIDE ? WIDE : (n - s + 7) / 8 * 8; }

/* r[j] <- column j of the 8 x 8 block whose rows are r[0..8). */
AVX2 static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2)
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44), u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44), u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++)
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20), r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
}

/* Columns [col0, col1) of the panel of samples [s, s + width): a column's samples contiguous (in, width),
 * zero past n, so that a tile reads each micro-block of its group as one contiguous run. Eight samples
 * by eight columns at a time, transposed in registers; the samples' flags over these columns (as
 * `nonfinite`) come from the same pass over x, into flags[e]. */
AVX2 static void transpose_columns(const call_t *c, int64_t s, int64_t col0, int64_t col1, float *panel,
                                   float *flags) {
    const int64_t pw = panel_width(c->n, s);
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t e0 = 0; e0 < pw; e0 += 8) {
        const float *xs[8];
        float flag[8];
        for (int i = 0; i < 8; i++) xs[i] = s + e0 + i < c->n ? c->x + (s + e0 + i) * c->ldx : NULL;
        __m256 fv = zero;
        int64_t col = col0;
        for (; col + 8 <= col1; col += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = xs[i] ? _mm256_loadu_ps(xs[i] + col) : zero;
            transpose8(r);
            for (int j = 0; j < 8; j++) {
                _mm256_store_ps(panel + (col + j) * pw + e0, r[j]);
                fv = _mm256_add_ps(fv, _mm256_mul_ps(r[j], zero)); /* lane i: sample e0 + i */
            }
        }
        _mm256_storeu_ps(flag, fv);
        for (int i = 0; i < 8; i++) {
            for (int64_t cc = col; cc < col1; cc++) {
                const float v = xs[i] ? xs[i][cc] : 0.0f;
                panel[cc * pw + e0 + i] = v, flag[i] += v * 0.0f;
            }
            flags[e0 + i] = flag[i];
        }
    }
}

static void widen_values(size_t size, int64_t count, const void *src, float *dst) {
    if (size == 2)
        for (int64_t j = 0; j < count; j++) dst[j] = widen_bf16(((const bf16_t *)src)[j]);
    else
        for (int64_t j = 0; j < count; j++) dst[j] = widen_i8(((const int8_t *)src)[j]);
}

/* Groups of a chunk at a time (their outputs kept until all are done) where rows are not consecutive:
 * the same row of neighbouring groups is often the neighbouring output row (strided layouts), so
 * that the stores of a chunk fill whole cache lines in turn instead of touching one line per store. */
#define CHUNK 8

/* Whether row t of the chunk's CHUNK groups from g0 is CHUNK consecutive output rows, for every t, none
 * of them padding: the strided row order RBGP4 gives linear layers (group g's rows g, g + G, ...). */
static int chunk_interleaved(const call_t *c, int64_t g0, int64_t q) {
    if (q != CHUNK) return 0;
    for (int64_t t = 0; t < c->r; t++) {
        const int64_t row0 = c->rows[g0 * c->r + t];
        if (row0 + CHUNK > c->out) return 0;
        for (int64_t gq = 1; gq < CHUNK; gq++)
            if (c->rows[(g0 + gq) * c->r + t] != row0 + gq) return 0;
    }
    return 1;
}

/* store_wide for a `chunk_interleaved` chunk: for each sample, 8 rows of the 8 groups transposed in
 * registers, so that each of those rows' 8 outputs is one vector store. */
AVX2 static void store_interleaved(const call_t *c, int64_t g0, int64_t s, const float *out,
                                   const float *flags) {
    const int64_t m = c->n - s < WIDE ? c->n - s : WIDE, r = c->r, t8 = r / 8 * 8;
    for (int64_t e = 0; e < m; e++) {
        float *restrict ys = c->y + (s + e) * c->out;
        const __m256 nf = _mm256_set1_ps(flags[e]);
        for (int64_t t0 = 0; t0 < t8; t0 += 8) {
            __m256 v[8];
            for (int gq = 0; gq < CHUNK; gq++) {
                v[gq] = _mm256_loadu_ps(out + (gq * WIDE + e) * r + t0);
                if (c->scales) v[gq] = _mm256_mul_ps(v[gq], _mm256_loadu_ps(c->scales + (g0 + gq) * r + t0));
            }
            transpose8(v); /* v[i]: row t0 + i of the 8 groups */
            for (int i = 0; i < 8; i++) {
                const int64_t row0 = c->rows[g0 * r + t0 + i];
                const __m256 b = c->bias ? _mm256_loadu_ps(c->bias + row0) : _mm256_setzero_ps();
                _mm256_storeu_ps(ys + row0, _mm256_add_ps(_mm256_add_ps(v[i], nf), b));
            }
        }
        for (int64_t t = t8; t < r; t++)
            for (int64_t gq = 0; gq < CHUNK; gq++) {
                const int64_t p = (g0 + gq) * r + t, row = c->rows[p];
                ys[row] = out[(gq * WIDE + e) * r + t] * (c->scales ? c->scales[p] : 1.0f) + flags[e] +
                          (c->bias ? c->bias[row] : 0.0f);
            }
    }
}

/* The outputs of groups [g0, g0 + q) for samples [s, s + WIDE) (out[((gi - g0) * WIDE + e) * R + t]:
 * sample s + e, row t of group gi) into y, scaled, with the samples' flags[e] and bias, as STORE does:
 * where the chunk's rows interleave (strided layouts), row t of its groups as one vector; else group by
 * group, in one run where rows are consecutive, or each output to its row (fitted layouts). */
static void store_wide(const wide_t *wd, int64_t g0, int64_t q, int64_t s, const float *out, const float *flags) {
    const call_t *c = wd->c;
    const int64_t m = c->n - s < WIDE ? c->n - s : WIDE, r = c->r;
    if (!wd->consecutive && chunk_interleaved(c, g0, q)) {
        store_interleaved(c, g0, s, out, flags);
        return;
    }
    for (int64_t e = 0; e < m; e++) {
        float *restrict ys = c->y + (s + e) * c->out;
        const float nf = flags[e];
        for (int64_t gq = 0; gq < q; gq++) {
            const int64_t gi = g0 + gq, *rows = c->rows + gi * r, row0 = rows[0];
            const float *restrict oe = out + (gq * WIDE + e) * r, *scale = c->scales ? c->scales + gi * r : NULL;
            if (wd->consecutive) { /* one run: vectorised */
                const float *bias = c->bias ? c->bias + row0 : NULL;
                for (int64_t t = 0; t < r; t++)
                    ys[row0 + t] = oe[t] * (scale ? scale[t] : 1.0f) + nf + (bias ? bias[t] : 0.0f);
                continue;
            }
            for (int64_t t = 0; t < r; t++)
                if (rows[t] < c->out)
                    ys[rows[t]] = oe[t] * (scale ? scale[t] : 1.0f) + nf + (c->bias ? c->bias[rows[t]] : 0.0f);
        }
    }
}

/* The outputs of groups [g0, g0 + q) for the panel's samples (out as in store_wide) into the shared
 * group-major sums, a row's samples contiguous: eight rows by eight samples at a time, transposed in
 * registers. */
AVX2 static void stash_rows(const wide_t *wd, int64_t g0, int64_t q, int64_t pw, const float *out) {
    const int64_t r = wd->c->r, t8 = r / 8 * 8;
    for (int64_t gq = 0; gq < q; gq++) {
        const float *og = out + gq * WIDE * r;
        float *sg = wd->sums + (g0 + gq) * r * WIDE;
        for (int64_t t0 = 0; t0 < t8; t0 += 8)
            for (int64_t e0 = 0; e0 < pw; e0 += 8) {
                __m256 v[8];
                for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(og + (e0 + k) * r + t0);
                transpose8(v); /* v[j]: samples e0.. of row t0 + j */
                for (int j = 0; j < 8; j++) _mm256_storeu_ps(sg + (t0 + j) * WIDE + e0, v[j]);
            }
        for (int64_t t = t8; t < r; t++)
            for (int64_t e = 0; e < pw; e++) sg[t * WIDE + e] = og[e * r + t];
    }
}

/* Output rows [o0, o1) of the panel of samples [s, s + WIDE) from the shared sums, in row order: eight
 * rows by eight samples at a time, transposed in registers, so that each store is eight neighbouring
 * outputs of one sample and no two threads write the same cache line; scaled, flags and bias added.
 * Eight samples over all the rows, then the next eight: the outputs of one sample lie a row of y apart
 * (often a multiple of 4 KB), and all 24 at once would compete for one set of the first-level cache. */
AVX2 static void gather_rows(const wide_t *wd, int64_t s, int64_t o0, int64_t o1, const float *flags) {
    const call_t *c = wd->c;
    const int64_t m = c->n - s < WIDE ? c->n - s : WIDE, *inv = wd->inv;
    const int64_t o8 = o0 + (o1 - o0) / 8 * 8;
    for (int64_t e0 = 0; e0 < m; e0 += 8)
        for (int64_t o = o0; o < o8; o += 8) {
            const __m256 b = c->bias ? _mm256_loadu_ps(c->bias + o) : _mm256_setzero_ps();
            __m256 v[8];
            for (int i = 0; i < 8; i++) {
                v[i] = _mm256_loadu_ps(wd->sums + inv[o + i] * WIDE + e0);
                if (c->scales) v[i] = _mm256_mul_ps(v[i], _mm256_set1_ps(c->scales[inv[o + i]]));
            }
            transpose8(v); /* v[e]: rows o.. of sample s + e0 + e */
            for (int e = 0; e < 8 && e0 + e < m; e++)
                _mm256_storeu_ps(c->y + (s + e0 + e) * c->out + o, _mm256_add_ps(_mm256_add_ps(v[e], b),
                                                                                 _mm256_set1_ps(flags[e0 + e])));
        }
    for (int64_t o = o8; o < o1; o++)
        for (int64_t e = 0; e < m; e++)
            c->y[(s + e) * c->out + o] = wd->sums[inv[o] * WIDE + e] * (c->scales ? c->scales[inv[o]] : 1.0f) +
                                         flags[e] + (c->bias ? c->bias[o] : 0.0f);
}

/* Whether every group's rows are consecutive output rows, none of them padding. */
static int rows_consecutive(const int64_t *rows, int64_t g, int64_t r, int64_t out) {
    for (int64_t gi = 0; gi < g; gi++)
        for (int64_t t = 0; t < r; t++)
            if (rows[gi * r + t] != rows[gi * r] + t || rows[gi * r + t] >= out) return 0;
    return 1;
}

/* The height of the next wide tile for `left` rows: 8 where 8-row tiles run, else 4, 2 or 1. */
static inline int tile_rows(int eight, int64_t left) {
    return eight && left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
}

/* Columns a tile takes at a time: its inputs (WIDE samples each) then stay in the first-level cache
 * while the group's rows pass, long groups summed over several such spans. */
#define WIDE_SPAN 192

/* Groups [begin, end) on the panel of samples [s, s + WIDE) (in L2 while the groups pass: the values
 * stream in order), tiles of 4 rows (8 with AVX-512VL on panels of 24 samples, and on panels of 8 or 16
 * with 512-bit vectors; 2 or 1 for the rows left over) over spans of WIDE_SPAN columns; narrow values
 * widened into the thread's buffer; flags[e]: sample s + e's. */
static void panel_groups(const wide_t *wd, int tid, const float *panel, int64_t s, int64_t begin, int64_t end,
                         const float *flags) {
    static const wide_fn tiles[3][3] = {
        {wide_4x1, wide_4x2, wide_4x3}, {wide_2x1, wide_2x2, wide_2x3}, {wide_1x1, wide_1x2, wide_1x3}};
    const call_t *c = wd->c;
    const int64_t kb = c->k / c->bw, rk = c->r * c->k, span = WIDE_SPAN / c->bw > 0 ? WIDE_SPAN / c->bw : 1;
    float *wbuf = c->buffers + c->per * tid, *out = wbuf + (rk + 15) / 16 * 16; /* (CHUNK, WIDE, R) */
    const int64_t pw = panel_width(c->n, s), v = pw / 8;
    const wide_fn fn8 = v == 3 ? wd->eight : v == 2 ? wd->eight2 : wd->eight2 ? wide_8x1 : NULL;
    const int eight = fn8 != NULL;
    for (int64_t g0 = begin; g0 < end; g0 += CHUNK) {
        const int64_t q = end - g0 < CHUNK ? end - g0 : CHUNK;
        for (int64_t gi = g0; gi < g0 + q; gi++) {
            const char *src = (const char *)c->values + (size_t)(gi * rk) * c->value_size;
            const float *w = (const float *)src;
            if (c->value_size != 4) widen_values(c->value_size, rk, src, wbuf), w = wbuf;
            const int64_t *blocks = c->blocks + gi * kb;
            float *og = out + (gi - g0) * WIDE * c->r;
            for (int64_t b0 = 0; b0 < kb; b0 += span) {
                const int64_t nb = kb - b0 < span ? kb - b0 : span;
                for (int64_t i = 0; i < c->r;) {
                    const int h = tile_rows(eight, c->r - i);
                    const wide_fn fn = h == 8 ? fn8 : tiles[h == 4 ? 0 : h == 2 ? 1 : 2][v - 1];
                    fn(nb, c->bw, blocks + b0, w + i * c->k + b0 * c->bw, c->k, panel, pw, og + i, c->r, b0 > 0);
                    i += h;
                }
            }
        }
        if (wd->inv)
            stash_rows(wd, g0, q, pw, out);
        else
            store_wide(wd, g0, q, s, out, flags);
    }
}

/* The panels in turn, every thread on each: a thread transposes its share of the panel's columns into
 * one of two panel buffers (and their flags into its own row), the threads meet, then each runs its
 * groups on the panel while the next one fills the other buffer. The transposed input stays two panels
 * (in the second-level cache) instead of the whole batch written out and read back. With `inv` the
 * groups' sums go to the shared buffer and, once the threads meet again, each writes its share of the
 * output rows (a multiple of 16: whole cache lines where rows are 16-float aligned; o0 < out always, only
 * the last thread's share ends at out). */
static void wide_panels(const wide_t *wd, int threads, float *partial) {
    const call_t *c = wd->c;
    const int64_t g = wd->g, blocks8 = wd->in / 8;
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num(), parts = omp_get_num_threads();
        const int64_t begin = g * tid / parts, end = g * (tid + 1) / parts;
        const int64_t col0 = blocks8 * tid / parts * 8;
        const int64_t col1 = tid + 1 == parts ? wd->in : blocks8 * (tid + 1) / parts * 8;
        const int64_t lines = (c->out + 15) / 16, o0 = lines * tid / parts * 16;
        const int64_t o1 = tid + 1 == parts ? c->out : lines * (tid + 1) / parts * 16;
        float flags[WIDE];
        for (int64_t s = 0, p = 0; s < c->n; s += WIDE, p++) {
            float *panel = wd->xt + (p & 1) * wd->in * WIDE, *part = partial + (p & 1) * parts * WIDE;
            transpose_columns(c, s, col0, col1, panel, part + tid * WIDE);
#pragma omp barrier
            for (int e = 0; e < WIDE; e++) {
                flags[e] = 0.0f;
                for (int t = 0; t < parts; t++) flags[e] += part[t * WIDE + e];
            }
            if (begin < end) panel_groups(wd, tid, panel, s, begin, end, flags);
            if (wd->inv) {
#pragma omp barrier
                gather_rows(wd, s, o0, o1, flags);
            }
        }
    }
}
#endif

#ifdef RBGP_AVX2_KERNELS
/* Whether every aligned chunk of CHUNK groups is `chunk_interleaved` (strided layouts: store_wide's
 * vector stores). */
static int strided(const call_t *c, int64_t g) {
    if (g % CHUNK) return 0;
    for (int64_t g0 = 0; g0 < g; g0 += CHUNK)
        if (!chunk_interleaved(c, g0, CHUNK)) return 0;
    return 1;
}

/* inv[o]: the group-major row p (rows[p] == o) that gives output row o; NULL where some output row has
 * none or memory is short. */
static int64_t *row_sources(const int64_t *rows, int64_t count, int64_t out) {
    int64_t *inv = (int64_t *)malloc((size_t)(out > 0 ? out : 1) * sizeof(int64_t));
    if (!inv) return NULL;
    for (int64_t o = 0; o < out; o++) inv[o] = -1;
    for (int64_t p = 0; p < count; p++)
        if (rows[p] >= 0 && rows[p] < out) inv[rows[p]] = p;
    for (int64_t o = 0; o < out; o++)
        if (inv[o] < 0) {
            free(inv);
            return NULL;
        }
    return inv;
}

static int wide(int kind, int64_t n, int64_t g, int64_t r, int64_t k, int64_t bw, const float *x, int64_t in,
                int64_t ldx, const void *values, const float *scales, const int64_t *blocks, const int64_t *rows,
                int64_t out, const float *bias, float *y, int threads) {
    if (threads > g) threads = (int)g;
    const int64_t per = (r * k + 15) / 16 * 16 + CHUNK * WIDE * r, partial = 2 * threads * WIDE;
    const int64_t total = per * threads + partial + 2 * in * WIDE; /* whole 64-byte lines: WIDE and per are x16 */
    float *buffers = (float *)aligned_alloc(64, (size_t)total * sizeof(float));
    if (!buffers) return 1;
    float *flags = buffers + per * threads, *xt = flags + partial;
    const call_t c = {pick(kind), value_size(kind), n, r, k, bw, ldx, out, per, x, scales, bias, NULL, values, blocks,
                      rows, buffers, y};
    const int eight = rbgp_native_wide_rows(0) == 8, zmm = eight && rbgp_native_vector_bits(0) == 512;
    wide_t wd = {&c, xt, in, g, rows_consecutive(rows, g, r, out), !eight ? NULL : zmm ? wide_8x3z : wide_8x3,
                 zmm ? wide_8x2z : NULL, NULL, NULL};
    int64_t *inv = NULL;
    if (!wd.consecutive && !strided(&c, g)) {
        inv = row_sources(rows, g * r, out);
        wd.sums = inv ? (float *)aligned_alloc(64, (size_t)((g * r * WIDE + 15) / 16 * 16) * sizeof(float)) : NULL;
        wd.inv = wd.sums ? inv : NULL;
    }
    wide_panels(&wd, threads, flags);
    free(wd.sums), free(inv), free(buffers);
    return 0;
}
#endif

/* Batches from this many rows take the wide-batch tiles (where the AVX2 kernels run): 8 where their 8-row
 * tiles have 512-bit vectors (panels of 8 and 16 samples then have 8-row tiles too), else 24; chosen on
 * first use. */
static int64_t wide_from = -1;

/* request >= 1 sets the batch from which the wide tiles run (tests force either path); returns it. */
int64_t rbgp_native_wide_from(int64_t request) {
    if (request >= 1) wide_from = request;
    else if (wide_from < 0) wide_from = rbgp_native_wide_rows(0) == 8 && rbgp_native_vector_bits(0) == 512 ? 8 : 24;
    return wide_from;
}

/* kind 0: fp32 values; 1: bf16 values (uint16 bits); 2: int8 values with one fp32 scale per row
 * (`scales`, (G, R)); `bias` (out,) or NULL. Returns 0, or 1 when a buffer could not be allocated. */
int rbgp_grouped_small(int kind, int64_t n, int64_t g, int64_t r, int64_t k, int64_t bw, const float *x, int64_t in,
                       int64_t ldx, const void *values, const float *scales, const int64_t *blocks,
                       const int64_t *rows, int64_t out, const float *bias, float *y, int threads) {
    if (threads < 1) threads = 1;
#ifdef RBGP_AVX2_KERNELS
    if (n >= rbgp_native_wide_from(0) && rbgp_native_isa(-1))
        return wide(kind, n, g, r, k, bw, x, in, ldx, values, scales, blocks, rows, out, bias, y, threads);
#endif
    /* every thread's buffer, and the flags all threads read, on cache lines of their own (64 bytes):
     * a line written by one thread and read by another would bounce between the cores */
    const int64_t per = ((n * k > 0 ? n * k : 1) + 15) / 16 * 16, flags = (n + 15) / 16 * 16;
    float *buffers = (float *)aligned_alloc(64, (size_t)(per * threads + flags) * sizeof(float));
    if (!buffers) return 1;
    float *nf = buffers + per * threads;
    nonfinite(n, in, x, ldx, nf);
    const call_t c = {pick(kind), value_size(kind), n, r, k, bw, ldx, out, per, x, scales, bias, nf, values, blocks,
                      rows, buffers, y};
    parallel_for(grouped_task, &c, g, threads);
    free(buffers);
    return 0;
}

/* A weight's operands as rbgp_grouped_small takes them, packed once by the caller (native.py keeps
 * one per layer), so that a call passes five arguments instead of sixteen. */
typedef struct {
    int64_t kind, g, r, k, bw, in, out;
    const void *values;
    const float *scales;
    const int64_t *blocks, *rows;
    const float *bias;
} operands_t;

int rbgp_grouped_call(const operands_t *w, int64_t n, const float *x, int64_t ldx, float *y, int threads) {
    return rbgp_grouped_small((int)w->kind, n, w->g, w->r, w->k, w->bw, x, w->in, ldx, w->values, w->scales, w->blocks,
                              w->rows, w->out, w->bias, y, threads);
}

/* ---- Convolutions: the wide tiles on the input's windows, read where they lie ---------------------
 * An RBGP conv whose row groups read whole input channels (block width kh * kw): the 24 (or fewer)
 * neighbouring output pixels of a run along one output row read, for each channel and tap, 24
 * neighbouring floats of one row of the zero-padded input, its columns stored phase by phase for a
 * stride sw along the width (column x at phase x % sw, place x / sw), so that a strided conv's run
 * reads neighbouring floats too. The wide tiles then
 * load them straight from the input (an implicit GEMM: no im2col matrix, no gathered copy, no panel),
 * each value broadcast against the run. Threads take runs, every group on each. */
#ifdef RBGP_AVX2_KERNELS

/* A conv's geometry: its input already padded, (channels, hp, wp) per image (wp: a padded row's floats,
 * its sw phases of wq), kernel (kh, kw), stride (sh, sw), dilation (dh, dw), output (oh, ow); off[j]: where
 * tap j of a row starts, relative to the run's first pixel; step: from one of a run's vectors to the next
 * (8 along a row, or a whole output row down where rows are a vector or shorter). */
#define CONV_MAX_KW 16
typedef struct {
    int64_t channels, hp, wp, kh, kw, sh, dh, dw, oh, ow, sw, wq, step, off[CONV_MAX_KW];
} conv_t;

/* out[e * ldo + t] = sum over the group's channels c, taps (i, j) of w[t * ldw + col] * x[c * plane +
 * i * dh * wp + off[j] + (e / 8) * step + e % 8] (col: the channel's position times kh * kw plus the tap),
 * for H rows and V vectors of 8 pixels e from x. */
#define CONV_TILE(NAME, ATTR, H, V)                                                                          \
    ATTR static void NAME(int64_t kb, const int64_t *blocks, const conv_t *v, const float *w, int64_t ldw,  \
                          const float *x, float *out, int64_t ldo) {                                         \
        __m256 a[H][V];                                                                                      \
        for (int t = 0; t < (H); t++)                                                                        \
            for (int u = 0; u < (V); u++) a[t][u] = _mm256_setzero_ps();                                     \
        const int64_t plane = v->hp * v->wp, down = v->dh * v->wp;                                           \
        int64_t col = 0;                                                                                     \
        for (int64_t b = 0; b < kb; b++) {                                                                   \
            const float *pc = x + blocks[b] * plane;                                                         \
            for (int64_t i = 0; i < v->kh; i++, pc += down) {                                                \
                for (int64_t j = 0; j < v->kw; j++, col++) {                                                 \
                    const float *p = pc + v->off[j];                                                         \
                    __m256 xv[V];                                                                            \
                    for (int u = 0; u < (V); u++) xv[u] = _mm256_loadu_ps(p + v->step * u);                  \
                    for (int t = 0; t < (H); t++) {                                                          \
                        const __m256 wv = _mm256_broadcast_ss(w + t * ldw + col);                            \
                        for (int u = 0; u < (V); u++) a[t][u] = _mm256_fmadd_ps(wv, xv[u], a[t][u]);         \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int t = 0; t < (H); t++)                                                                        \
            for (int u = 0; u < (V); u++) {                                                                  \
                float tmp[8];                                                                                \
                _mm256_storeu_ps(tmp, a[t][u]);                                                              \
                for (int e = 0; e < 8; e++) out[(8 * u + e) * ldo + t] = tmp[e];                             \
            }                                                                                                \
    }
CONV_TILE(conv_2x1, AVX2, 2, 1)
CONV_TILE(conv_2x2, AVX2, 2, 2)
CONV_TILE(conv_2x3, AVX2, 2, 3)
CONV_TILE(conv_1x1, AVX2, 1, 1)
CONV_TILE(conv_1x2, AVX2, 1, 2)
CONV_TILE(conv_1x3, AVX2, 1, 3)

/* CONV_TILE for the rows ROWS lists, written out as WIDE_X3 is (with arrays the compiler keeps the
 * sums on the stack), from the same pieces: 24 pixels (X3_*, Z3_*), 16 (X2_*, Z2_*) or 8 (X1_*). */
#define CONV_X(NAME, ATTR, ROWS, ROW, STEP, LOADS, STORES)                                                   \
    ATTR static void NAME(int64_t kb, const int64_t *blocks, const conv_t *v, const float *w, int64_t ldw,  \
                          const float *x, float *out, int64_t ldo) {                                         \
        ROWS(ROW)                                                                                            \
        const int64_t plane = v->hp * v->wp, down = v->dh * v->wp;                                           \
        const int add = 0;                                                                                   \
        int64_t j = 0;                                                                                       \
        for (int64_t b = 0; b < kb; b++) {                                                                   \
            const float *pc = x + blocks[b] * plane;                                                         \
            if (b + 1 < kb) /* the next channel's rows, from the second-level cache meanwhile */             \
                for (int64_t i = 0; i < v->kh; i++) {                                                        \
                    const char *next = (const char *)(x + blocks[b + 1] * plane + i * down);                 \
                    _mm_prefetch(next, _MM_HINT_T0), _mm_prefetch(next + 64, _MM_HINT_T0);                   \
                }                                                                                            \
            for (int64_t i = 0; i < v->kh; i++, pc += down) {                                                \
                for (int64_t tap = 0; tap < v->kw; tap++, j++) {                                             \
                    const float *p = pc + v->off[tap];                                                       \
                    LOADS                                                                                    \
                    ROWS(STEP)                                                                               \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        STORES                                                                                               \
    }
/* Along a row the vectors are 8 floats apart (a constant: a variable step costs the 16-pixel tiles about 10%);
 * the stacked tiles (suffix s) step v->step. */
CONV_X(conv_4x3, AVX2, ROWS4, X3_ROW, X3_STEP, X3_LOADS(8), X3_STORE4(0, 1, 2, 3, 0))
CONV_X(conv_8x3, AVX512VL, ROWS8, X3_ROW, X3_STEP, X3_LOADS(8), STORES8)
CONV_X(conv_8x3z, AVX512VL, ROWS8, Z3_ROW, Z3_STEP, Z3_LOADS, STORES8_Z3)
CONV_X(conv_8x2z, AVX512VL, ROWS8, Z2_ROW, Z2_STEP, Z2_LOADS, STORES8_Z2)
/* The stacked ones: the vectors at p and p + S joined into one zmm. */
#define ZS_PAIR(S)                                                                                           \
    _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(p))),        \
                                        _mm256_castps_pd(_mm256_loadu_ps(p + (S))), 1))
#define ZS3_LOADS(S)                                                                                         \
    const __m512 xz = ZS_PAIR(S);                                                                            \
    const __m256 x2 = _mm256_loadu_ps(p + 2 * (S));
#define ZS2_LOADS(S) const __m512 xz = ZS_PAIR(S);
CONV_X(conv_8x3zs, AVX512VL, ROWS8, Z3_ROW, Z3_STEP, ZS3_LOADS(v->step), STORES8_Z3)
CONV_X(conv_8x2zs, AVX512VL, ROWS8, Z2_ROW, Z2_STEP, ZS2_LOADS(v->step), STORES8_Z2)
CONV_X(conv_8x2, AVX512VL, ROWS8, X2_ROW, X2_STEP, X2_LOADS(8), STORES8_X2)
CONV_X(conv_8x1, AVX512VL, ROWS8, X1_ROW, X1_STEP, X1_LOADS(8), STORES8_X1)
CONV_X(conv_4x2, AVX2, ROWS4, X2_ROW, X2_STEP, X2_LOADS(8), X2_STORE4(0, 1, 2, 3, 0))
CONV_X(conv_4x1, AVX2, ROWS4, X1_ROW, X1_STEP, X1_LOADS(8), X1_STORE4(0, 1, 2, 3, 0))
CONV_X(conv_4x3s, AVX2, ROWS4, X3_ROW, X3_STEP, X3_LOADS(v->step), X3_STORE4(0, 1, 2, 3, 0))
CONV_X(conv_8x3s, AVX512VL, ROWS8, X3_ROW, X3_STEP, X3_LOADS(v->step), STORES8)
CONV_X(conv_8x2s, AVX512VL, ROWS8, X2_ROW, X2_STEP, X2_LOADS(v->step), STORES8_X2)
CONV_X(conv_4x2s, AVX2, ROWS4, X2_ROW, X2_STEP, X2_LOADS(v->step), X2_STORE4(0, 1, 2, 3, 0))

typedef void (*conv_fn)(int64_t kb, const int64_t *blocks, const conv_t *v, const float *w, int64_t ldw,
                        const float *x, float *out, int64_t ldo);

/* One conv call's arguments, shared by its threads. */
typedef struct {
    const conv_t *v;
    int64_t runs, width, g, r, k, out; /* runs per output row, of `width` pixels (the last one fewer) */
    const float *x, *values, *bias;
    const int64_t *blocks, *rows;
    float *buffers, *y;
    int eight, stacked;
    conv_fn tiles8[2][2]; /* 8-row tiles of 2 and 3 vectors, along a row and stacked (`rbgp_native_vector_bits`) */
} conv_call_t;

/* Runs [begin, end), every group on each: its rows' sums into the thread's buffer (WIDE, R), then into y
 * (images, out, oh, ow), bias added. Run q is an image's output row and a stretch of at most WIDE
 * pixels of it, or, where rows are a vector or shorter (`stacked`), up to three whole output rows (one
 * vector each), so that the tiles still load three vectors for each broadcast weight. */
static void conv_task(const void *ctx, int tid, int64_t begin, int64_t end) {
    const conv_call_t *c = ctx;
    const conv_fn along[4][3] = {{conv_8x1, c->tiles8[0][0], c->tiles8[0][1]},
                                 {conv_4x1, conv_4x2, conv_4x3},
                                 {conv_2x1, conv_2x2, conv_2x3},
                                 {conv_1x1, conv_1x2, conv_1x3}};
    const conv_fn down[4][3] = {{conv_8x1, c->tiles8[1][0], c->tiles8[1][1]},
                                {conv_4x1, conv_4x2s, conv_4x3s},
                                {conv_2x1, conv_2x2, conv_2x3},
                                {conv_1x1, conv_1x2, conv_1x3}};
    const conv_fn(*tiles)[3] = c->stacked ? down : along;
    const conv_t *v = c->v;
    const int64_t kb = c->k / (v->kh * v->kw), pixels = v->oh * v->ow;
    const int64_t per_image = c->stacked ? (v->oh + 2) / 3 : v->oh * c->runs;
    float *out = c->buffers + tid * WIDE * c->r;
    for (int64_t q = begin; q < end; q++) {
        const int64_t img = q / per_image, at = q % per_image;
        int64_t oy, ox, len, vecs;
        if (c->stacked) {
            oy = at * 3, ox = 0, vecs = v->oh - oy < 3 ? v->oh - oy : 3, len = v->ow;
        } else {
            oy = at / c->runs, ox = at % c->runs * c->width, len = v->ow - ox < c->width ? v->ow - ox : c->width;
            vecs = (len + 7) / 8;
        }
        const float *x = c->x + img * v->channels * v->hp * v->wp + oy * v->sh * v->wp + ox;
        float *y = c->y + img * c->out * pixels + oy * v->ow + ox;
        for (int64_t gi = 0; gi < c->g; gi++) {
            const float *w = c->values + gi * c->r * c->k;
            for (int64_t i = 0; i < c->r;) {
                const int h = tile_rows(c->eight, c->r - i);
                tiles[h == 8 ? 0 : h == 4 ? 1 : h == 2 ? 2 : 3][vecs - 1](kb, c->blocks + gi * kb, v, w + i * c->k,
                                                                        c->k, x, out + i, c->r);
                i += h;
            }
            for (int64_t t = 0; t < c->r; t++) {
                const int64_t to = c->rows[gi * c->r + t];
                if (to >= c->out) continue;
                const float b = c->bias ? c->bias[to] : 0.0f;
                float *restrict yr = y + to * pixels;
                if (!c->stacked)
                    for (int64_t e = 0; e < len; e++) yr[e] = out[e * c->r + t] + b;
                else
                    for (int64_t u = 0; u < vecs; u++, yr += v->ow)
                        for (int64_t e = 0; e < v->ow; e++) yr[e] = out[(u * 8 + e) * c->r + t] + b;
            }
        }
    }
}
#endif

/* The RBGP conv of x (images, channels, hp, sw, wq), the input with its padding, each row's columns
 * phase by phase (column x at [x % sw][x / sw]), contiguous and readable 32 floats past its end, into y
 * (images, out, oh, ow): `w`'s values fp32 (kind 0), its blocks its groups' input channels (block width
 * kh * kw), its rows the output channels of its group-major rows (out or more: padding, dropped);
 * `geometry`: channels, hp, kh, kw, sh, sw, dh, dw, oh, ow, wq. Inf and NaN inputs are not flagged (the
 * caller does). Returns 0, 1 when a buffer could not be allocated, 2 where the kernel cannot take it (no
 * AVX2 build, not fp32 values, or more than CONV_MAX_KW taps along the width). */
int rbgp_grouped_conv(const operands_t *w, const int64_t *geometry, int64_t images, const float *x, float *y,
                      int threads) {
#ifdef RBGP_AVX2_KERNELS
    if (!rbgp_native_isa(-1) || w->kind != 0 || geometry[3] > CONV_MAX_KW) return 2;
    const int64_t sw = geometry[5], wq = geometry[10];
    conv_t v = {.channels = geometry[0], .hp = geometry[1], .wp = sw * wq, .kh = geometry[2], .kw = geometry[3],
                .sh = geometry[4], .dh = geometry[6], .dw = geometry[7], .oh = geometry[8], .ow = geometry[9],
                .sw = sw, .wq = wq};
    for (int64_t j = 0; j < v.kw; j++) v.off[j] = j * v.dw % sw * wq + j * v.dw / sw;
    /* a row's pixels in the fewest runs of at most WIDE, as even as whole vectors allow (32: 16 + 16, so
     * that no run takes a one-vector tile) */
    const int64_t fewest = (v.ow + WIDE - 1) / WIDE, width = ((v.ow + fewest - 1) / fewest + 7) / 8 * 8;
    const int64_t runs = (v.ow + width - 1) / width;
    const int stacked = v.ow <= 8;
    v.step = stacked ? v.sh * v.wp : 8;
    const int64_t total = images * (stacked ? (v.oh + 2) / 3 : v.oh * runs);
    if (threads < 1) threads = 1;
    if (threads > total) threads = (int)total;
    float *buffers = (float *)aligned_alloc(64, (size_t)((threads * WIDE * w->r + 15) / 16 * 16) * sizeof(float));
    if (!buffers) return 1;
    const int zmm = rbgp_native_vector_bits(0) == 512;
    const conv_call_t c = {&v, runs, width, w->g, w->r, w->k, w->out, x, (const float *)w->values, w->bias, w->blocks,
                           w->rows, buffers, y, rbgp_native_wide_rows(0) == 8, stacked,
                           {{zmm ? conv_8x2z : conv_8x2, zmm ? conv_8x3z : conv_8x3},
                            {zmm ? conv_8x2zs : conv_8x2s, zmm ? conv_8x3zs : conv_8x3s}}};
    parallel_for(conv_task, &c, total, threads);
    free(buffers);
    return 0;
#else
    (void)w, (void)geometry, (void)images, (void)x, (void)y, (void)threads;
    return 2;
#endif
}

/* The same product for a dense weight `values` (out, in), kinds as above (`scales` (out,)); rows in
 * chunks of DENSE_ROWS over the threads, the inputs read in place. */
#define DENSE_ROWS 16

static void dense_task(const void *ctx, int tid, int64_t begin, int64_t end) {
    const call_t *c = ctx;
    (void)tid;
    for (int64_t chunk = begin; chunk < end; chunk++) {
        const int64_t row0 = chunk * DENSE_ROWS, r = c->out - row0 < DENSE_ROWS ? c->out - row0 : DENSE_ROWS;
        c->fn(c->n, r, c->k, (const char *)c->values + (size_t)(row0 * c->k) * c->value_size,
              c->scales ? c->scales + row0 : NULL, c->x, c->ldx, NULL, row0, c->out, NULL, c->bias, c->y);
    }
}

int rbgp_dense_small(int kind, int64_t n, int64_t out, int64_t in, const float *x, int64_t ldx, const void *values,
                     const float *scales, const float *bias, float *y, int threads) {
    const call_t c = {pick(kind), value_size(kind), n, 0, in, 1, ldx, out, 0, x, scales, bias, NULL, values, NULL,
                      NULL, NULL, y};
    parallel_for(dense_task, &c, (out + DENSE_ROWS - 1) / DENSE_ROWS, threads);
    return 0;
}
