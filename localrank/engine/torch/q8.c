/* int8 block matmuls for the torch CPU forwards on x86-64 with AVX2 and FMA (int8.py says when
 * and why). A weight [N, K] is held as int8 integers in blocks of 32 along K, each block with its
 * own float32 scale (q8_0's layout: w ~ s[n, b] * q[n, k]); each call rounds its input rows the
 * same way (x ~ t[m, b] * p[m, k]), and
 *
 *     y[m, n] = sum_b t[m, b] s[n, b] sum_{k in b} p[m, k] q[n, k],
 *
 * the inner sums exact in int32. Integers are symmetric in [-127, 127], so the AVX2 product of
 * two signed bytes can go through vpmaddubsw (unsigned x signed) as |q| x (p * sign q): a pair
 * of such products stays within int16 (2 x 127 x 127 < 32767), which fbgemm's unsigned 8-bit
 * activations against 8-bit weights do not (the reason its scheme needed 7-bit weights in two
 * levels).
 *
 * The kernel's layout ("packed"): within each group of 8 consecutive blocks (256 integers), the
 * 4-byte pieces are interleaved, piece t of block j at t * 32 + j * 4, so that one 32-byte load
 * holds 4 integers of each of the 8 blocks and the 8 loads of a group sum, lane by lane, into the
 * 8 blocks' sums: no horizontal reduction per block. Weights are held packed (int8.py's
 * Int8Weight), each call's rows are rounded into it; blocks after the last whole group stay in
 * order. The sums are the same integers as in order, so the same results.
 *
 * Threads: a call splits its output channels over the calling thread and up to 7 workers of its
 * own (POSIX threads that spin briefly, then sleep); a call made while another runs the workers
 * computes on its own thread alone. Pointers come from int8.py, which checks shapes, dtypes and
 * contiguity first: nothing here checks them again. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 32
#define GROUP 8 /* blocks packed together: one float multiply-add per 8 blocks and row */
#define TILE 32 /* at most this many input rows per pass over the weights (in L2 meanwhile) */
#define MAX_WORKERS 7
#define SPIN 4000
#define OUTLIERS 16 /* float32 input channels a weight may keep (int8.py's outlier columns) */

/* ------------------------------------------------------------------ rounding to blocks */

/* max |v| over one block of 32 floats */
static inline float block_amax(const float *p) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 a = _mm256_max_ps(
        _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(p), absmask),
                      _mm256_and_ps(_mm256_loadu_ps(p + 8), absmask)),
        _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(p + 16), absmask),
                      _mm256_and_ps(_mm256_loadu_ps(p + 24), absmask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* where piece t (bytes 4t..4t+3) of block b, in a whole group, lies in a packed row (the header) */
static inline int64_t packed_piece(int64_t b, int t) {
    return (b / GROUP) * GROUP * BLOCK + t * BLOCK + (b % GROUP) * 4;
}

/* rows [r0, r1) of x [*, K] -> q [*, K] int8 (in order, or packed) and s [*, K / 32] float32 */
static void quantize_rows(const float *x, int64_t K, int8_t *q, float *s, int64_t r0, int64_t r1,
                          int packed) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const int64_t nb = K / BLOCK, whole = nb / GROUP * GROUP;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *p = x + r * K + b * BLOCK;
            __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8);
            __m256 v2 = _mm256_loadu_ps(p + 16), v3 = _mm256_loadu_ps(p + 24);
            const float amax = block_amax(p);
            s[r * nb + b] = amax / 127.0f;
            const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
#define ROUND(v) _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
            __m256i i01 = _mm256_packs_epi32(ROUND(v0), ROUND(v1));
            __m256i i23 = _mm256_packs_epi32(ROUND(v2), ROUND(v3));
#undef ROUND
            /* the packs interleave 128-bit lanes: put the 32 bytes back in order */
            __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i01, i23), order);
            if (!packed || b >= whole) {
                _mm256_storeu_si256((__m256i *)(q + r * K + b * BLOCK), bytes);
                continue;
            }
            int32_t pieces[8];
            _mm256_storeu_si256((__m256i *)pieces, bytes);
            for (int t = 0; t < 8; t++) memcpy(q + r * K + packed_piece(b, t), pieces + t, 4);
        }
    }
}

/* rows [r0, r1) of x -> out: each value rounded to its block's grid and back (what
 * quantize_rows then dequantize_rows give, without the integers in between) */
static void round_trip_rows(const float *x, int64_t K, float *out, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < K / BLOCK; b++) {
            const float *p = x + r * K + b * BLOCK;
            float *o = out + r * K + b * BLOCK;
            const float amax = block_amax(p);
            const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            const __m256 scale = _mm256_set1_ps(amax / 127.0f);
            for (int j = 0; j < BLOCK; j += 8) {
                __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(p + j), inv),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm256_storeu_ps(o + j, _mm256_mul_ps(v, scale));
            }
        }
    }
}

/* rows [r0, r1) of (q in order or packed, s) -> float32 out [*, K]: what the blocks stand for */
static void dequantize_rows(const int8_t *q, const float *s, int64_t K, float *out, int64_t r0,
                            int64_t r1, int packed) {
    const int64_t nb = K / BLOCK, whole = nb / GROUP * GROUP;
    int8_t block[BLOCK];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *p = q + r * K + b * BLOCK;
            if (packed && b < whole) {
                for (int t = 0; t < 8; t++) memcpy(block + 4 * t, q + r * K + packed_piece(b, t), 4);
                p = block;
            }
            float *o = out + r * K + b * BLOCK;
            const __m256 scale = _mm256_set1_ps(s[r * nb + b]);
            for (int j = 0; j < BLOCK; j += 8) {
                __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + j)));
                _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale));
            }
        }
    }
}

/* ------------------------------------------------------------------ the product */

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* one block's 32 products of signed bytes, as 8 int32 partial sums: |w| x (x * sign w) in
 * vpmaddubsw and vpmaddwd, or in one vpdpbusd where the CPU has AVX512-VNNI (written as assembly
 * so that this file compiles for AVX2 alone; the same integers either way) */
static inline __attribute__((always_inline)) __m256i block_dot(__m256i wabs, __m256i w,
                                                               const int8_t *x, __m256i ones,
                                                               const int vnni) {
    __m256i signed_x = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x), w);
    if (vnni) {
        __m256i sums = _mm256_setzero_si256();
        __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(sums) : "x"(wabs), "x"(signed_x));
        return sums;
    }
    return _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, signed_x), ones);
}

/* pieces first, first + 2, first + 4, first + 6 of a packed group, summed lane by lane: in
 * vpdpbusd, which accumulates, or vpmaddubsw and vpmaddwd, then vpaddd */
static inline __attribute__((always_inline)) __m256i group_dot(const __m256i *wa, const __m256i *wv,
                                                               const int8_t *xg, int first,
                                                               __m256i ones, const int vnni) {
    if (vnni) {
        __m256i sums = _mm256_setzero_si256();
        for (int t = first; t < GROUP; t += 2) {
            __m256i signed_x = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xg + t * BLOCK)), wv[t]);
            __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(sums) : "x"(wa[t]), "x"(signed_x));
        }
        return sums;
    }
    return _mm256_add_epi32(
        _mm256_add_epi32(block_dot(wa[first], wv[first], xg + first * BLOCK, ones, 0),
                         block_dot(wa[first + 2], wv[first + 2], xg + (first + 2) * BLOCK, ones, 0)),
        _mm256_add_epi32(block_dot(wa[first + 4], wv[first + 4], xg + (first + 4) * BLOCK, ones, 0),
                         block_dot(wa[first + 6], wv[first + 6], xg + (first + 6) * BLOCK, ones, 0)));
}

/* y[m, n] for every row m and the output channels [n0, n1); with `xo` [M, 16] and `wo` [N, 16]
 * (the outlier columns' inputs and weights, zero-padded), their float32 products added */
static inline __attribute__((always_inline)) void
gemm_channels(const int8_t *xq, const float *sx, int64_t M, int64_t K, const int8_t *w,
              const float *sw, const float *xo, const float *wo, float *y, int64_t N, int64_t n0,
              int64_t n1, const int vnni) {
    const int64_t nb = K / BLOCK, groups = nb / GROUP;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
    float tail[TILE];
    /* tiles of equal size: 40 rows are two passes of 20, not 32 and 8 */
    const int64_t tiles = (M + TILE - 1) / TILE, size = (M + tiles - 1) / tiles;
    for (int64_t m0 = 0; m0 < M; m0 += size) {
        const int64_t rows = M - m0 < size ? M - m0 : size;
        for (int64_t n = n0; n < n1; n++) {
            const int8_t *wr = w + n * K;
            const float *swr = sw + n * nb;
            for (int64_t i = 0; i < rows; i++) {
                acc[i] = _mm256_setzero_ps();
                tail[i] = 0.0f;
            }
            for (int64_t g = 0; g < groups; g++) {
                /* packed: piece t of all 8 blocks in wv[t]; their sums add lane by lane */
                const int8_t *wg = wr + g * GROUP * BLOCK;
                __m256i wv[GROUP], wa[GROUP];
                for (int t = 0; t < GROUP; t++) {
                    wv[t] = _mm256_loadu_si256((const __m256i *)(wg + t * BLOCK));
                    wa[t] = _mm256_sign_epi8(wv[t], wv[t]);
                }
                const __m256 dw = _mm256_loadu_ps(swr + g * GROUP);
                for (int64_t i = 0; i < rows; i++) {
                    const int64_t m = m0 + i;
                    const int8_t *xg = xq + m * K + g * GROUP * BLOCK;
                    /* block j's sum in lane j (two chains of 4, for vpdpbusd's latency) */
                    __m256i sums = _mm256_add_epi32(
                        group_dot(wa, wv, xg, 0, ones, vnni), group_dot(wa, wv, xg, 1, ones, vnni));
                    __m256 scale = _mm256_mul_ps(dw, _mm256_loadu_ps(sx + m * nb + g * GROUP));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[i]);
                }
            }
            if (xo != NULL) {
                const __m256 o0 = _mm256_loadu_ps(wo + n * OUTLIERS), o1 = _mm256_loadu_ps(wo + n * OUTLIERS + 8);
                for (int64_t i = 0; i < rows; i++) {
                    const float *xr = xo + (m0 + i) * OUTLIERS;
                    acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), o0, acc[i]);
                    acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), o1, acc[i]);
                }
            }
            for (int64_t b = groups * GROUP; b < nb; b++) { /* K not a multiple of 256 */
                __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * BLOCK));
                __m256i wa = _mm256_sign_epi8(wv, wv);
                for (int64_t i = 0; i < rows; i++) {
                    const int64_t m = m0 + i;
                    __m256i p = block_dot(wa, wv, xq + m * K + b * BLOCK, ones, vnni);
                    __m256 f = _mm256_cvtepi32_ps(p);
                    tail[i] += hsum(f) * (swr[b] * sx[m * nb + b]);
                }
            }
            for (int64_t i = 0; i < rows; i++) y[(m0 + i) * N + n] = hsum(acc[i]) + tail[i];
        }
    }
}

static void gemm_avx2(const int8_t *xq, const float *sx, int64_t M, int64_t K, const int8_t *w,
                      const float *sw, const float *xo, const float *wo, float *y, int64_t N,
                      int64_t n0, int64_t n1) {
    gemm_channels(xq, sx, M, K, w, sw, xo, wo, y, N, n0, n1, 0);
}

static void gemm_vnni(const int8_t *xq, const float *sx, int64_t M, int64_t K, const int8_t *w,
                      const float *sw, const float *xo, const float *wo, float *y, int64_t N,
                      int64_t n0, int64_t n1) {
    gemm_channels(xq, sx, M, K, w, sw, xo, wo, y, N, n0, n1, 1);
}

/* 1: vpdpbusd (AVX512-VNNI with AVX512-VL, and the OS saving their state), 0: AVX2 */
static int use_vnni = -1;

static int vnni_here(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}

/* ------------------------------------------------------------------ workers */

typedef struct {
    int kind; /* 0: gemm over channels, 1: quantize rows, 2: dequantize rows, 3: round trip */
    const int8_t *xq;
    const float *sx;
    const float *x;
    int8_t *q;
    float *s;
    int64_t M, K, N;
    const int8_t *w;
    const float *sw;
    const float *xo, *wo;
    float *y;
    int parts;
    int packed; /* quantize and dequantize: the kernel's layout (the header) */
} job_t;

static job_t job;
static atomic_int generation = 0, finished = 0;
static int workers = 0;
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER; /* held by the call using the workers */
static pthread_mutex_t wake_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static void run_part(const job_t *j, int part) {
    const int64_t total = j->kind == 0 ? j->N : j->M;
    int64_t per = (total + j->parts - 1) / j->parts;
    per = (per + 7) & ~(int64_t)7;
    const int64_t lo = part * per, hi = lo + per < total ? lo + per : total;
    if (lo >= hi) return;
    if (j->kind == 0)
        (use_vnni ? gemm_vnni : gemm_avx2)(j->xq, j->sx, j->M, j->K, j->w, j->sw, j->xo, j->wo,
                                           j->y, j->N, lo, hi);
    else if (j->kind == 1)
        quantize_rows(j->x, j->K, j->q, j->s, lo, hi, j->packed);
    else if (j->kind == 2)
        dequantize_rows(j->q, j->s, j->K, j->y, lo, hi, j->packed);
    else
        round_trip_rows(j->x, j->K, j->y, lo, hi);
}

/* arg: the worker's id in the low 8 bits, above them the generation when it was created (it
 * waits for the next one: a worker created after earlier calls must not run their jobs) */
static void *worker_main(void *arg) {
    const int id = (int)((intptr_t)arg & 0xff);
    int seen = (int)((intptr_t)arg >> 8);
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            if (++spins < SPIN) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&wake_mu);
            while (atomic_load(&generation) == seen) pthread_cond_wait(&wake, &wake_mu);
            pthread_mutex_unlock(&wake_mu);
        }
        seen = atomic_load(&generation);
        if (id < job.parts) run_part(&job, id);
        atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    }
    return NULL;
}

/* j on `threads` threads (this one included), or on this one alone when the workers are busy */
static void run(job_t j, int threads) {
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    if (threads <= 1 || pthread_mutex_trylock(&busy) != 0) {
        j.parts = 1;
        run_part(&j, 0);
        return;
    }
    while (workers < threads - 1) {
        pthread_t t;
        const intptr_t arg = ((intptr_t)atomic_load(&generation) << 8) | (intptr_t)(workers + 1);
        if (pthread_create(&t, NULL, worker_main, (void *)arg) != 0) break;
        pthread_detach(t);
        workers++;
    }
    j.parts = workers + 1 < threads ? workers + 1 : threads;
    job = j;
    atomic_store(&finished, 0);
    pthread_mutex_lock(&wake_mu);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&wake_mu);
    run_part(&job, 0);
    while (atomic_load_explicit(&finished, memory_order_acquire) < workers) _mm_pause();
    pthread_mutex_unlock(&busy);
}

/* ------------------------------------------------------------------ Python */

/* j on `threads` threads, the GIL released meanwhile */
static PyObject *run_released(job_t j, int threads) {
    Py_BEGIN_ALLOW_THREADS
    run(j, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* quantize(x, q, s, rows, k, threads, packed): pointers as integers; packed: the kernel's layout */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    unsigned long long x, q, s;
    long long rows, k;
    int threads, packed;
    if (!PyArg_ParseTuple(args, "KKKLLip", &x, &q, &s, &rows, &k, &threads, &packed)) return NULL;
    job_t j = {.kind = 1, .x = (const float *)x, .q = (int8_t *)q, .s = (float *)s, .M = rows, .K = k,
               .packed = packed};
    return run_released(j, threads);
}

/* dequantize(q, s, rows, k, out, threads, packed): pointers as integers; packed: q in the kernel's
 * layout */
static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    unsigned long long q, s, out;
    long long rows, k;
    int threads, packed;
    if (!PyArg_ParseTuple(args, "KKLLKip", &q, &s, &rows, &k, &out, &threads, &packed)) return NULL;
    job_t j = {.kind = 2, .q = (int8_t *)q, .s = (float *)s, .y = (float *)out, .M = rows, .K = k,
               .packed = packed};
    return run_released(j, threads);
}

/* round_trip(x, rows, k, out, threads): pointers as integers */
static PyObject *py_round_trip(PyObject *self, PyObject *args) {
    unsigned long long x, out;
    long long rows, k;
    int threads;
    if (!PyArg_ParseTuple(args, "KLLKi", &x, &rows, &k, &out, &threads)) return NULL;
    job_t j = {.kind = 3, .x = (const float *)x, .y = (float *)out, .M = rows, .K = k};
    return run_released(j, threads);
}

/* linear(x, rows, k, w, sw, n, y, threads, cols, ncols, wo): y = x @ dequant(w)^T (w packed), x rounded to
 * blocks first. With ncols (<= 16) input channels `cols` (int64): those are left out of the
 * rounding and multiplied in float32 by `wo` [N, 16] (the weight's columns, zero-padded). */
static PyObject *py_linear(PyObject *self, PyObject *args) {
    unsigned long long x, w, sw, y, cols, wo;
    long long rows, k, n, ncols;
    int threads;
    if (!PyArg_ParseTuple(args, "KLLKKLKiKLK", &x, &rows, &k, &w, &sw, &n, &y, &threads, &cols,
                          &ncols, &wo))
        return NULL;
    if (ncols < 0 || ncols > OUTLIERS) {
        PyErr_SetString(PyExc_ValueError, "at most 16 outlier columns");
        return NULL;
    }
    const size_t values = (size_t)(rows * k);
    int8_t *xq = malloc(values + 64);
    float *sx = malloc((size_t)(rows * (k / BLOCK)) * sizeof(float) + 64);
    float *xz = ncols ? malloc(values * sizeof(float) + 64) : NULL;
    float *xo = ncols ? calloc((size_t)(rows * OUTLIERS), sizeof(float)) : NULL;
    if (xq == NULL || sx == NULL || (ncols && (xz == NULL || xo == NULL))) {
        free(xq);
        free(sx);
        free(xz);
        free(xo);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    const float *xin = (const float *)x;
    if (ncols) { /* the outlier channels: out of the rounded copy, into xo */
        const int64_t *c = (const int64_t *)cols;
        memcpy(xz, xin, values * sizeof(float));
        for (int64_t m = 0; m < rows; m++)
            for (int64_t j = 0; j < ncols; j++) {
                xo[m * OUTLIERS + j] = xin[m * k + c[j]];
                xz[m * k + c[j]] = 0.0f;
            }
        xin = xz;
    }
    job_t qj = {.kind = 1, .x = xin, .q = xq, .s = sx, .M = rows, .K = k, .packed = 1};
    run(qj, rows * k >= 16384 ? threads : 1);
    job_t gj = {.kind = 0, .xq = xq, .sx = sx, .M = rows, .K = k, .w = (const int8_t *)w,
                .sw = (const float *)sw, .xo = xo, .wo = (const float *)wo, .y = (float *)y, .N = n};
    run(gj, threads);
    Py_END_ALLOW_THREADS
    free(xq);
    free(sx);
    free(xz);
    free(xo);
    Py_RETURN_NONE;
}

/* isa() -> "avx512vnni" or "avx2", the instructions products use; isa("avx2") holds them to
 * AVX2 (an AVX2-only CPU imitated: the same integers, so the same results) */
static PyObject *py_isa(PyObject *self, PyObject *args) {
    const char *hold = NULL;
    if (!PyArg_ParseTuple(args, "|s", &hold)) return NULL;
    if (hold != NULL && strcmp(hold, "avx2") == 0)
        use_vnni = 0;
    else if (hold != NULL && strcmp(hold, "best") == 0)
        use_vnni = vnni_here();
    else if (hold != NULL) {
        PyErr_SetString(PyExc_ValueError, "isa: 'avx2' or 'best'");
        return NULL;
    }
    return PyUnicode_FromString(use_vnni ? "avx512vnni" : "avx2");
}

static PyMethodDef methods[] = {
    {"isa", py_isa, METH_VARARGS, "the instructions the products use; 'avx2' holds them there"},
    {"quantize", py_quantize, METH_VARARGS, "rows of float32 -> int8 blocks of 32 and their scales"},
    {"linear", py_linear, METH_VARARGS, "x @ W^T for a weight held in int8 blocks of 32"},
    {"dequantize", py_dequantize, METH_VARARGS, "int8 blocks of 32 and their scales -> float32"},
    {"round_trip", py_round_trip, METH_VARARGS, "float32 rows rounded to their blocks and back"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_q8", NULL, -1, methods};

/* A forked child has none of the parent's workers, and a lock one of them held stays held:
 * start again from none. */
static void after_fork_in_child(void) {
    workers = 0;
    pthread_mutex_init(&busy, NULL);
    pthread_mutex_init(&wake_mu, NULL);
    pthread_cond_init(&wake, NULL);
}

PyMODINIT_FUNC PyInit__q8(void) {
    use_vnni = vnni_here();
    pthread_atfork(NULL, NULL, after_fork_in_child);
    return PyModule_Create(&module);
}
