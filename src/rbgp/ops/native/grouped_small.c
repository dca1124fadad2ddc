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
 * library can move to another CPU.
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

/* kind 0: fp32 values; 1: bf16 values (uint16 bits); 2: int8 values with one fp32 scale per row
 * (`scales`, (G, R)); `bias` (out,) or NULL. Returns 0, or 1 when a buffer could not be allocated. */
int rbgp_grouped_small(int kind, int64_t n, int64_t g, int64_t r, int64_t k, int64_t bw, const float *x, int64_t in,
                       int64_t ldx, const void *values, const float *scales, const int64_t *blocks,
                       const int64_t *rows, int64_t out, const float *bias, float *y, int threads) {
    if (threads < 1) threads = 1;
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
