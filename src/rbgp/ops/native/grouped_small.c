/* The grouped-sparse product for small batches, values read once: y (n, out) = x (n, in) W^T.
 *
 * W is G row groups of R rows; group g's rows all read the same K input columns, given as K / BW
 * aligned micro-blocks of BW columns (col_blocks, block ids) or, with BW = 1, as columns. For every
 * group (groups split over threads) the K inputs of each sample are copied into a small buffer
 * (whole micro-blocks with memcpy), then each of the group's rows is one dot product per sample
 * against it: every value of W is read from memory once per call, which is what bounds a batch-1
 * (decode) product. Rows with ids >= out are padding rows and are skipped. The output is written
 * in row order, row-major. A sample with an inf or NaN input gets NaN in every row, as the dense
 * product of the densified weight does (its zeros times inf or NaN).
 *
 * Vectorised by the compiler for AVX-512, AVX2+FMA or plain x86-64, picked at run time
 * (target_clones); never -march=native, so the library can move to another CPU.
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

/* The group's rows against the gathered inputs of every sample, two rows by four samples at a time:
 * each loaded value serves four dot products and each loaded input two, which keeps the FMA units
 * busy rather than the loads; the samples left over (all of them below four: decode) one row and
 * one sample at a time, which streams the values fastest. `scale` (per row) or NULL; `nf` (per
 * sample, 0 or NaN) and `bias` (per output row, or NULL) are added to every output; rows with ids
 * >= out (padding) are not stored. */
#define STORE(ROW, S, ACC, F)                                                                                \
    do {                                                                                                     \
        if ((ROW) < out) y[(S) * out + (ROW)] = (ACC) * (F) + nf[S] + (bias ? bias[ROW] : 0.0f);             \
    } while (0)

#define ROWS_KERNEL(NAME, T, WIDEN)                                                                          \
    RBGP_CLONES                                                                                              \
    static void NAME(int64_t n, int64_t r, int64_t k, const T *v, const float *scale, const float *xg,       \
                     const int64_t *rows, int64_t out, const float *nf, const float *bias, float *y) {       \
        for (int64_t i = 0; i + 2 <= r; i += 2) {                                                            \
            const int64_t row0 = rows[i], row1 = rows[i + 1];                                                \
            if (row0 >= out && row1 >= out) continue;                                                        \
            const T *v0 = v + i * k, *v1 = v0 + k;                                                           \
            const float f0 = scale ? scale[i] : 1.0f, f1 = scale ? scale[i + 1] : 1.0f;                      \
            for (int64_t s = 0; s + 4 <= n; s += 4) {                                                        \
                const float *x0 = xg + s * k, *x1 = x0 + k, *x2 = x1 + k, *x3 = x2 + k;                      \
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
                STORE(row0, s, a0, f0);                                                                      \
                STORE(row0, s + 1, a1, f0);                                                                  \
                STORE(row0, s + 2, a2, f0);                                                                  \
                STORE(row0, s + 3, a3, f0);                                                                  \
                STORE(row1, s, b0, f1);                                                                      \
                STORE(row1, s + 1, b1, f1);                                                                  \
                STORE(row1, s + 2, b2, f1);                                                                  \
                STORE(row1, s + 3, b3, f1);                                                                  \
            }                                                                                                \
        }                                                                                                    \
        const int64_t n4 = n - n % 4; /* the samples left over, and an odd last row */                       \
        for (int64_t i = 0; i < r; i++) {                                                                    \
            const int64_t row = rows[i];                                                                     \
            if (row >= out) continue;                                                                        \
            const T *vi = v + i * k;                                                                         \
            const float f = scale ? scale[i] : 1.0f;                                                         \
            for (int64_t s = (i < r - r % 2) ? n4 : 0; s < n; s++) {                                         \
                const float *xs = xg + s * k;                                                                \
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

/* kind 0: fp32 values; 1: bf16 values (uint16 bits); 2: int8 values with one fp32 scale per row
 * (`scales`, (G, R)); `bias` (out,) or NULL. Returns 0, or 1 when a buffer could not be allocated. */
int rbgp_grouped_small(int kind, int64_t n, int64_t g, int64_t r, int64_t k, int64_t bw, const float *x, int64_t in,
                       int64_t ldx,
                       const void *values, const float *scales, const int64_t *blocks, const int64_t *rows,
                       int64_t out, const float *bias, float *y, int threads) {
    const int64_t kb = k / bw;
    const int64_t per = n * k > 0 ? n * k : 1;
    if (threads < 1) threads = 1;
    float *buffers = (float *)malloc((size_t)(per * threads + n) * sizeof(float));
    if (!buffers) return 1;
    float *nf = buffers + per * threads;
    nonfinite(n, in, x, ldx, nf);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t gi = 0; gi < g; gi++) {
        float *xg = buffers + per * omp_get_thread_num();
        gather(n, k, bw, x, ldx, blocks + gi * kb, xg);
        const int64_t *grow = rows + gi * r;
        if (kind == 0)
            rows_f32(n, r, k, (const float *)values + gi * r * k, NULL, xg, grow, out, nf, bias, y);
        else if (kind == 1)
            rows_bf16(n, r, k, (const bf16_t *)values + gi * r * k, NULL, xg, grow, out, nf, bias, y);
        else
            rows_i8(n, r, k, (const int8_t *)values + gi * r * k, scales + gi * r, xg, grow, out, nf, bias, y);
    }
    free(buffers);
    return 0;
}
