/* CPU kernels for CBAM-type gates: y = x * gc[b, c] * gs[b, p], with gc from average and max pooling over
 * positions and gs from the mean and max over channels of x * gc. Each kernel is one pass over the
 * (B, C, P = H * W) map, per sample, samples split over OpenMP threads (the libgomp that torch itself
 * loaded: the soname is the same, so the dynamic linker reuses it and its thread pool).
 *
 * Layout: cl == 0 is NCHW (element (c, p) of a sample at c * P + p), cl == 1 is channels_last (p * C + c).
 * Optional factors are NULL: gc == NULL means 1 (a spatial gate alone), gs == NULL means 1 and no spatial
 * pooling terms in backward (a channel gate alone).
 *
 * Written for attnzoo from the CBAM paper's equations (Woo et al., ECCV 2018) and the gradient of
 * its pooling as PyTorch defines it: the mean's gradient is spread evenly; the max over positions
 * (adaptive_max_pool2d) sends it to one position (here the first maximum, or the first NaN);
 * the max over channels (amax) splits it evenly among the channels that tie for the maximum.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SAMPLES _Pragma("omp parallel for num_threads(nt) schedule(static)") for (int64_t b = 0; b < B; b++)

int attnzoo_native_abi(void) { return 23; }

#define LANES 16
#define INLINE static inline __attribute__((always_inline))

/* e^x for x <= 0 (or NaN) in plain C that the compiler vectorises (a libm expf call per element does not
 * vectorise without -ffast-math): x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n by the
 * exponent bits. The split of ln2 and the coefficients are Cephes' expf (S. L. Moshier, Cephes Math
 * Library); relative error about 2e-7. n is rounded by adding and subtracting 1.5 * 2^23, which leaves n in
 * the low bits of the sum. Below -87.34 (e^x < 2^-126, the smallest normal float) the result is 0, so
 * -inf gives 0; NaN stays NaN (every compare with it is false). */
INLINE float exp_nonpositive(float x) {
    const float xc = x < -87.33654475f ? -87.33654475f : x;
    const float magic = 12582912.f;
    const float nm = xc * 1.44269504088896341f + magic;
    const float n = nm - magic;
    union { float f; int32_t i; } ni = { .f = nm };
    const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    union { int32_t i; float f; } scale = { .i = (ni.i - 0x4b400000 + 127) << 23 };  /* 2^n */
    const float e = p * scale.f;
    return x <= -87.33654475f ? 0.f : e;
}

/* 1 / (1 + e^-z) from t = e^-|z| in (0, 1]: 1 / (1 + t) for z >= 0, t / (1 + t) below. Nothing overflows,
 * so there is no inf to clamp, and it runs about 1.6x the speed of 1 / (1 + e^-z) with a clamped e^x
 * (measured per element in a vectorised loop on Zen 4). Relative error about 2e-7 where the result is a
 * normal float; below z = -87.34 it is 0 (the true value is under 6e-39); sigmoid(+-inf) = 1 and 0. */
INLINE float sigmoid_approx(float z) {
    const float t = exp_nonpositive(-fabsf(z));
    const float s = 1.f / (1.f + t);
    return z >= 0.f ? s : t * s;
}

/* The sum of LANES lanes as a tree (8 + 4 + 2 + 1 pairs): four dependent steps where a running sum takes
 * sixteen; the order is fixed here, so results do not depend on the compiler. For one sum at a time (the
 * small convolutions' weight gradient); many positions at once go through reduce16_sum below. */
INLINE float tree_sum(const float *v) {
    float a[8], b[4];
    for (int j = 0; j < 8; j++) a[j] = v[j] + v[j + 8];
    for (int j = 0; j < 4; j++) b[j] = a[j] + a[j + 4];
    return (b[0] + b[2]) + (b[1] + b[3]);
}


/* 16 floats as one value (GCC/Clang vector extensions; lowered to narrower vectors where the CPU has none
 * that wide). Loads and stores through memcpy: no alignment assumed. */
typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec16 __attribute__((vector_size(64)));

INLINE vec16 load16(const float *p) { vec16 v; memcpy(&v, p, sizeof v); return v; }
INLINE void store16(float *p, vec16 v) { memcpy(p, &v, sizeof v); }
INLINE vec16 vmax16(vec16 a, vec16 b) {  /* a > b ? a : b lane-wise, as a bit select (C has no vector ?:) */
    const ivec16 m = a > b;
    return (vec16)(((ivec16)a & m) | ((ivec16)b & ~m));
}

INLINE vec16 vsel16(ivec16 m, vec16 a, vec16 b) {  /* m ? a : b lane-wise */
    return (vec16)(((ivec16)a & m) | ((ivec16)b & ~m));
}
INLINE vec16 splat16(float v) { return (vec16){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}; }

/* sigmoid_approx on 16 lanes at once, the same operations in the same order (so the same results). */
INLINE vec16 sigmoid16(vec16 z) {
    const vec16 x = (vec16)(((ivec16)z & 0x7fffffff) ^ (int32_t)0x80000000);  /* -|z| */
    const vec16 lo = splat16(-87.33654475f), magic = splat16(12582912.f);
    const vec16 xc = vsel16(x < lo, lo, x);
    const vec16 nm = xc * 1.44269504088896341f + magic;
    const vec16 n = nm - magic;
    const vec16 r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    vec16 p = splat16(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const vec16 scale = (vec16)((((ivec16)nm - 0x4b400000) + 127) << 23);
    const vec16 t = vsel16(x <= lo, splat16(0.f), p * scale);
    const vec16 s = 1.f / (1.f + t);
    return vsel16(z >= 0.f, s, t * s);
}

#if defined(__clang__)
#define SHUFFLE16(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE16(a, b, ...) __builtin_shuffle(a, b, (ivec16){__VA_ARGS__})
#endif

/* One reduction step of the transposing tree: from vectors a, b each holding n groups of w lanes, the sums
 * (or maxima) of the two halves of every group, a's groups then b's, in groups of w / 2. */
#define HALVES(op, a, b, lo, hi) op(SHUFFLE16(a, b, lo), SHUFFLE16(a, b, hi))
#define ADD16(x, y) ((x) + (y))
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO4 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define HI4 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define LO2 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define HI2 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#define LO1 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define HI1 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31

/* Lane k of the result = the sum (reduce16_sum) or the maximum (reduce16_max) of the 16 lanes of v[k]:
 * sixteen horizontal reductions in 15 shuffle pairs, where one at a time costs a chain of steps each.
 * Where a row of C channels is one or two vectors (channels_last, C = 16 or 32), reducing each position
 * on its own cost more than the whole pass over the row. v is overwritten. */
#define REDUCE16(name, op)                                                                              \
    INLINE vec16 name(vec16 *v) {                                                                       \
        for (int k = 0; k < 8; k++) v[k] = HALVES(op, v[2 * k], v[2 * k + 1], LO8, HI8);                \
        for (int k = 0; k < 4; k++) v[k] = HALVES(op, v[2 * k], v[2 * k + 1], LO4, HI4);                \
        for (int k = 0; k < 2; k++) v[k] = HALVES(op, v[2 * k], v[2 * k + 1], LO2, HI2);                \
        return HALVES(op, v[0], v[1], LO1, HI1);                                                        \
    }
REDUCE16(reduce16_sum, ADD16)
REDUCE16(reduce16_max, vmax16)

/* Channels_last means over positions of the channels [c0, c0 + LANES) (C a multiple of LANES), of
 * v = sc[c] x (cl_chunk_sum_by; sc NULL: v = x) or of (v - m)^2 (cl_chunk_sqdev_by). The accumulators are
 * doubles in registers, over alternate rows: one row of C = 16 channels is a single vector, a sum kept in memory would wait on a
 * store every row, and a float32 running sum over hundreds of positions would lose several bits of the
 * mean -- which (x - mean) in the variance's gradient then magnifies where the spread is small. */
INLINE void cl_chunk_sum_by(const float *restrict xb, int64_t C, int64_t P, int64_t c0, const float *restrict sc,
                            float *restrict out) {
    float sv[LANES];
    double s0[LANES], s1[LANES];
    for (int64_t j = 0; j < LANES; j++) { s0[j] = 0.; s1[j] = 0.; sv[j] = sc ? sc[c0 + j] : 1.f; }
    int64_t p = 0;
    for (; p + 1 < P; p += 2) {
        const float *restrict r0 = xb + p * C + c0, *restrict r1 = r0 + C;
#pragma omp simd
        for (int64_t j = 0; j < LANES; j++) {
            s0[j] += (double)(sc ? sv[j] * r0[j] : r0[j]); s1[j] += (double)(sc ? sv[j] * r1[j] : r1[j]);
        }
    }
    if (p < P)
        for (int64_t j = 0; j < LANES; j++) s0[j] += (double)(sc ? sv[j] * xb[p * C + c0 + j] : xb[p * C + c0 + j]);
    for (int64_t j = 0; j < LANES; j++) out[c0 + j] = (float)((s0[j] + s1[j]) / (double)P);
}

INLINE void cl_chunk_sqdev_by(const float *restrict xb, int64_t C, int64_t P, int64_t c0, const float *restrict sc,
                              const float *restrict m, float *restrict out) {
    float mv[LANES], sv[LANES];
    double s0[LANES], s1[LANES];
    for (int64_t j = 0; j < LANES; j++) { s0[j] = 0.; s1[j] = 0.; mv[j] = m[c0 + j]; sv[j] = sc ? sc[c0 + j] : 1.f; }
    int64_t p = 0;
    for (; p + 1 < P; p += 2) {
        const float *restrict r0 = xb + p * C + c0, *restrict r1 = r0 + C;
#pragma omp simd
        for (int64_t j = 0; j < LANES; j++) {
            const float d0 = (sc ? sv[j] * r0[j] : r0[j]) - mv[j], d1 = (sc ? sv[j] * r1[j] : r1[j]) - mv[j];
            s0[j] += (double)(d0 * d0); s1[j] += (double)(d1 * d1);
        }
    }
    if (p < P)
        for (int64_t j = 0; j < LANES; j++) {
            const float d = (sc ? sv[j] * xb[p * C + c0 + j] : xb[p * C + c0 + j]) - mv[j];
            s0[j] += (double)(d * d);
        }
    for (int64_t j = 0; j < LANES; j++) out[c0 + j] = (float)((s0[j] + s1[j]) / (double)P);
}

/* The two above of x itself (sc NULL: the scale folds away where they inline). */
INLINE void cl_chunk_sum(const float *restrict xb, int64_t C, int64_t P, int64_t c0, float *restrict out) {
    cl_chunk_sum_by(xb, C, P, c0, NULL, out);
}

INLINE void cl_chunk_sqdev(const float *restrict xb, int64_t C, int64_t P, int64_t c0, const float *restrict m,
                           float *restrict out) {
    cl_chunk_sqdev_by(xb, C, P, c0, NULL, m, out);
}


/* Channels_last pooling over positions of the channels [c0, c0 + L), L <= LANES: called with L == LANES
 * (a constant after inlining: the accumulators live in registers) and once for the remainder. */
INLINE void cl_channel_pool(const float *xb, int64_t C, int64_t P, int64_t c0, int64_t L, float *av, float *mx,
                            int32_t *arg) {
    float s[LANES], m[LANES];
    int32_t a[LANES], nan[LANES];
    for (int64_t k = 0; k < L; k++) { s[k] = 0.f; m[k] = -INFINITY; a[k] = 0; nan[k] = 0; }
    for (int64_t p = 0; p < P; p++) {
        const float *r = xb + p * C + c0;
        for (int64_t k = 0; k < L; k++) {
            const float v = r[k];
            const int gt = v > m[k];
            s[k] += v;
            m[k] = gt ? v : m[k];
            a[k] = gt ? (int32_t)p : a[k];  /* strictly greater: the first maximum */
            nan[k] |= v != v;
        }
    }
    for (int64_t k = 0; k < L; k++) {
        av[c0 + k] = s[k] / (float)P; mx[c0 + k] = m[k]; arg[c0 + k] = a[k];
        if (nan[k]) {  /* NaN is the maximum; its first position */
            int64_t p = 0;
            while (xb[p * C + c0 + k] == xb[p * C + c0 + k]) p++;
            mx[c0 + k] = NAN; arg[c0 + k] = (int32_t)p;
        }
    }
}

/* cl_channel_pool for one whole vector of channels (vec16): the sum, the maximum and its first position as
 * lane-wise selects, and NaN flags; a lane that saw a NaN is rescanned as in cl_channel_pool. */
INLINE void cl_channel_pool16(const float *xb, int64_t C, int64_t P, int64_t c0, float *av, float *mx, int32_t *arg) {
    const vec16 zero = {0};
    const ivec16 izero = {0};
    /* two chains, even and odd positions, so that consecutive adds and selects do not wait on each other */
    vec16 s = zero, s1 = zero, m = zero - INFINITY, m1 = zero - INFINITY;
    ivec16 a = izero, a1 = izero, nan = izero;
    int64_t p = 0;
    for (; p + 1 < P; p += 2) {
        const vec16 v = load16(xb + p * C + c0), w = load16(xb + (p + 1) * C + c0);
        const ivec16 gt = v > m, gt1 = w > m1;  /* strictly greater: the first maximum of each chain */
        s += v; s1 += w;
        m = (vec16)(((ivec16)v & gt) | ((ivec16)m & ~gt));
        m1 = (vec16)(((ivec16)w & gt1) | ((ivec16)m1 & ~gt1));
        a = ((izero + (int32_t)p) & gt) | (a & ~gt);
        a1 = ((izero + (int32_t)(p + 1)) & gt1) | (a1 & ~gt1);
        nan |= (v != v) | (w != w);
    }
    if (p < P) {
        const vec16 v = load16(xb + p * C + c0);
        const ivec16 gt = v > m;
        s += v;
        m = (vec16)(((ivec16)v & gt) | ((ivec16)m & ~gt));
        a = ((izero + (int32_t)p) & gt) | (a & ~gt);
        nan |= v != v;
    }
    /* the odd chain wins where it is greater, or equal at an earlier position */
    const ivec16 take = (m1 > m) | ((m1 == m) & (a1 < a));
    m = (vec16)(((ivec16)m1 & take) | ((ivec16)m & ~take));
    a = (a1 & take) | (a & ~take);
    s += s1;
    float sl[16], ml[16];
    int32_t al[16], nl[16];
    store16(sl, s); store16(ml, m);
    memcpy(al, &a, sizeof al); memcpy(nl, &nan, sizeof nl);
    for (int64_t k = 0; k < LANES; k++) {
        av[c0 + k] = sl[k] / (float)P; mx[c0 + k] = ml[k]; arg[c0 + k] = al[k];
        if (nl[k]) {  /* NaN is the maximum; its first position */
            int64_t q = 0;
            while (xb[q * C + c0 + k] == xb[q * C + c0 + k]) q++;
            mx[c0 + k] = NAN; arg[c0 + k] = (int32_t)q;
        }
    }
}

/* avg[b, c] = mean_p x; mx[b, c] = max_p x; arg[b, c] = its first position (the first NaN if any). */
void channel_pool(const float *x, int64_t B, int64_t C, int64_t P, int cl, int nt,
                  float *avg, float *mx, int32_t *arg) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *av = avg + b * C, *m = mx + b * C;
        int32_t *a = arg + b * C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float s = 0.f, mv = -INFINITY;
#pragma omp simd reduction(+ : s) reduction(max : mv)
                for (int64_t p = 0; p < P; p++) { s += r[p]; mv = r[p] > mv ? r[p] : mv; }
                int64_t ai = 0;
                if (s != s) {  /* a NaN (or inf - inf): look for a NaN, the maximum if there is one */
                    while (ai < P && r[ai] == r[ai]) ai++;
                    if (ai < P) mv = NAN;
                    else ai = 0;
                }
                if (mv == mv) while (r[ai] != mv) ai++;
                av[c] = s / (float)P; m[c] = mv; a[c] = (int32_t)ai;
            }
        } else {
            int64_t c0 = 0;
            for (; c0 + LANES <= C; c0 += LANES) cl_channel_pool16(xb, C, P, c0, av, m, a);
            if (c0 < C) cl_channel_pool(xb, C, P, c0, C - c0, av, m, a);
        }
    }
}

/* Whether some r[k * step] * g[k], k < n, is NaN (checked only where a sum came out NaN). */
static int any_nan(const float *r, const float *g, int64_t n, int64_t step) {
    for (int64_t k = 0; k < n; k++) if (r[k * step] * g[k] != r[k * step] * g[k]) return 1;
    return 0;
}

/* Over v = x * gc: mean[b, p] = mean_c v; mx[b, p] = max_c v (NaN if any is). */
void spatial_pool(const float *x, const float *gc, int64_t B, int64_t C, int64_t P, int cl, int nt,
                  float *mean, float *mx) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *me = mean + b * P, *m = mx + b * P;
        float *g = malloc(sizeof(float) * C);
        for (int64_t c = 0; c < C; c++) g[c] = gc ? gc[b * C + c] : 1.f;
        if (cl && C % LANES == 0) {  /* lane-wise partial sums and maxima, 16 positions reduced at once */
            for (int64_t p0 = 0; p0 < P; p0 += 16) {
                const int64_t np = P - p0 < 16 ? P - p0 : 16;
                vec16 S[16], M[16];
                for (int64_t k = 0; k < 16; k++) {
                    if (k >= np) { const vec16 z = {0}; S[k] = z; M[k] = z; continue; }
                    const float *r = xb + (p0 + k) * C;
                    vec16 v = load16(r) * load16(g);
                    S[k] = v; M[k] = v;
                    for (int64_t c0 = LANES; c0 < C; c0 += LANES) {
                        v = load16(r + c0) * load16(g + c0);
                        S[k] += v; M[k] = vmax16(M[k], v);
                    }
                }
                float sa[16], ma[16];
                store16(sa, reduce16_sum(S)); store16(ma, reduce16_max(M));
                for (int64_t k = 0; k < np; k++) {
                    float mv = ma[k];
                    if (sa[k] != sa[k] && any_nan(xb + (p0 + k) * C, g, C, 1)) mv = NAN;
                    me[p0 + k] = sa[k] / (float)C; m[p0 + k] = mv;
                }
            }
        } else if (cl) {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float s = 0.f, mv = -INFINITY;
#pragma omp simd reduction(+ : s) reduction(max : mv)
                for (int64_t c = 0; c < C; c++) {
                    const float v = r[c] * g[c];
                    s += v; mv = v > mv ? v : mv;
                }
                if (s != s && any_nan(r, g, C, 1)) mv = NAN;
                me[p] = s / (float)C; m[p] = mv;
            }
        } else {
            for (int64_t p = 0; p < P; p++) { me[p] = 0.f; m[p] = -INFINITY; }
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                const float gv = g[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float v = r[p] * gv;
                    me[p] += v;
                    m[p] = v > m[p] ? v : m[p];
                }
            }
            for (int64_t p = 0; p < P; p++) {
                if (me[p] != me[p] && any_nan(xb + p, g, C, P)) m[p] = NAN;
                me[p] /= (float)C;
            }
        }
        free(g);
    }
}

/* y = (x * gc) * gs, in the order of the PyTorch expression x1 = x * gc; y = x1 * gs. */
void apply_gates(const float *x, const float *gc, const float *gs, int64_t B, int64_t C, int64_t P, int cl,
                 int nt, float *y) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *yb = y + b * C * P;
        float *g = malloc(sizeof(float) * C), *s = malloc(sizeof(float) * P);
        for (int64_t c = 0; c < C; c++) g[c] = gc ? gc[b * C + c] : 1.f;
        for (int64_t p = 0; p < P; p++) s[p] = gs ? gs[b * P + p] : 1.f;
        if (cl) {
            const float *restrict G = g;
            for (int64_t p = 0; p < P; p++) {
                const float *restrict r = xb + p * C;
                float *restrict o = yb + p * C;
                const float sv = s[p];
                if (C % LANES == 0) {  /* whole vectors per row (see cl_chunk_sum) */
                    for (int64_t c0 = 0; c0 < C; c0 += LANES)
#pragma omp simd
                        for (int64_t j = 0; j < LANES; j++) o[c0 + j] = (r[c0 + j] * G[c0 + j]) * sv;
                    continue;
                }
                for (int64_t c = 0; c < C; c++) o[c] = (r[c] * G[c]) * sv;
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + c * P;
                const float gv = g[c];
                for (int64_t p = 0; p < P; p++) o[p] = (r[p] * gv) * s[p];
            }
        }
        free(g); free(s);
    }
}

/* dgs[b, p] = sum_c dy * (x * gc): the gradient of the spatial factor; and cnt[b, p] = #{c : x * gc == smax},
 * the channels tying for the maximum (the max's gradient is split among them). */
void grad_spatial_factor(const float *x, const float *gc, const float *dy, const float *smax, int64_t B, int64_t C,
                         int64_t P, int cl, int nt, float *dgs, float *cnt) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *sm = smax + b * P;
        float *o = dgs + b * P, *n = cnt + b * P;
        float *g = malloc(sizeof(float) * C);
        for (int64_t c = 0; c < C; c++) g[c] = gc ? gc[b * C + c] : 1.f;
        if (cl && C % LANES == 0) {  /* 16 positions reduced at once (reduce16_sum) */
            const vec16 one = {0};
            for (int64_t p0 = 0; p0 < P; p0 += 16) {
                const int64_t np = P - p0 < 16 ? P - p0 : 16;
                vec16 S[16], K[16];
                for (int64_t q = 0; q < 16; q++) {
                    const vec16 z = {0};
                    S[q] = z; K[q] = z;
                    if (q >= np) continue;
                    const float *r = xb + (p0 + q) * C, *d = db + (p0 + q) * C;
                    const vec16 mv = one + sm[p0 + q];
                    for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                        const vec16 v = load16(r + c0) * load16(g + c0);
                        S[q] += load16(d + c0) * v;
                        K[q] += (vec16)((ivec16)(one + 1.f) & (v == mv));  /* 1 where tied with the maximum */
                    }
                }
                float sa[16], ka[16];
                store16(sa, reduce16_sum(S)); store16(ka, reduce16_sum(K));
                for (int64_t q = 0; q < np; q++) { o[p0 + q] = sa[q]; n[p0 + q] = ka[q]; }
            }
        } else if (cl) {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                const float mv = sm[p];
                float s = 0.f, k = 0.f;
#pragma omp simd reduction(+ : s, k)
                for (int64_t c = 0; c < C; c++) {
                    const float v = r[c] * g[c];
                    s += d[c] * v;
                    k += v == mv ? 1.f : 0.f;
                }
                o[p] = s; n[p] = k;
            }
        } else {
            for (int64_t p = 0; p < P; p++) { o[p] = 0.f; n[p] = 0.f; }
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                const float gv = g[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float v = r[p] * gv;
                    o[p] += d[p] * v;
                    n[p] += v == sm[p] ? 1.f : 0.f;
                }
            }
        }
        free(g);
    }
}

/* Per-position terms of dL/d(x * gc): dx1 = dy * gs + dmean / C + [x * gc == smax] * dsmax / scnt.
 * With gs == NULL (no spatial gate) dx1 = dy. Fills the per-sample arrays s (gs), a (dmean / C), q. */
static void position_terms(const float *gs, const float *dmean, const float *dsmax, const float *scnt,
                           int64_t b, int64_t C, int64_t P, float *s, float *a, float *q) {
    for (int64_t p = 0; p < P; p++) {
        s[p] = gs ? gs[b * P + p] : 1.f;
        a[p] = gs ? dmean[b * P + p] / (float)C : 0.f;
        q[p] = gs ? dsmax[b * P + p] / scnt[b * P + p] : 0.f;
    }
}

/* dgc[b, c] = sum_p x * dx1: the gradient of the channel factor. */
void grad_channel_factor(const float *x, const float *gc, const float *gs, const float *dy, const float *dmean,
                         const float *dsmax, const float *smax, const float *scnt, int64_t B, int64_t C,
                         int64_t P, int cl, int nt, float *dgc) {
    const float big = INFINITY;
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P;
        float *o = dgc + b * C;
        float *g = malloc(sizeof(float) * C), *s = malloc(sizeof(float) * P * 4);
        float *a = s + P, *q = s + 2 * P, *sm = s + 3 * P;
        for (int64_t c = 0; c < C; c++) g[c] = gc ? gc[b * C + c] : 1.f;
        position_terms(gs, dmean, dsmax, scnt, b, C, P, s, a, q);
        for (int64_t p = 0; p < P; p++) sm[p] = gs ? smax[b * P + p] : big;  /* +inf: no tie term */
        if (cl && C % LANES == 0) {  /* double accumulators in registers, chunk by chunk (see cl_chunk_sum) */
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                double acc[LANES];
                float gv[LANES];
                for (int64_t j = 0; j < LANES; j++) { acc[j] = 0.; gv[j] = g[c0 + j]; }
                for (int64_t p = 0; p < P; p++) {
                    const float *restrict r = xb + p * C + c0, *restrict d = db + p * C + c0;
                    const float sv = s[p], av = a[p], qv = q[p], mv = sm[p];
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) {
                        const float d1 = d[j] * sv + av + ((r[j] * gv[j] == mv) ? qv : 0.f);
                        acc[j] += (double)(r[j] * d1);
                    }
                }
                for (int64_t j = 0; j < LANES; j++) o[c0 + j] = (float)acc[j];
            }
        } else if (cl) {
            for (int64_t c = 0; c < C; c++) o[c] = 0.f;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                const float sv = s[p], av = a[p], qv = q[p], mv = sm[p];
                for (int64_t c = 0; c < C; c++) {
                    float d1 = d[c] * sv + av + ((r[c] * g[c] == mv) ? qv : 0.f);
                    o[c] += r[c] * d1;
                }
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                const float gv = g[c];
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t p = 0; p < P; p++) {
                    float d1 = d[p] * s[p] + a[p] + ((r[p] * gv == sm[p]) ? q[p] : 0.f);
                    acc += r[p] * d1;
                }
                o[c] = acc;
            }
        }
        free(g); free(s);
    }
}

/* dx = dx1 * gc + davg / P + [p == carg] * dcmax: the gradient of the input. With gc == NULL the
 * channel terms are absent (davg, dcmax, carg unused). */
void grad_input(const float *x, const float *gc, const float *gs, const float *dy, const float *dmean,
                const float *dsmax, const float *smax, const float *scnt, const float *davg, const float *dcmax,
                const int32_t *carg, int64_t B, int64_t C, int64_t P, int cl, int nt, float *dx) {
    const float big = INFINITY;
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P;
        float *o = dx + b * C * P;
        float *g = malloc(sizeof(float) * C * 2), *s = malloc(sizeof(float) * P * 4);
        float *e = g + C, *a = s + P, *q = s + 2 * P, *sm = s + 3 * P;
        for (int64_t c = 0; c < C; c++) {
            g[c] = gc ? gc[b * C + c] : 1.f;
            e[c] = gc ? davg[b * C + c] / (float)P : 0.f;
        }
        position_terms(gs, dmean, dsmax, scnt, b, C, P, s, a, q);
        for (int64_t p = 0; p < P; p++) sm[p] = gs ? smax[b * P + p] : big;
        if (cl) {
            const float *restrict G = g, *restrict E = e;
            for (int64_t p = 0; p < P; p++) {
                const float *restrict r = xb + p * C, *restrict d = db + p * C;
                float *restrict w = o + p * C;
                const float sv = s[p], av = a[p], qv = q[p], mv = sm[p];
                if (C % LANES == 0) {  /* whole vectors per row */
                    const vec16 zero = {0}, svv = zero + sv, avv = zero + av, qvv = zero + qv, mvv = zero + mv;
                    for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                        const vec16 gv = load16(G + c0), x1 = load16(r + c0) * gv;
                        const vec16 d1 = load16(d + c0) * svv + avv + (vec16)((ivec16)qvv & (x1 == mvv));
                        store16(w + c0, d1 * gv + load16(E + c0));
                    }
                    continue;
                }
                for (int64_t c = 0; c < C; c++) {
                    const float x1 = r[c] * G[c];
                    float d1 = d[c] * sv + av + ((x1 == mv) ? qv : 0.f);
                    w[c] = d1 * G[c] + E[c];
                }
            }
            if (gc)
                for (int64_t c = 0; c < C; c++) o[(int64_t)carg[b * C + c] * C + c] += dcmax[b * C + c];
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float *w = o + c * P;
                const float gv = g[c], ev = e[c];
                for (int64_t p = 0; p < P; p++) {
                    float d1 = d[p] * s[p] + a[p] + ((r[p] * gv == sm[p]) ? q[p] : 0.f);
                    w[p] = d1 * gv + ev;
                }
                if (gc) w[carg[b * C + c]] += dcmax[b * C + c];
            }
        }
        free(g); free(s);
    }
}

/* Small direct convolutions: x (B, Ci, H, W) NCHW, weight (Co, Ci, kh, kw), stride 1, zero padding (ph, pw),
 * dilation (dh, dw), one group; y (B, Co, Ho, Wo) with Ho = H + 2 ph - dh (kh - 1). For the maps the gates
 * convolve (CBAM's [mean; max] pair into one channel, 7x7): oneDNN spends most of such a call on set-up
 * and layout, while the arithmetic is a few MFLOP.
 *
 * Each sample is copied into a zero-padded buffer (rows of Wp = W + 2 pw). The output is computed in the
 * same row pitch Wp, so that one tap (ci, i, j) reads the padded plane at a fixed offset,
 * out[t] += w * pad[ci][i dh Wp + j dw + t], t < Ho Wp; the Wp - Wo columns past each output row are
 * computed and dropped. Blocks of CONV_TB consecutive t stay in registers over all the taps
 * (conv_block). The gradients use the same flat form (with those columns of dL/dy zero). */
static void pad_sample(const float *x, int64_t Ci, int64_t H, int64_t W, int64_t ph, int64_t pw, float *buf) {
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    memset(buf, 0, sizeof(float) * (Ci * Hp * Wp + Wp));  /* + one row of slack for the flat taps */
    for (int64_t ci = 0; ci < Ci; ci++)
        for (int64_t h = 0; h < H; h++)
            memcpy(buf + (ci * Hp + h + ph) * Wp + pw, x + (ci * H + h) * W, sizeof(float) * W);
}

#define CONV_DIMS int64_t B, int64_t Ci, int64_t Co, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t ph, \
                  int64_t pw, int64_t dh, int64_t dw, int nt
#define CONV_SIZES const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, Ho = Hp - dh * (kh - 1), \
                   Wo = Wp - dw * (kw - 1), N = Ho * Wp, padded = Ci * Hp * Wp + Wp

/* Blocks of CONV_TB outputs kept in four vector registers (vec16) over all the taps, stored once: an axpy
 * per tap over the whole plane loads and stores the output for each of the 2 * 49 taps. */
#define CONV_TB 64

/* out[t0 + u] = init + sum over the taps (k < nk) of wv[k] * src[off[k] + t0 + u], u < CONV_TB. */
INLINE void conv_block(const float *src, const int64_t *off, const float *wv, int64_t nk, int64_t t0, float init,
                       float *out) {
    vec16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    a0 += init; a1 += init; a2 += init; a3 += init;
    for (int64_t k = 0; k < nk; k++) {
        const float *q = src + off[k] + t0;
        const float w = wv[k];
        a0 += w * load16(q); a1 += w * load16(q + 16); a2 += w * load16(q + 32); a3 += w * load16(q + 48);
    }
    store16(out + t0, a0); store16(out + t0 + 16, a1); store16(out + t0 + 32, a2); store16(out + t0 + 48, a3);
}

/* Batch-tiled small convolutions, for maps narrow enough that the row pitch above wastes many lanes (a 7x7
 * map padded to rows of 13 computes 128 outputs per sample for 49: CBAM's and triplet's 7 x 7 stage).
 * CONV_BT samples sit in the 16 lanes of each vector: a tile buffer holds element (ci, r, c) of sample s at
 * ((ci Hs + r) Ws + c) CONV_BT + s, so every tap of every output is one aligned vector load and one
 * multiply-add, for 16 samples at once, and no lane is spent on padding columns. CONV_WB consecutive
 * outputs of a row stay in eight registers over all the taps. Only the last tile of a batch that is not a
 * multiple of 16 carries empty lanes (zeros). The weight gradient keeps kw partial sums (one per column
 * offset) in registers along each row, so each loaded output gradient meets every column of its row. */
#define CONV_BT 16
#define CONV_WB 8

static int conv_path_mode = 0;  /* 0: chosen by conv_path; 1: row pitch; 2: batch tiles (tests, benchmarks) */

void conv_small_set_path(int mode) { conv_path_mode = mode; }

/* The cost of each family in multiply-adds of one lane, per thread (each takes whole samples or tiles). The
 * row-pitch kernels compute ceil(Ho Wp / CONV_TB) CONV_TB outputs per sample and output channel, nk taps
 * each. The tiled ones compute 16 x Ho x ceil(Wo / CONV_WB) CONV_WB per tile and output channel, weighed at
 * 2/3 (aligned loads, each row window loaded once, eight accumulators where the rows have four), and move
 * every element of the tile in and of the output out, about 3.6 multiply-adds each. Fitted to
 * benchmarks/small_conv.py and the 3x3 convs of bam (dilation 4) and ema: with 9-18 taps a tile's
 * transposes cost as much as its arithmetic, and the rows win on 28 x 28 maps. */
static int conv_path(int64_t B, int64_t Ci, int64_t Co, int64_t Hp, int64_t Ho, int64_t Wo, int64_t Wp, int64_t nk,
                     int64_t kw, int64_t dw, int nt) {
    if (conv_path_mode) return conv_path_mode;
    const int64_t row = (B + nt - 1) / nt * Co * ((Ho * Wp + CONV_TB - 1) / CONV_TB * CONV_TB) * nk;
    const int64_t tiles = (B + CONV_BT - 1) / CONV_BT, WoP = (Wo + CONV_WB - 1) / CONV_WB * CONV_WB;
    const int64_t moved = Ci * Hp * (WoP + (kw - 1) * dw) + Co * Ho * WoP;
    const int64_t tiled3 = (tiles + nt - 1) / nt * CONV_BT * (2 * Co * Ho * WoP * nk + 11 * moved);
    return tiled3 < 3 * row ? 2 : 1;
}

void conv_small_path(CONV_DIMS, int32_t *path) {
    CONV_SIZES;
    (void)N; (void)padded;
    *path = conv_path(B, Ci, Co, Hp, Ho, Wo, Wp, Ci * kh * kw, kw, dw, nt);
}

/* Samples b0 .. b0 + n - 1 of src (B, Ch, Hi, Wi) into a zeroed tile (Ch, Hs, Ws, CONV_BT), element (r, c)
 * at (r + r0, c + c0); rows and columns that fall outside the tile are left out. */
static void tile_in(const float *src, int64_t b0, int64_t n, int64_t Ch, int64_t Hi, int64_t Wi, int64_t Hs,
                    int64_t Ws, int64_t r0, int64_t c0, float *tile) {
    memset(tile, 0, sizeof(float) * Ch * Hs * Ws * CONV_BT);
    const int64_t c_lo = c0 < 0 ? -c0 : 0, c_hi = Wi < Ws - c0 ? Wi : Ws - c0, plane = Ch * Hi * Wi;
    for (int64_t ch = 0; ch < Ch; ch++)
        for (int64_t r = 0; r < Hi; r++) {
            const int64_t rt = r + r0;
            if (rt < 0 || rt >= Hs) continue;
            const float *q = src + ((b0 * Ch + ch) * Hi + r) * Wi;
            float *t = tile + (ch * Hs + rt) * Ws * CONV_BT;
            for (int64_t c = c_lo; c < c_hi; c++) {  /* one vector of the tile from n sample rows */
                float *v = t + (c + c0) * CONV_BT;
                for (int64_t s = 0; s < n; s++) v[s] = q[s * plane + c];
            }
        }
}

/* out (Co, Ho, WoP, CONV_BT) = the correlation of the tile (Ci, Hs, Ws, CONV_BT) with wt (Co, Ci, kh, kw)
 * plus bias (or 0); WoP a multiple of CONV_WB, Ws >= WoP + (kw - 1) dw, Hs >= Ho + (kh - 1) dh. */
/* a[u] += sum_j wr[j] * row[(u + j dw) CONV_BT], u < CONV_WB, j < KW. Where KW is a constant (inlined) and
 * dw = 1, the CONV_WB + KW - 1 vectors of the row window are loaded once each and every tap multiplies
 * registers; otherwise each multiply-add loads its vector. */
INLINE void corr_row(const float *row, const float *wr, int64_t kw, int64_t dw, const int KW, vec16 *a) {
    if (KW && dw == 1) {
        vec16 v[CONV_WB + 8];
        for (int u = 0; u < CONV_WB + KW - 1; u++) v[u] = load16(row + u * CONV_BT);
        for (int j = 0; j < KW; j++) {
            const float wj = wr[j];
            for (int u = 0; u < CONV_WB; u++) a[u] += wj * v[u + j];
        }
        return;
    }
    for (int64_t j = 0; j < kw; j++) {
        const float *q = row + j * dw * CONV_BT;
        const float wj = wr[j];
        for (int u = 0; u < CONV_WB; u++) a[u] += wj * load16(q + u * CONV_BT);
    }
}

static void corr_tile(const float *tile, int64_t Ci, int64_t Hs, int64_t Ws, const float *wt, const float *bias,
                      int64_t Co, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t Ho, int64_t WoP, float *out) {
    for (int64_t co = 0; co < Co; co++) {
        const float bv = bias ? bias[co] : 0.f;
        for (int64_t ho = 0; ho < Ho; ho++)
            for (int64_t w0 = 0; w0 < WoP; w0 += CONV_WB) {
                vec16 a[CONV_WB];
                for (int u = 0; u < CONV_WB; u++) a[u] = splat16(bv);
                for (int64_t ci = 0; ci < Ci; ci++)
                    for (int64_t i = 0; i < kh; i++) {
                        const float *row = tile + ((ci * Hs + ho + i * dh) * Ws + w0) * CONV_BT;
                        const float *wr = wt + ((co * Ci + ci) * kh + i) * kw;
                        switch (kw) {
                        case 7: corr_row(row, wr, kw, dw, 7, a); break;
                        case 5: corr_row(row, wr, kw, dw, 5, a); break;
                        case 3: corr_row(row, wr, kw, dw, 3, a); break;
                        default: corr_row(row, wr, kw, dw, 0, a);
                        }
                    }
                float *o = out + ((co * Ho + ho) * WoP + w0) * CONV_BT;
                for (int u = 0; u < CONV_WB; u++) store16(o + u * CONV_BT, a[u]);
            }
    }
}

/* dst (B, Ch, Ho, Wo) samples b0 .. b0 + n - 1 from out (Ch, Ho, WoP, CONV_BT). */
static void tile_out(const float *out, int64_t b0, int64_t n, int64_t Ch, int64_t Ho, int64_t Wo, int64_t WoP,
                     float *dst) {
    const int64_t plane = Ch * Ho * Wo;
    for (int64_t ch = 0; ch < Ch; ch++)
        for (int64_t r = 0; r < Ho; r++) {
            const float *t = out + (ch * Ho + r) * WoP * CONV_BT;
            float *d = dst + ((b0 * Ch + ch) * Ho + r) * Wo;
            for (int64_t c = 0; c < Wo; c++)
                for (int64_t s = 0; s < n; s++) d[s * plane + c] = t[c * CONV_BT + s];
        }
}

#define TILES _Pragma("omp parallel for num_threads(nt) schedule(static)") \
    for (int64_t b0 = 0; b0 < B; b0 += CONV_BT)
#define TILE_N const int64_t n = B - b0 < CONV_BT ? B - b0 : CONV_BT
#define ROUND_WB(v) (((v) + CONV_WB - 1) / CONV_WB * CONV_WB)

static float *tile_alloc(int64_t floats) {  /* 64-byte aligned, a whole number of vectors */
    return aligned_alloc(64, sizeof(float) * ((floats + 15) / 16 * 16));
}

/* dst (B, Cout, Ho, Wo) = the correlation with wt (Cout, Cin, kh, kw) (+ bias) of src (B, Cin, Hi, Wi) placed at
 * (r0, c0) in zero-padded tiles of Hs = Ho + (kh - 1) dh rows, tile by tile. */
static void conv_tiled_run(const float *src, int64_t B, int64_t Cin, int64_t Hi, int64_t Wi, int64_t r0, int64_t c0,
                           const float *wt, const float *bias, int64_t Cout, int64_t kh, int64_t kw, int64_t dh,
                           int64_t dw, int64_t Ho, int64_t Wo, int nt, float *dst) {
    const int64_t WoP = ROUND_WB(Wo), Hs = Ho + (kh - 1) * dh, Ws = WoP + (kw - 1) * dw;
    TILES {
        TILE_N;
        float *tile = tile_alloc(Cin * Hs * Ws * CONV_BT), *out = tile_alloc(Cout * Ho * WoP * CONV_BT);
        tile_in(src, b0, n, Cin, Hi, Wi, Hs, Ws, r0, c0, tile);
        corr_tile(tile, Cin, Hs, Ws, wt, bias, Cout, kh, kw, dh, dw, Ho, WoP, out);
        tile_out(out, b0, n, Cout, Ho, Wo, WoP, dst);
        free(tile); free(out);
    }
}

static void conv_tiled_forward(const float *x, const float *wt, const float *bias, CONV_DIMS, float *y) {
    CONV_SIZES;
    (void)N; (void)padded; (void)Wp; (void)Hp;
    conv_tiled_run(x, B, Ci, H, W, ph, pw, wt, bias, Co, kh, kw, dh, dw, Ho, Wo, nt, y);
}

/* dL/dx is the correlation of dL/dy, shifted by (kh - 1) dh - ph rows and (kw - 1) dw - pw columns, with
 * the kernel flipped and its channel axes swapped: dx[ci, h, w] = sum wf[ci, co, i, j] g[co, h + i dh, w + j dw],
 * wf[ci, co, i, j] = w[co, ci, kh - 1 - i, kw - 1 - j]. */
static void conv_tiled_grad_input(const float *dy, const float *wt, CONV_DIMS, float *dx) {
    CONV_SIZES;
    (void)N; (void)padded; (void)Wp; (void)Hp;
    const int64_t nk = kh * kw;
    float *wf = malloc(sizeof(float) * Ci * Co * nk);
    for (int64_t co = 0; co < Co; co++)
        for (int64_t ci = 0; ci < Ci; ci++)
            for (int64_t k = 0; k < nk; k++) wf[(ci * Co + co) * nk + k] = wt[(co * Ci + ci) * nk + nk - 1 - k];
    conv_tiled_run(dy, B, Co, Ho, Wo, (kh - 1) * dh - ph, (kw - 1) * dw - pw, wf, NULL, Ci, kh, kw, dh, dw, H, W, nt, dx);
    free(wf);
}

/* acc[j] += sum over the row's outputs wo < WoP of d[wo] * x[wo + j dw], j < KW (a constant where inlined, so
 * the partial sums stay in registers). d is zero past the last output. With dw = 1, each block of CONV_WB
 * outputs loads its CONV_WB gradients and CONV_WB + KW - 1 inputs once. */
INLINE void gw_row(const float *d, const float *x, int64_t WoP, int64_t dw, const int KW, vec16 *acc) {
    vec16 a[8];
    for (int j = 0; j < KW; j++) a[j] = splat16(0.f);
    if (dw == 1)
        for (int64_t w0 = 0; w0 < WoP; w0 += CONV_WB) {
            vec16 g[CONV_WB], v[CONV_WB + 7];
            for (int u = 0; u < CONV_WB; u++) g[u] = load16(d + (w0 + u) * CONV_BT);
            for (int u = 0; u < CONV_WB + KW - 1; u++) v[u] = load16(x + (w0 + u) * CONV_BT);
            for (int u = 0; u < CONV_WB; u++)
                for (int j = 0; j < KW; j++) a[j] += g[u] * v[u + j];
        }
    else
        for (int64_t wo = 0; wo < WoP; wo++) {
            const vec16 g = load16(d + wo * CONV_BT);
            for (int j = 0; j < KW; j++) a[j] += g * load16(x + (wo + j * dw) * CONV_BT);
        }
    for (int j = 0; j < KW; j++) acc[j] += a[j];
}

static void conv_tiled_grad_weight(const float *x, const float *dy, CONV_DIMS, float *dwt) {
    CONV_SIZES;
    (void)N; (void)padded; (void)Wp;
    const int64_t WoP = ROUND_WB(Wo), Hs = Hp, Ws = WoP + (kw - 1) * dw, nw = Co * Ci * kh * kw;
    double *total = calloc(nw, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(nw, sizeof(double));
        vec16 *acc = aligned_alloc(64, sizeof(vec16) * kw);
        float *tile = tile_alloc(Ci * Hs * Ws * CONV_BT), *g = tile_alloc(Co * Ho * WoP * CONV_BT);
#pragma omp for schedule(static)
        for (int64_t b0 = 0; b0 < B; b0 += CONV_BT) {
            TILE_N;
            tile_in(x, b0, n, Ci, H, W, Hs, Ws, ph, pw, tile);
            tile_in(dy, b0, n, Co, Ho, Wo, Ho, WoP, 0, 0, g);  /* zero past Wo */
            for (int64_t co = 0; co < Co; co++)
                for (int64_t ci = 0; ci < Ci; ci++)
                    for (int64_t i = 0; i < kh; i++) {
                        for (int64_t j = 0; j < kw; j++) acc[j] = splat16(0.f);
                        for (int64_t ho = 0; ho < Ho; ho++) {
                            const float *d = g + (co * Ho + ho) * WoP * CONV_BT;
                            const float *r = tile + ((ci * Hs + ho + i * dh) * Ws) * CONV_BT;
                            switch (kw) {
                            case 7: gw_row(d, r, WoP, dw, 7, acc); break;
                            case 5: gw_row(d, r, WoP, dw, 5, acc); break;
                            case 3: gw_row(d, r, WoP, dw, 3, acc); break;
                            case 1: gw_row(d, r, WoP, dw, 1, acc); break;
                            default:
                                for (int64_t j0 = 0; j0 < kw; j0 += 8) {
                                    const int64_t m = kw - j0 < 8 ? kw - j0 : 8;
                                    for (int64_t j = 0; j < m; j++)
                                        for (int64_t wo = 0; wo < WoP; wo++)
                                            acc[j0 + j] += load16(d + wo * CONV_BT) * load16(r + (wo + (j0 + j) * dw) * CONV_BT);
                                }
                            }
                        }
                        for (int64_t j = 0; j < kw; j++) {
                            float l[16];
                            store16(l, acc[j]);
                            part[((co * Ci + ci) * kh + i) * kw + j] += (double)tree_sum(l);
                        }
                    }
        }
#pragma omp critical
        for (int64_t k = 0; k < nw; k++) total[k] += part[k];
        free(part); free(acc); free(tile); free(g);
    }
    for (int64_t k = 0; k < nw; k++) dwt[k] = (float)total[k];
    free(total);
}

void conv_small_forward(const float *x, const float *wt, const float *bias, CONV_DIMS, float *y) {
    CONV_SIZES;
    if (conv_path(B, Ci, Co, Hp, Ho, Wo, Wp, Ci * kh * kw, kw, dw, nt) == 2) { conv_tiled_forward(x, wt, bias, B, Ci, Co, H, W, kh, kw, ph, pw, dh, dw, nt, y); return; }
    const int64_t NB = (N + CONV_TB - 1) / CONV_TB * CONV_TB, nk = Ci * kh * kw;
    int64_t *off = malloc(sizeof(int64_t) * nk);  /* tap (ci, i, j) -> its offset in the padded sample */
    for (int64_t ci = 0; ci < Ci; ci++)
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++) off[(ci * kh + i) * kw + j] = (ci * Hp + i * dh) * Wp + j * dw;
    SAMPLES {
        /* the blocks past N read up to NB - N floats beyond the padded sample: zeros */
        float *buf = malloc(sizeof(float) * (padded + CONV_TB + NB));
        float *acc = buf + padded + CONV_TB;
        pad_sample(x + b * Ci * H * W, Ci, H, W, ph, pw, buf);
        memset(buf + padded, 0, sizeof(float) * CONV_TB);
        for (int64_t co = 0; co < Co; co++) {
            const float bv = bias ? bias[co] : 0.f;
            for (int64_t t0 = 0; t0 < NB; t0 += CONV_TB) conv_block(buf, off, wt + co * nk, nk, t0, bv, acc);
            float *o = y + (b * Co + co) * Ho * Wo;
            for (int64_t h = 0; h < Ho; h++) memcpy(o + h * Wo, acc + h * Wp, sizeof(float) * Wo);
        }
        free(buf);
    }
    free(off);
}

/* dL/dx as a gather: dxp[ci][s] = sum_co sum_(i, j) w[co, ci, i, j] * g_co[s - i dh Wp - j dw] over the padded
 * plane s < Hp Wp, with g_co = dL/dy in row pitch Wp (zero past column Wo, before 0 and past N). Each g_co
 * sits OFF = (kh - 1) dh Wp + (kw - 1) dw zeros into its buffer, so every read is in bounds. */
void conv_small_grad_input(const float *dy, const float *wt, CONV_DIMS, float *dx) {
    CONV_SIZES;
    if (conv_path(B, Ci, Co, Hp, Ho, Wo, Wp, Ci * kh * kw, kw, dw, nt) == 2) { conv_tiled_grad_input(dy, wt, B, Ci, Co, H, W, kh, kw, ph, pw, dh, dw, nt, dx); return; }
    (void)padded; (void)N;
    const int64_t OFF = (kh - 1) * dh * Wp + (kw - 1) * dw, S = Hp * Wp;
    const int64_t SB = (S + CONV_TB - 1) / CONV_TB * CONV_TB, glen = OFF + SB + CONV_TB, nk = Co * kh * kw;
    int64_t *off = malloc(sizeof(int64_t) * nk);
    float *wv = malloc(sizeof(float) * Ci * nk);  /* per ci, its taps over (co, i, j) */
    for (int64_t co = 0; co < Co; co++)
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++) {
                const int64_t k = (co * kh + i) * kw + j;
                off[k] = co * glen + OFF - (i * dh * Wp + j * dw);
                for (int64_t ci = 0; ci < Ci; ci++) wv[ci * nk + k] = wt[((co * Ci + ci) * kh + i) * kw + j];
            }
    SAMPLES {
        float *g = calloc(Co * glen + SB, sizeof(float));
        float *acc = g + Co * glen;
        for (int64_t co = 0; co < Co; co++)
            for (int64_t h = 0; h < Ho; h++)
                memcpy(g + co * glen + OFF + h * Wp, dy + ((b * Co + co) * Ho + h) * Wo, sizeof(float) * Wo);
        float *o = dx + b * Ci * H * W;
        for (int64_t ci = 0; ci < Ci; ci++) {
            for (int64_t s0 = 0; s0 < SB; s0 += CONV_TB) conv_block(g, off, wv + ci * nk, nk, s0, 0.f, acc);
            for (int64_t h = 0; h < H; h++) memcpy(o + (ci * H + h) * W, acc + (h + ph) * Wp + pw, sizeof(float) * W);
        }
        free(g);
    }
    free(off); free(wv);
}

/* dweight[co, ci, i, j] = sum_b sum_t dy * x_padded: per sample, blocks of CONV_TB of dL/dy held in
 * registers against every tap, each tap's 16 partial sums kept as one vector; summed in double across
 * samples and threads. */
void conv_small_grad_weight(const float *x, const float *dy, CONV_DIMS, float *dwt) {
    CONV_SIZES;
    if (conv_path(B, Ci, Co, Hp, Ho, Wo, Wp, Ci * kh * kw, kw, dw, nt) == 2) { conv_tiled_grad_weight(x, dy, B, Ci, Co, H, W, kh, kw, ph, pw, dh, dw, nt, dwt); return; }
    const int64_t NB = (N + CONV_TB - 1) / CONV_TB * CONV_TB, nk = Ci * kh * kw, nw = Co * nk;
    int64_t *off = malloc(sizeof(int64_t) * nk);
    for (int64_t ci = 0; ci < Ci; ci++)
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++) off[(ci * kh + i) * kw + j] = (ci * Hp + i * dh) * Wp + j * dw;
    double *total = calloc(nw, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(nw, sizeof(double));
        vec16 *lanes = aligned_alloc(sizeof(vec16), sizeof(vec16) * nk);  /* vec16 is 64-byte aligned */
        float *buf = malloc(sizeof(float) * (padded + CONV_TB + NB));
        float *g = buf + padded + CONV_TB;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            pad_sample(x + b * Ci * H * W, Ci, H, W, ph, pw, buf);
            memset(buf + padded, 0, sizeof(float) * CONV_TB);
            for (int64_t co = 0; co < Co; co++) {
                memset(g, 0, sizeof(float) * NB);
                for (int64_t h = 0; h < Ho; h++) memcpy(g + h * Wp, dy + ((b * Co + co) * Ho + h) * Wo, sizeof(float) * Wo);
                for (int64_t k = 0; k < nk; k++) { vec16 z = {0}; lanes[k] = z; }
                for (int64_t t0 = 0; t0 < NB; t0 += CONV_TB) {
                    const vec16 g0 = load16(g + t0), g1 = load16(g + t0 + 16), g2 = load16(g + t0 + 32),
                                g3 = load16(g + t0 + 48);
                    for (int64_t k = 0; k < nk; k++) {
                        const float *q = buf + off[k] + t0;
                        lanes[k] += (g0 * load16(q) + g1 * load16(q + 16)) + (g2 * load16(q + 32) + g3 * load16(q + 48));
                    }
                }
                for (int64_t k = 0; k < nk; k++) {
                    float l[16];
                    store16(l, lanes[k]);
                    part[co * nk + k] += (double)tree_sum(l);
                }
            }
        }
#pragma omp critical
        for (int64_t k = 0; k < nw; k++) total[k] += part[k];
        free(part); free(lanes); free(buf);
    }
    for (int64_t k = 0; k < nw; k++) dwt[k] = (float)total[k];
    free(total); free(off);
}

/* Depthwise convolutions in channels_last: x (B, H, W, C), weight (C, 1, kh, kw), stride (sh, sw), zero padding,
 * dilation; y (B, Ho, Wo, C). Each output vector of LANES channels at (ho, wo) is accumulated in registers
 * over all taps and stored once; the channels beyond the last full LANES go through the same code with a
 * shorter chunk. oneDNN's backward of these convolutions was the most expensive op of lka and lska on
 * CPU. The input gradient is the same gather over a zero-padded dL/dy with the taps flipped. */
#define DW_DIMS int64_t B, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t ph, int64_t pw, \
                int64_t dh, int64_t dw, int64_t sh, int64_t sw, int nt
#define DW_SIZES const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, Ho = (Hp - dh * (kh - 1) - 1) / sh + 1, \
                 Wo = (Wp - dw * (kw - 1) - 1) / sw + 1, T = kh * kw

/* src (h, w, C) rows into a zeroed (h + top + bottom, w + left + right, C) buffer at (top, left). */
static void pad_cl(const float *src, int64_t C, int64_t h, int64_t w, int64_t top, int64_t left, int64_t hp,
                   int64_t wp, float *buf) {
    memset(buf, 0, sizeof(float) * hp * wp * C);
    for (int64_t r = 0; r < h; r++)
        memcpy(buf + ((r + top) * wp + left) * C, src + r * w * C, sizeof(float) * w * C);
}

/* weight (C, kh * kw) -> (kh * kw, C), taps optionally flipped: one vector of channel weights per tap. */
static float *taps_by_channel(const float *wt, int64_t C, int64_t T, int flip) {
    float *w = malloc(sizeof(float) * T * C);
    for (int64_t c = 0; c < C; c++)
        for (int64_t t = 0; t < T; t++) w[t * C + c] = wt[c * T + (flip ? T - 1 - t : t)];
    return w;
}

/* out[ho, wo, c0 + k] = init + sum over taps (i, j) of wT[i kw + j][c0 + k] * buf[ho + i dh, wo + j dw, c0 + k]
 * for one chunk of L channels (L == LANES after inlining, or the remainder). */
INLINE void dw_gather_chunk(const float *buf, const float *wT, const float *init, int64_t C, int64_t c0, int64_t L,
                            int64_t Ho, int64_t Wo, int64_t Wp, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                            int64_t sh, int64_t sw, float *out) {
    for (int64_t ho = 0; ho < Ho; ho++)
        for (int64_t wo = 0; wo < Wo; wo++) {
            float acc[LANES];
            for (int64_t k = 0; k < L; k++) acc[k] = init ? init[c0 + k] : 0.f;
            for (int64_t i = 0; i < kh; i++)
                for (int64_t j = 0; j < kw; j++) {
                    const float *q = buf + ((ho * sh + i * dh) * Wp + wo * sw + j * dw) * C + c0;
                    const float *wv = wT + (i * kw + j) * C + c0;
                    for (int64_t k = 0; k < L; k++) acc[k] += wv[k] * q[k];
                }
            float *o = out + (ho * Wo + wo) * C + c0;
            for (int64_t k = 0; k < L; k++) o[k] = acc[k];
        }
}

/* A full chunk of LANES channels, over ng buffers (ng == 1: depthwise; bufs bn floats apart, their taps wn apart),
 * four output positions of a row at a time: each tap's weight vector is loaded once for four products (the
 * one-position loop loads two vectors per multiply-add, and the loads bound it). Each output sums its taps in
 * the same order as the one-position loop, so the results are the same. */
INLINE void gather_full_chunk(const float *bufs, int64_t bn, const float *wTs, int64_t wn, int64_t ng,
                              const float *init, int64_t C, int64_t c0, int64_t Ho, int64_t Wo, int64_t Wp, int64_t kh,
                              int64_t kw, int64_t dh, int64_t dw, int64_t sh, int64_t sw, float *out) {
    const vec16 a_init = init ? load16(init + c0) : splat16(0.f);
    for (int64_t ho = 0; ho < Ho; ho++) {
        int64_t wo = 0;
        for (; wo + 4 <= Wo; wo += 4) {
            vec16 a0 = a_init, a1 = a_init, a2 = a_init, a3 = a_init;
            for (int64_t g = 0; g < ng; g++)
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t t = 0; t < kw; t++) {
                        const vec16 wv = load16(wTs + g * wn + (i * kw + t) * C + c0);
                        const float *q = bufs + g * bn + ((ho * sh + i * dh) * Wp + wo * sw + t * dw) * C + c0;
                        a0 += wv * load16(q);
                        a1 += wv * load16(q + sw * C);
                        a2 += wv * load16(q + 2 * sw * C);
                        a3 += wv * load16(q + 3 * sw * C);
                    }
            float *o = out + (ho * Wo + wo) * C + c0;
            store16(o, a0);
            store16(o + C, a1);
            store16(o + 2 * C, a2);
            store16(o + 3 * C, a3);
        }
        for (; wo < Wo; wo++) {
            vec16 a = a_init;
            for (int64_t g = 0; g < ng; g++)
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t t = 0; t < kw; t++)
                        a += load16(wTs + g * wn + (i * kw + t) * C + c0)
                             * load16(bufs + g * bn + ((ho * sh + i * dh) * Wp + wo * sw + t * dw) * C + c0);
            store16(out + (ho * Wo + wo) * C + c0, a);
        }
    }
}

/* Output (ho, wo) reads the padded sample at (ho sh + i dh, wo sw + j dw); stride 1 has its own inlined copy. */
static void dw_gather(const float *buf, const float *wT, const float *init, int64_t C, int64_t Ho, int64_t Wo,
                      int64_t Wp, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t sh, int64_t sw, float *out) {
    int64_t c0 = 0;
    for (; c0 + LANES <= C; c0 += LANES) {
        if (sh == 1 && sw == 1) gather_full_chunk(buf, 0, wT, 0, 1, init, C, c0, Ho, Wo, Wp, kh, kw, dh, dw, 1, 1, out);
        else gather_full_chunk(buf, 0, wT, 0, 1, init, C, c0, Ho, Wo, Wp, kh, kw, dh, dw, sh, sw, out);
    }
    if (c0 < C) dw_gather_chunk(buf, wT, init, C, c0, C - c0, Ho, Wo, Wp, kh, kw, dh, dw, sh, sw, out);
}

void dw_forward_cl(const float *x, const float *wt, const float *bias, DW_DIMS, float *y) {
    DW_SIZES;
    float *wT = taps_by_channel(wt, C, T, 0);
    SAMPLES {
        float *buf = malloc(sizeof(float) * Hp * Wp * C);
        pad_cl(x + b * H * W * C, C, H, W, ph, pw, Hp, Wp, buf);
        dw_gather(buf, wT, bias, C, Ho, Wo, Wp, kh, kw, dh, dw, sh, sw, y + b * Ho * Wo * C);
        free(buf);
    }
    free(wT);
}

/* dx[h, w] = sum_{i, j} weight[i, j] * dy[h + ph - i dh, w + pw - j dw]: dy zero-padded by the kernel's span
 * (Sh = dh (kh - 1), Sw) on each side and the taps flipped, the forward's gather. With a stride, dy is spread
 * to every sh-th row and sw-th column of that buffer first (zeros between: the transposed convolution as a
 * stride-1 gather), sized to cover every output row h + ph + Sh and every spread value. */
void dw_grad_input_cl(const float *dy, const float *wt, DW_DIMS, float *dx) {
    DW_SIZES;
    const int64_t Sh = dh * (kh - 1), Sw = dw * (kw - 1);
    const int64_t one = sh == 1 && sw == 1, Rh = Sh + (Ho - 1) * sh + 1, Rw = Sw + (Wo - 1) * sw + 1;
    const int64_t Gh = one ? Ho + 2 * Sh : (ph + H + Sh > Rh ? ph + H + Sh : Rh),
                  Gw = one ? Wo + 2 * Sw : (pw + W + Sw > Rw ? pw + W + Sw : Rw);
    float *wT = taps_by_channel(wt, C, T, 1);
    SAMPLES {
        float *buf = malloc(sizeof(float) * Gh * Gw * C);
        if (one) {
            pad_cl(dy + b * Ho * Wo * C, C, Ho, Wo, Sh, Sw, Gh, Gw, buf);
        } else {
            memset(buf, 0, sizeof(float) * Gh * Gw * C);
            const float *g = dy + b * Ho * Wo * C;
            for (int64_t r = 0; r < Ho; r++)
                for (int64_t c = 0; c < Wo; c++)
                    memcpy(buf + ((Sh + r * sh) * Gw + Sw + c * sw) * C, g + (r * Wo + c) * C, sizeof(float) * C);
        }
        /* flipped tap (i', j') = (kh - 1 - i, kw - 1 - j) reads row h + ph + Sh - i dh = h + ph + i' dh */
        dw_gather(buf + (ph * Gw + pw) * C, wT, NULL, C, H, W, Gw, kh, kw, dh, dw, 1, 1, dx + b * H * W * C);
        free(buf);
    }
    free(wT);
}

/* n (4, 2 or 1) taps (i, t0 .. t0 + n - 1) of a full chunk at once: dL/dy's vector loaded once for n products */
#define DW_WEIGHT_TAPS(n)                                                                                    \
    do {                                                                                                     \
        vec16 a[n];                                                                                          \
        for (int k = 0; k < n; k++) a[k] = splat16(0.f);                                                     \
        for (int64_t ho = 0; ho < Ho; ho++)                                                                  \
            for (int64_t wo = 0; wo < Wo; wo++) {                                                            \
                const vec16 d = load16(g + (ho * Wo + wo) * C + c0);                                         \
                const float *q = buf + ((ho * sh + i * dh) * Wp + wo * sw + t0 * dw) * C + c0;                \
                for (int k = 0; k < n; k++) a[k] += d * load16(q + k * dw * C);                              \
            }                                                                                                \
        for (int k = 0; k < n; k++) {                                                                        \
            float l[LANES];                                                                                  \
            store16(l, a[k]);                                                                                \
            double *pt = part + (i * kw + t0 + k) * C + c0;                                                  \
            for (int64_t j = 0; j < LANES; j++) pt[j] += l[j];                                               \
        }                                                                                                    \
        t0 += n;                                                                                             \
    } while (0)

INLINE void dw_weight_chunk(const float *buf, const float *g, int64_t C, int64_t c0, int64_t L, int64_t Ho,
                            int64_t Wo, int64_t Wp, int64_t kh, int64_t kw, int64_t dh, int64_t dw, int64_t sh,
                            int64_t sw, double *part) {
    if (L == LANES) {  /* each tap's sum over positions in the same order as below: the same results */
        for (int64_t i = 0; i < kh; i++) {
            int64_t t0 = 0;
            while (kw - t0 >= 4) DW_WEIGHT_TAPS(4);
            if (kw - t0 >= 2) DW_WEIGHT_TAPS(2);
            if (kw - t0 >= 1) DW_WEIGHT_TAPS(1);
        }
        return;
    }
    for (int64_t i = 0; i < kh; i++)
        for (int64_t j = 0; j < kw; j++) {
            float acc[LANES];
            for (int64_t k = 0; k < L; k++) acc[k] = 0.f;
            for (int64_t ho = 0; ho < Ho; ho++)
                for (int64_t wo = 0; wo < Wo; wo++) {
                    const float *q = buf + ((ho * sh + i * dh) * Wp + wo * sw + j * dw) * C + c0;
                    const float *d = g + (ho * Wo + wo) * C + c0;
                    for (int64_t k = 0; k < L; k++) acc[k] += d[k] * q[k];
                }
            double *pt = part + (i * kw + j) * C + c0;
            for (int64_t k = 0; k < L; k++) pt[k] += acc[k];
        }
}

/* dweight[c, i, j] = sum over samples and output positions of dy * padded x: float per sample, double across
 * samples and threads. */
void dw_grad_weight_cl(const float *x, const float *dy, DW_DIMS, float *dwt) {
    DW_SIZES;
    double *total = calloc(T * C, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(T * C, sizeof(double));
        float *buf = malloc(sizeof(float) * Hp * Wp * C);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            pad_cl(x + b * H * W * C, C, H, W, ph, pw, Hp, Wp, buf);
            const float *g = dy + b * Ho * Wo * C;
            int64_t c0 = 0;
            for (; c0 + LANES <= C; c0 += LANES) {
                if (sh == 1 && sw == 1) dw_weight_chunk(buf, g, C, c0, LANES, Ho, Wo, Wp, kh, kw, dh, dw, 1, 1, part);
                else dw_weight_chunk(buf, g, C, c0, LANES, Ho, Wo, Wp, kh, kw, dh, dw, sh, sw, part);
            }
            if (c0 < C) dw_weight_chunk(buf, g, C, c0, C - c0, Ho, Wo, Wp, kh, kw, dh, dw, sh, sw, part);
        }
#pragma omp critical
        for (int64_t k = 0; k < T * C; k++) total[k] += part[k];
        free(part); free(buf);
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t t = 0; t < T; t++) dwt[c * T + t] = (float)total[t * C + c];
    free(total);
}

/* Grouped convolutions with a few channels per group (cg = C / groups, C in = C out; SK's branches at C = 2-4 x its
 * 32 groups), channels_last: y[p, c] = sum_j sum_taps w[c, j, tap] x[p + tap, base(c) + j], base(c) = c - c % cg.
 * With buf_j[q, c] = x[q, base(c) + j] (cg copies of the padded sample, each in cache) every term is the
 * depthwise gather above: y = sum_j gather(buf_j, w[:, j]). The input gradient is the same sum over the
 * flipped taps of dy's copies dy_i[q, c] = dy[q, base(c) + i] with the weights w[base(c) + i, c % cg]; the
 * weight gradient of w[:, j] is the depthwise one of buf_j. cg == 1 is the depthwise convolution. */
#define GW_DIMS int64_t B, int64_t C, int64_t H, int64_t W, int64_t cg, int64_t kh, int64_t kw, int64_t ph, \
                int64_t pw, int64_t dh, int64_t dw, int nt

/* d[j n + c] = s[base(c) + j] for j < cg: a row's channels spread over the cg copies, 16 at a time by shuffles
 * (cg = 2, 4, 8 divide the 16 lanes, so groups never straddle a vector), the rest one by one */
#define SPREAD2(j) j, j, 2 + j, 2 + j, 4 + j, 4 + j, 6 + j, 6 + j, 8 + j, 8 + j, 10 + j, 10 + j, 12 + j, 12 + j, 14 + j, 14 + j
#define SPREAD4(j) j, j, j, j, 4 + j, 4 + j, 4 + j, 4 + j, 8 + j, 8 + j, 8 + j, 8 + j, 12 + j, 12 + j, 12 + j, 12 + j
#define SPREAD8(j) j, j, j, j, j, j, j, j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j
static void spread_groups(const float *s, int64_t C, int64_t cg, int64_t n, float *d) {
    int64_t c0 = 0;
    for (; c0 + LANES <= C && (cg == 2 || cg == 4 || cg == 8); c0 += LANES) {
        const vec16 v = load16(s + c0);
        float *o = d + c0;
        if (cg == 2) {
            store16(o, SHUFFLE16(v, v, SPREAD2(0)));
            store16(o + n, SHUFFLE16(v, v, SPREAD2(1)));
        } else if (cg == 4) {
            store16(o, SHUFFLE16(v, v, SPREAD4(0)));
            store16(o + n, SHUFFLE16(v, v, SPREAD4(1)));
            store16(o + 2 * n, SHUFFLE16(v, v, SPREAD4(2)));
            store16(o + 3 * n, SHUFFLE16(v, v, SPREAD4(3)));
        } else {
            store16(o, SHUFFLE16(v, v, SPREAD8(0)));
            store16(o + n, SHUFFLE16(v, v, SPREAD8(1)));
            store16(o + 2 * n, SHUFFLE16(v, v, SPREAD8(2)));
            store16(o + 3 * n, SHUFFLE16(v, v, SPREAD8(3)));
            store16(o + 4 * n, SHUFFLE16(v, v, SPREAD8(4)));
            store16(o + 5 * n, SHUFFLE16(v, v, SPREAD8(5)));
            store16(o + 6 * n, SHUFFLE16(v, v, SPREAD8(6)));
            store16(o + 7 * n, SHUFFLE16(v, v, SPREAD8(7)));
        }
    }
    for (; c0 < C; c0 += cg)
        for (int64_t j = 0; j < cg; j++) {
            const float v = s[c0 + j];
            for (int64_t k = 0; k < cg; k++) d[j * n + c0 + k] = v;
        }
}

/* bufs[j] (hp, wp, C) = src padded, each channel c taking channel base(c) + j */
static void pad_cl_grouped(const float *src, int64_t C, int64_t cg, int64_t h, int64_t w, int64_t top, int64_t left,
                           int64_t hp, int64_t wp, float *bufs) {
    const int64_t n = hp * wp * C;
    memset(bufs, 0, sizeof(float) * n * cg);
    for (int64_t r = 0; r < h; r++)
        for (int64_t q = 0; q < w; q++) {
            const float *s = src + (r * w + q) * C;
            const int64_t o = ((r + top) * wp + left + q) * C;
            if (cg == 1) { memcpy(bufs + o, s, sizeof(float) * C); continue; }
            spread_groups(s, C, cg, n, bufs + o);
        }
}

INLINE void gw_gather_chunk(const float *bufs, int64_t bn, const float *wTs, int64_t wn, int64_t cg, const float *init,
                            int64_t C, int64_t c0, int64_t L, int64_t Ho, int64_t Wo, int64_t Wp, int64_t kh,
                            int64_t kw, int64_t dh, int64_t dw, float *out) {
    for (int64_t ho = 0; ho < Ho; ho++)
        for (int64_t wo = 0; wo < Wo; wo++) {
            float acc[LANES];
            for (int64_t k = 0; k < L; k++) acc[k] = init ? init[c0 + k] : 0.f;
            for (int64_t j = 0; j < cg; j++)
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t t = 0; t < kw; t++) {
                        const float *q = bufs + j * bn + ((ho + i * dh) * Wp + wo + t * dw) * C + c0;
                        const float *wv = wTs + j * wn + (i * kw + t) * C + c0;
                        for (int64_t k = 0; k < L; k++) acc[k] += wv[k] * q[k];
                    }
            float *o = out + (ho * Wo + wo) * C + c0;
            for (int64_t k = 0; k < L; k++) o[k] = acc[k];
        }
}

static void gw_gather(const float *bufs, int64_t bn, const float *wTs, int64_t wn, int64_t cg, const float *init,
                      int64_t C, int64_t Ho, int64_t Wo, int64_t Wp, int64_t kh, int64_t kw, int64_t dh, int64_t dw,
                      float *out) {
    int64_t c0 = 0;
    for (; c0 + LANES <= C; c0 += LANES)
        gather_full_chunk(bufs, bn, wTs, wn, cg, init, C, c0, Ho, Wo, Wp, kh, kw, dh, dw, 1, 1, out);
    if (c0 < C) gw_gather_chunk(bufs, bn, wTs, wn, cg, init, C, c0, C - c0, Ho, Wo, Wp, kh, kw, dh, dw, out);
}

/* wTs[j] (T, C): forward wTs[j][t][c] = w[c, j, t]; for the input gradient (flip) wTs[i][t][c] =
 * w[base(c) + i, c % cg, T - 1 - t]. weight (C, cg, T). */
static float *grouped_taps(const float *wt, int64_t C, int64_t cg, int64_t T, int flip) {
    float *w = malloc(sizeof(float) * cg * T * C);
    for (int64_t j = 0; j < cg; j++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < T; t++)
                w[(j * T + t) * C + c] = flip ? wt[((c - c % cg + j) * cg + c % cg) * T + T - 1 - t]
                                              : wt[(c * cg + j) * T + t];
    return w;
}

void gw_forward_cl(const float *x, const float *wt, const float *bias, GW_DIMS, float *y) {
    const int64_t sh = 1, sw = 1;  /* no stride here */
    DW_SIZES;
    float *wT = grouped_taps(wt, C, cg, T, 0);
    const int64_t bn = Hp * Wp * C;
    SAMPLES {
        float *bufs = malloc(sizeof(float) * bn * cg);
        pad_cl_grouped(x + b * H * W * C, C, cg, H, W, ph, pw, Hp, Wp, bufs);
        gw_gather(bufs, bn, wT, T * C, cg, bias, C, Ho, Wo, Wp, kh, kw, dh, dw, y + b * Ho * Wo * C);
        free(bufs);
    }
    free(wT);
}

void gw_grad_input_cl(const float *dy, const float *wt, GW_DIMS, float *dx) {
    const int64_t sh = 1, sw = 1;  /* no stride here */
    DW_SIZES;
    const int64_t Sh = dh * (kh - 1), Sw = dw * (kw - 1), Gh = Ho + 2 * Sh, Gw = Wo + 2 * Sw, bn = Gh * Gw * C;
    float *wT = grouped_taps(wt, C, cg, T, 1);
    SAMPLES {
        float *bufs = malloc(sizeof(float) * bn * cg);
        pad_cl_grouped(dy + b * Ho * Wo * C, C, cg, Ho, Wo, Sh, Sw, Gh, Gw, bufs);
        gw_gather(bufs + (ph * Gw + pw) * C, bn, wT, T * C, cg, NULL, C, H, W, Gw, kh, kw, dh, dw, dx + b * H * W * C);
        free(bufs);
    }
    free(wT);
}

/* dweight[c, j, tap] = sum over samples and output positions of dy[., c] * buf_j[. + tap, c] */
void gw_grad_weight_cl(const float *x, const float *dy, GW_DIMS, float *dwt) {
    const int64_t sh = 1, sw = 1;  /* no stride here */
    DW_SIZES;
    const int64_t bn = Hp * Wp * C;
    double *total = calloc(cg * T * C, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(cg * T * C, sizeof(double));
        float *bufs = malloc(sizeof(float) * bn * cg);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            pad_cl_grouped(x + b * H * W * C, C, cg, H, W, ph, pw, Hp, Wp, bufs);
            const float *g = dy + b * Ho * Wo * C;
            for (int64_t j = 0; j < cg; j++) {
                int64_t c0 = 0;
                for (; c0 + LANES <= C; c0 += LANES)
                    dw_weight_chunk(bufs + j * bn, g, C, c0, LANES, Ho, Wo, Wp, kh, kw, dh, dw, 1, 1, part + j * T * C);
                if (c0 < C) dw_weight_chunk(bufs + j * bn, g, C, c0, C - c0, Ho, Wo, Wp, kh, kw, dh, dw, 1, 1, part + j * T * C);
            }
        }
#pragma omp critical
        for (int64_t k = 0; k < cg * T * C; k++) total[k] += part[k];
        free(part); free(bufs);
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t j = 0; j < cg; j++)
            for (int64_t t = 0; t < T; t++) dwt[(c * cg + j) * T + t] = (float)total[(j * T + t) * C + c];
    free(total);
}

/* Triplet attention (Misra et al., WACV 2021) without the rotations: y = x * (a_hc[c, h] + a_cw[c, w]
 * + a_hw[h, w]) * k, k = 1/3, where each factor comes from [max; mean] of x over one axis (W, H, C).
 * triplet_pool computes all six pooled maps in one pass over x; the maxima over W and H keep their first
 * position (adaptive_max_pool2d's gradient), the max over C counts its ties in backward (amax's). */
#define TRIP_DIMS int64_t B, int64_t C, int64_t H, int64_t W, int cl, int nt

/* After a pass: a line whose sum came out NaN is rescanned for a NaN, which is then its maximum. */
static void nan_line(const float *x, int64_t n, int64_t step, float sum, float *mx, int32_t *arg) {
    if (sum == sum) return;
    for (int64_t k = 0; k < n; k++)
        if (x[k * step] != x[k * step]) { *mx = NAN; if (arg) *arg = (int32_t)k; return; }
}

void triplet_pool(const float *x, TRIP_DIMS, float *mw, float *sw, int32_t *aw, float *mh, float *sh,
                  int32_t *ah, float *mc, float *sc) {
    const int64_t sC = cl ? 1 : H * W, sH = cl ? W * C : W, sW = cl ? C : 1;
    SAMPLES {
        const float *xb = x + b * C * H * W;
        float *Mw = mw + b * C * H, *Sw = sw + b * C * H, *Mh = mh + b * C * W, *Sh = sh + b * C * W;
        float *Mc = mc + b * H * W, *Sc = sc + b * H * W;
        int32_t *Aw = aw + b * C * H, *Ah = ah + b * C * W;
        for (int64_t k = 0; k < C * W; k++) { Mh[k] = -INFINITY; Sh[k] = 0.f; Ah[k] = 0; }
        for (int64_t k = 0; k < H * W; k++) { Mc[k] = -INFINITY; Sc[k] = 0.f; }
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + c * sC + h * sH;
                    float *mhr = Mh + c * W, *shr = Sh + c * W, *mcr = Mc + h * W, *scr = Sc + h * W;
                    int32_t *ahr = Ah + c * W;
                    float s = 0.f, m = -INFINITY;
                    int32_t a = 0;
                    for (int64_t w = 0; w < W; w++) {
                        const float v = r[w];
                        s += v;
                        if (v > m) { m = v; a = (int32_t)w; }
                        const int gt = v > mhr[w];
                        mhr[w] = gt ? v : mhr[w]; ahr[w] = gt ? (int32_t)h : ahr[w]; shr[w] += v;
                        mcr[w] = v > mcr[w] ? v : mcr[w]; scr[w] += v;
                    }
                    nan_line(r, W, 1, s, &m, &a);
                    Mw[c * H + h] = m; Sw[c * H + h] = s; Aw[c * H + h] = a;
                }
        } else {
            float *tw = malloc(sizeof(float) * C * 2);  /* per row h: max and sum over w, channel-contiguous */
            int32_t *ta = malloc(sizeof(int32_t) * C);
            float *thm = malloc(sizeof(float) * W * C * 2);  /* over h, (w, c)-contiguous */
            int32_t *tha = malloc(sizeof(int32_t) * W * C);
            float *ths = thm + W * C, *tws = tw + C;
            for (int64_t k = 0; k < W * C; k++) { thm[k] = -INFINITY; ths[k] = 0.f; tha[k] = 0; }
            for (int64_t h = 0; h < H; h++) {
                for (int64_t c = 0; c < C; c++) { tw[c] = -INFINITY; tws[c] = 0.f; ta[c] = 0; }
                if (C % LANES == 0) {  /* whole vectors; 16 positions' sums and maxima over C at once (reduce16_*) */
                    const vec16 zero = {0};
                    const ivec16 izero = {0};
                    for (int64_t w0 = 0; w0 < W; w0 += 16) {
                        const int64_t nw = W - w0 < 16 ? W - w0 : 16;
                        vec16 S[16], Mx[16];
                        for (int64_t q = 0; q < 16; q++) {
                            S[q] = zero; Mx[q] = zero;
                            if (q >= nw) continue;
                            const int64_t w = w0 + q;
                            const float *r = xb + h * sH + w * sW;
                            float *hm = thm + w * C, *hs = ths + w * C;
                            int32_t *ha = tha + w * C;
                            vec16 ml = zero - INFINITY;
                            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                                const vec16 v = load16(r + c0), twv = load16(tw + c0), hmv = load16(hm + c0);
                                ivec16 tav, hav;
                                memcpy(&tav, ta + c0, sizeof tav); memcpy(&hav, ha + c0, sizeof hav);
                                const ivec16 gw = v > twv, gh = v > hmv;
                                store16(tw + c0, (vec16)(((ivec16)v & gw) | ((ivec16)twv & ~gw)));
                                tav = ((izero + (int32_t)w) & gw) | (tav & ~gw);
                                store16(tws + c0, load16(tws + c0) + v);
                                store16(hm + c0, (vec16)(((ivec16)v & gh) | ((ivec16)hmv & ~gh)));
                                hav = ((izero + (int32_t)h) & gh) | (hav & ~gh);
                                store16(hs + c0, load16(hs + c0) + v);
                                memcpy(ta + c0, &tav, sizeof tav); memcpy(ha + c0, &hav, sizeof hav);
                                S[q] += v; ml = vmax16(ml, v);
                            }
                            Mx[q] = ml;
                        }
                        float sa[16], ma[16];
                        store16(sa, reduce16_sum(S)); store16(ma, reduce16_max(Mx));
                        for (int64_t q = 0; q < nw; q++) {
                            float m = ma[q];
                            nan_line(xb + h * sH + (w0 + q) * sW, C, 1, sa[q], &m, NULL);
                            Mc[h * W + w0 + q] = m; Sc[h * W + w0 + q] = sa[q];
                        }
                    }
                }
                for (int64_t w = 0; w < W && C % LANES != 0; w++) {
                    const float *r = xb + h * sH + w * sW;
                    float *hm = thm + w * C, *hs = ths + w * C;
                    int32_t *ha = tha + w * C;
                    float s = 0.f, m = -INFINITY;
#pragma omp simd reduction(+ : s) reduction(max : m)
                    for (int64_t c = 0; c < C; c++) {
                        const float v = r[c];
                        const int gw = v > tw[c], gh = v > hm[c];
                        tw[c] = gw ? v : tw[c]; ta[c] = gw ? (int32_t)w : ta[c]; tws[c] += v;
                        hm[c] = gh ? v : hm[c]; ha[c] = gh ? (int32_t)h : ha[c]; hs[c] += v;
                        s += v; m = v > m ? v : m;
                    }
                    nan_line(r, C, 1, s, &m, NULL);
                    Mc[h * W + w] = m; Sc[h * W + w] = s;
                }
                for (int64_t c = 0; c < C; c++) {
                    float m = tw[c];
                    int32_t a = ta[c];
                    nan_line(xb + h * sH + c, W, sW, tws[c], &m, &a);
                    Mw[c * H + h] = m; Sw[c * H + h] = tws[c]; Aw[c * H + h] = a;
                }
            }
            for (int64_t w = 0; w < W; w++)
                for (int64_t c = 0; c < C; c++) {
                    Mh[c * W + w] = thm[w * C + c]; Sh[c * W + w] = ths[w * C + c]; Ah[c * W + w] = tha[w * C + c];
                }
            free(tw); free(ta); free(thm); free(tha);
        }
        /* the maxima over H in NCHW: a NaN in a column */
        if (!cl)
            for (int64_t c = 0; c < C; c++)
                for (int64_t w = 0; w < W; w++) nan_line(xb + c * sC + w, H, sH, Sh[c * W + w], Mh + c * W + w, Ah + c * W + w);
        else
            for (int64_t c = 0; c < C; c++)
                for (int64_t w = 0; w < W; w++) nan_line(xb + c + w * sW, H, sH, Sh[c * W + w], Mh + c * W + w, Ah + c * W + w);
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++)
                if (!cl) nan_line(xb + h * sH + w, C, sC, Sc[h * W + w], Mc + h * W + w, NULL);
        /* sums -> means */
        for (int64_t k = 0; k < C * H; k++) Sw[k] /= (float)W;
        for (int64_t k = 0; k < C * W; k++) Sh[k] /= (float)H;
        for (int64_t k = 0; k < H * W; k++) Sc[k] /= (float)C;
    }
}

/* The factors of one sample in the loop order of the layout: a_hc (C, H) and a_cw (C, W) transposed to
 * (H, C) and (W, C) in channels_last. */
static void trip_factors(const float *ahc, const float *acw, int64_t C, int64_t H, int64_t W, int cl, float *thc,
                         float *tcw) {
    for (int64_t c = 0; c < C; c++) {
        for (int64_t h = 0; h < H; h++) thc[cl ? h * C + c : c * H + h] = ahc[c * H + h];
        for (int64_t w = 0; w < W; w++) tcw[cl ? w * C + c : c * W + w] = acw[c * W + w];
    }
}

/* y = (x * ((a_hc + a_cw) + a_hw)) * k, the order of the PyTorch expression. */
void triplet_apply(const float *x, const float *ahc, const float *acw, const float *ahw, float k, TRIP_DIMS,
                   float *y) {
    SAMPLES {
        const float *xb = x + b * C * H * W, *hw = ahw + b * H * W;
        float *yb = y + b * C * H * W;
        float *thc = malloc(sizeof(float) * C * (H + W)), *tcw = thc + C * H;
        trip_factors(ahc + b * C * H, acw + b * C * W, C, H, W, cl, thc, tcw);
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *cw = tcw + c * W, *hwr = hw + h * W;
                    float *o = yb + (c * H + h) * W;
                    const float hc = thc[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++) o[w] = (r[w] * ((hc + cw[w]) + hwr[w])) * k;
                }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *hc = thc + h * C, *cw = tcw + w * C;
                    float *o = yb + (h * W + w) * C;
                    const float s = hw[h * W + w];
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = (r[c] * ((hc[c] + cw[c]) + s)) * k;
                }
        }
        free(thc);
    }
}

/* With t = dy * x * k: d_ahc[c, h] = sum_w t, d_acw[c, w] = sum_h t, d_ahw[h, w] = sum_c t; and
 * cnt[h, w] = #{c : x == mc[h, w]} (ties of the max over channels). */
void triplet_grad_factors(const float *x, const float *dy, const float *mc, float k, TRIP_DIMS, float *dhc,
                          float *dcw, float *dhw, float *cnt) {
    SAMPLES {
        const float *xb = x + b * C * H * W, *db = dy + b * C * H * W, *M = mc + b * H * W;
        float *Dhc = dhc + b * C * H, *Dcw = dcw + b * C * W, *Dhw = dhw + b * H * W, *N = cnt + b * H * W;
        for (int64_t q = 0; q < C * W; q++) Dcw[q] = 0.f;
        for (int64_t q = 0; q < H * W; q++) { Dhw[q] = 0.f; N[q] = 0.f; }
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *d = db + (c * H + h) * W, *m = M + h * W;
                    float *cw = Dcw + c * W, *hw = Dhw + h * W, *n = N + h * W;
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t w = 0; w < W; w++) {
                        const float t = d[w] * r[w] * k;
                        s += t; cw[w] += t; hw[w] += t; n[w] += r[w] == m[w] ? 1.f : 0.f;
                    }
                    Dhc[c * H + h] = s;
                }
        } else {
            float *thc = calloc(C, sizeof(float)), *tcw = calloc(W * C, sizeof(float));
            for (int64_t h = 0; h < H; h++) {
                for (int64_t c = 0; c < C; c++) thc[c] = 0.f;
                if (C % LANES == 0) {  /* whole vectors; 16 positions' sums over C at once (reduce16_sum) */
                    const vec16 zero = {0}, kv = zero + k, one = zero + 1.f;
                    for (int64_t w0 = 0; w0 < W; w0 += 16) {
                        const int64_t nw = W - w0 < 16 ? W - w0 : 16;
                        vec16 S[16], Nc[16];
                        for (int64_t q = 0; q < 16; q++) {
                            S[q] = zero; Nc[q] = zero;
                            if (q >= nw) continue;
                            const int64_t w = w0 + q;
                            const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C;
                            float *cw = tcw + w * C;
                            const vec16 m = zero + M[h * W + w];
                            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                                const vec16 rv = load16(r + c0), t = load16(d + c0) * rv * kv;
                                store16(thc + c0, load16(thc + c0) + t);
                                store16(cw + c0, load16(cw + c0) + t);
                                S[q] += t;
                                Nc[q] += (vec16)((ivec16)one & (rv == m));
                            }
                        }
                        float sa[16], na[16];
                        store16(sa, reduce16_sum(S)); store16(na, reduce16_sum(Nc));
                        for (int64_t q = 0; q < nw; q++) { Dhw[h * W + w0 + q] = sa[q]; N[h * W + w0 + q] = na[q]; }
                    }
                    for (int64_t c = 0; c < C; c++) Dhc[c * H + h] = thc[c];
                    continue;
                }
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C;
                    float *cw = tcw + w * C;
                    const float m = M[h * W + w];
                    float s = 0.f, n = 0.f;
#pragma omp simd reduction(+ : s, n)
                    for (int64_t c = 0; c < C; c++) {
                        const float t = d[c] * r[c] * k;
                        thc[c] += t; cw[c] += t; s += t; n += r[c] == m ? 1.f : 0.f;
                    }
                    Dhw[h * W + w] = s; N[h * W + w] = n;
                }
                for (int64_t c = 0; c < C; c++) Dhc[c * H + h] = thc[c];
            }
            for (int64_t w = 0; w < W; w++)
                for (int64_t c = 0; c < C; c++) Dcw[c * W + w] = tcw[w * C + c];
            free(thc); free(tcw);
        }
    }
}

/* dx = dy * ((a_hc + a_cw) + a_hw) * k + the pooled maps' gradients: dmean / n spread over the pooled axis,
 * the max over C's split among its ties (dmax_c / cnt), and the maxima over W and H at their positions. */
void triplet_grad_input(const float *x, const float *dy, const float *ahc, const float *acw, const float *ahw,
                        float k, const float *dmw, const float *dsw, const int32_t *aw, const float *dmh,
                        const float *dsh, const int32_t *ah, const float *dmc, const float *dsc, const float *mc,
                        const float *cnt, TRIP_DIMS, float *dx) {
    SAMPLES {
        const float *xb = x + b * C * H * W, *db = dy + b * C * H * W, *hw = ahw + b * H * W;
        float *ob = dx + b * C * H * W;
        float *thc = malloc(sizeof(float) * 2 * C * (H + W)), *tcw = thc + C * H;
        float *ehc = tcw + C * W, *ecw = ehc + C * H;  /* dmean / n per line, in the layout's order */
        float *ehw = malloc(sizeof(float) * 2 * H * W), *qhw = ehw + H * W;
        trip_factors(ahc + b * C * H, acw + b * C * W, C, H, W, cl, thc, tcw);
        for (int64_t c = 0; c < C; c++) {
            for (int64_t h = 0; h < H; h++) ehc[cl ? h * C + c : c * H + h] = dsw[b * C * H + c * H + h] / (float)W;
            for (int64_t w = 0; w < W; w++) ecw[cl ? w * C + c : c * W + w] = dsh[b * C * W + c * W + w] / (float)H;
        }
        for (int64_t q = 0; q < H * W; q++) {
            ehw[q] = dsc[b * H * W + q] / (float)C;
            qhw[q] = dmc[b * H * W + q] / cnt[b * H * W + q];
        }
        const float *M = mc + b * H * W;
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *d = db + (c * H + h) * W;
                    const float *cw = tcw + c * W, *hwr = hw + h * W, *e2 = ecw + c * W, *e3 = ehw + h * W;
                    const float *q3 = qhw + h * W, *m = M + h * W;
                    float *o = ob + (c * H + h) * W;
                    const float hc = thc[c * H + h], e1 = ehc[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++)
                        o[w] = d[w] * ((hc + cw[w]) + hwr[w]) * k + e1 + e2[w] + e3[w] + (r[w] == m[w] ? q3[w] : 0.f);
                }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C;
                    const float *hc = thc + h * C, *cw = tcw + w * C, *e1 = ehc + h * C, *e2 = ecw + w * C;
                    const float s = hw[h * W + w], e3 = ehw[h * W + w], q3 = qhw[h * W + w], m = M[h * W + w];
                    float *o = ob + (h * W + w) * C;
                    if (C % LANES == 0) {  /* whole vectors per row */
                        const vec16 zero = {0}, sv = zero + s, kv = zero + k, e3v = zero + e3, q3v = zero + q3,
                                    mv = zero + m;
                        for (int64_t c0 = 0; c0 < C; c0 += LANES)
                            store16(o + c0, load16(d + c0) * ((load16(hc + c0) + load16(cw + c0)) + sv) * kv
                                                + load16(e1 + c0) + load16(e2 + c0) + e3v
                                                + (vec16)((ivec16)q3v & (load16(r + c0) == mv)));
                        continue;
                    }
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        o[c] = d[c] * ((hc[c] + cw[c]) + s) * k + e1[c] + e2[c] + e3 + (r[c] == m ? q3 : 0.f);
                }
        }
        const int64_t sC = cl ? 1 : H * W, sH = cl ? W * C : W, sW = cl ? C : 1;
        for (int64_t c = 0; c < C; c++) {
            for (int64_t h = 0; h < H; h++)
                ob[c * sC + h * sH + (int64_t)aw[b * C * H + c * H + h] * sW] += dmw[b * C * H + c * H + h];
            for (int64_t w = 0; w < W; w++)
                ob[c * sC + (int64_t)ah[b * C * W + c * W + w] * sH + w * sW] += dmh[b * C * W + c * W + w];
        }
        free(thc); free(ehw);
    }
}

/* Strip gates (coordinate attention, Hou et al., CVPR 2021; ELA): y = (x * gh[c, h]) * gw[c, w], gh from the
 * mean over W, gw from the mean over H. strip_pool computes both means in one pass. */
void strip_pool(const float *x, TRIP_DIMS, float *mw, float *mh) {
    SAMPLES {
        const float *xb = x + b * C * H * W;
        float *Mw = mw + b * C * H, *Mh = mh + b * C * W;
        for (int64_t k = 0; k < C * W; k++) Mh[k] = 0.f;
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W;
                    float *mh_ = Mh + c * W;
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t w = 0; w < W; w++) { s += r[w]; mh_[w] += r[w]; }
                    Mw[c * H + h] = s / (float)W;
                }
            for (int64_t k = 0; k < C * W; k++) Mh[k] /= (float)H;
        } else {
            float *tw = malloc(sizeof(float) * C), *th = calloc(W * C, sizeof(float));
            for (int64_t h = 0; h < H; h++) {
                for (int64_t c = 0; c < C; c++) tw[c] = 0.f;
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C;
                    float *t = th + w * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) { tw[c] += r[c]; t[c] += r[c]; }
                }
                for (int64_t c = 0; c < C; c++) Mw[c * H + h] = tw[c] / (float)W;
            }
            for (int64_t w = 0; w < W; w++)
                for (int64_t c = 0; c < C; c++) Mh[c * W + w] = th[w * C + c] / (float)H;
            free(tw); free(th);
        }
    }
}

/* y = (x * gh) * gw. */
void strip_apply(const float *x, const float *gh, const float *gw, TRIP_DIMS, float *y) {
    SAMPLES {
        const float *xb = x + b * C * H * W;
        float *yb = y + b * C * H * W;
        float *th = malloc(sizeof(float) * C * (H + W)), *tw = th + C * H;
        trip_factors(gh + b * C * H, gw + b * C * W, C, H, W, cl, th, tw);
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *g = tw + c * W;
                    float *o = yb + (c * H + h) * W;
                    const float a = th[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++) o[w] = (r[w] * a) * g[w];
                }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *a = th + h * C, *g = tw + w * C;
                    float *o = yb + (h * W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = (r[c] * a[c]) * g[c];
                }
        }
        free(th);
    }
}

/* dgh[c, h] = sum_w (dy * gw) * x; dgw[c, w] = sum_h dy * (x * gh). */
void strip_grad_factors(const float *x, const float *dy, const float *gh, const float *gw, TRIP_DIMS, float *dgh,
                        float *dgw) {
    SAMPLES {
        const float *xb = x + b * C * H * W, *db = dy + b * C * H * W;
        float *Dh = dgh + b * C * H, *Dw = dgw + b * C * W;
        float *th = malloc(sizeof(float) * C * (H + W)), *tw = th + C * H;
        trip_factors(gh + b * C * H, gw + b * C * W, C, H, W, cl, th, tw);
        if (!cl) {
            for (int64_t k = 0; k < C * W; k++) Dw[k] = 0.f;
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *d = db + (c * H + h) * W, *g = tw + c * W;
                    float *dw_ = Dw + c * W;
                    const float a = th[c * H + h];
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t w = 0; w < W; w++) { s += (d[w] * g[w]) * r[w]; dw_[w] += d[w] * (r[w] * a); }
                    Dh[c * H + h] = s;
                }
        } else {
            float *sh = malloc(sizeof(float) * C), *sw = calloc(W * C, sizeof(float));
            for (int64_t h = 0; h < H; h++) {
                for (int64_t c = 0; c < C; c++) sh[c] = 0.f;
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C, *a = th + h * C, *g = tw + w * C;
                    float *t = sw + w * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) { sh[c] += (d[c] * g[c]) * r[c]; t[c] += d[c] * (r[c] * a[c]); }
                }
                for (int64_t c = 0; c < C; c++) Dh[c * H + h] = sh[c];
            }
            for (int64_t w = 0; w < W; w++)
                for (int64_t c = 0; c < C; c++) Dw[c * W + w] = sw[w * C + c];
            free(sh); free(sw);
        }
        free(th);
    }
}

/* dx = (dy * gw) * gh + dmean_w[c, h] / W + dmean_h[c, w] / H. */
void strip_grad_input(const float *dy, const float *gh, const float *gw, const float *dmw, const float *dmh, TRIP_DIMS,
                      float *dx) {
    SAMPLES {
        const float *db = dy + b * C * H * W;
        float *ob = dx + b * C * H * W;
        float *th = malloc(sizeof(float) * 2 * C * (H + W)), *tw = th + C * H, *eh = tw + C * W, *ew = eh + C * H;
        trip_factors(gh + b * C * H, gw + b * C * W, C, H, W, cl, th, tw);
        for (int64_t c = 0; c < C; c++) {
            for (int64_t h = 0; h < H; h++) eh[cl ? h * C + c : c * H + h] = dmw[b * C * H + c * H + h] / (float)W;
            for (int64_t w = 0; w < W; w++) ew[cl ? w * C + c : c * W + w] = dmh[b * C * W + c * W + w] / (float)H;
        }
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *d = db + (c * H + h) * W, *g = tw + c * W, *e = ew + c * W;
                    float *o = ob + (c * H + h) * W;
                    const float a = th[c * H + h], ea = eh[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++) o[w] = (d[w] * g[w]) * a + ea + e[w];
                }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *d = db + (h * W + w) * C, *a = th + h * C, *g = tw + w * C;
                    const float *ea = eh + h * C, *e = ew + w * C;
                    float *o = ob + (h * W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = (d[c] * g[c]) * a[c] + ea[c] + e[c];
                }
        }
        free(th);
    }
}

/* Spatial group-wise enhance (Li et al., 2019): G groups of Cg = C / G channels; mean[c] = mean_p x;
 * sim[g, p] = sum_{c in g} mean[c] * x[c, p]; y[c, p] = x[c, p] * a[g(c), p], a computed from sim.
 * The group maps (sim, a and their gradients) are laid out like x: (B, G, P) for NCHW, (B, P, G) for
 * channels_last, so that no kernel transposes. */
#define GROUP_DIMS int64_t B, int64_t C, int64_t P, int64_t G, int cl, int nt

/* sum over each group's channels of v[c] (contiguous), into out[g] (contiguous) */
INLINE void group_reduce(const float *v, int64_t G, int64_t Cg, float *out) {
    if (Cg == 1) { for (int64_t g = 0; g < G; g++) out[g] = v[g]; return; }
    for (int64_t g = 0; g < G; g++) {
        float t = 0.f;
        for (int64_t k = 0; k < Cg; k++) t += v[g * Cg + k];
        out[g] = t;
    }
}

/* mean[b, c] and sim (one pass over the sample for the means, one for the similarities, the sample
 * still in cache). */
static void group_sim_one(const float *xb, int64_t C, int64_t P, int64_t G, int cl, float *m, float *s) {
    const int64_t Cg = C / G;
    {
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float t = 0.f;
#pragma omp simd reduction(+ : t)
                for (int64_t p = 0; p < P; p++) t += r[p];
                m[c] = t / (float)P;
            }
            for (int64_t q = 0; q < G * P; q++) s[q] = 0.f;
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *sr = s + (c / Cg) * P;
                const float mv = m[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) sr[p] += mv * r[p];
            }
        } else {
            float *v = malloc(sizeof(float) * C);
            if (C % LANES == 0) {
                for (int64_t c0 = 0; c0 < C; c0 += LANES) cl_chunk_sum(xb, C, P, c0, m);  /* the mean */
            } else {
                for (int64_t c = 0; c < C; c++) m[c] = 0.f;
                for (int64_t p = 0; p < P; p++) {
                    const float *r = xb + p * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) m[c] += r[c];
                }
                for (int64_t c = 0; c < C; c++) m[c] /= (float)P;
            }
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) v[c] = m[c] * r[c];
                group_reduce(v, G, Cg, s + p * G);
            }
            free(v);
        }
    }
}

void group_sim(const float *x, GROUP_DIMS, float *mean, float *sim) {
    SAMPLES group_sim_one(x + b * C * P, C, P, G, cl, mean + b * C, sim + b * G * P);
}

/* y[c, p] = x[c, p] * a[g(c), p]. */
static void group_apply_one(const float *xb, const float *ab, int64_t C, int64_t P, int64_t G, int cl, float *yb) {
    const int64_t Cg = C / G;
    {
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *ar = ab + (c / Cg) * P;
                float *o = yb + c * P;
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = r[p] * ar[p];
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *ar = ab + p * G;
                float *o = yb + p * C;
                if (Cg == 1) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = r[c] * ar[c];
                } else {
                    for (int64_t g = 0; g < G; g++)
                        for (int64_t k = 0; k < Cg; k++) o[g * Cg + k] = r[g * Cg + k] * ar[g];
                }
            }
        }
    }
}

void group_apply(const float *x, const float *a, GROUP_DIMS, float *y) {
    SAMPLES group_apply_one(x + b * C * P, a + b * G * P, C, P, G, cl, y + b * C * P);
}

/* da[b, g, p] = sum_{c in g} dy * x. */
static void group_grad_factor_one(const float *xb, const float *db, int64_t C, int64_t P, int64_t G, int cl, float *o) {
    const int64_t Cg = C / G;
    {
        if (!cl) {
            for (int64_t q = 0; q < G * P; q++) o[q] = 0.f;
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float *orow = o + (c / Cg) * P;
#pragma omp simd
                for (int64_t p = 0; p < P; p++) orow[p] += d[p] * r[p];
            }
        } else {
            float *v = malloc(sizeof(float) * C);
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) v[c] = d[c] * r[c];
                group_reduce(v, G, Cg, o + p * G);
            }
            free(v);
        }
    }
}

void group_grad_factor(const float *x, const float *dy, GROUP_DIMS, float *da) {
    SAMPLES group_grad_factor_one(x + b * C * P, dy + b * C * P, C, P, G, cl, da + b * G * P);
}

/* dmean[b, c] = sum_p dsim[g(c), p] * x[c, p] (the similarity's gradient for the mean vector), then
 * dx = dy * a[g, p] + dsim[g, p] * mean[c] + dmean[c] / P, both for one sample while it is in cache. */
static void group_grad_input_one(const float *xb, const float *db, const float *ab, const float *sb, const float *m,
                                 int64_t C, int64_t P, int64_t G, int cl, float *ob) {
    const int64_t Cg = C / G;
    {
        float *dm = malloc(sizeof(float) * C * 3), *ae = dm + C, *se = ae + C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *sr = sb + (c / Cg) * P;
                float t = 0.f;
#pragma omp simd reduction(+ : t)
                for (int64_t p = 0; p < P; p++) t += sr[p] * r[p];
                dm[c] = t / (float)P;
            }
            for (int64_t c = 0; c < C; c++) {
                const float *d = db + c * P, *ar = ab + (c / Cg) * P, *sr = sb + (c / Cg) * P;
                float *o = ob + c * P;
                const float mv = m[c], e = dm[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = d[p] * ar[p] + sr[p] * mv + e;
            }
        } else {
            int32_t *gi = malloc(sizeof(int32_t) * C);
            for (int64_t c = 0; c < C; c++) { dm[c] = 0.f; gi[c] = (int32_t)(c / Cg); }
            for (int64_t c0 = 0; Cg == 1 && C % LANES == 0 && c0 < C; c0 += LANES) {  /* register accumulators */
                vec16 t0 = {0}, t1 = {0};
                int64_t p = 0;
                for (; p + 1 < P; p += 2) {
                    t0 += load16(sb + p * G + c0) * load16(xb + p * C + c0);
                    t1 += load16(sb + (p + 1) * G + c0) * load16(xb + (p + 1) * C + c0);
                }
                if (p < P) t0 += load16(sb + p * G + c0) * load16(xb + p * C + c0);
                store16(dm + c0, t0 + t1);
            }
            for (int64_t p = 0; p < P && !(Cg == 1 && C % LANES == 0); p++) {
                const float *r = xb + p * C, *sr = sb + p * G;
                if (Cg == 1) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) dm[c] += sr[c] * r[c];
                } else {
                    for (int64_t c = 0; c < C; c++) dm[c] += sr[gi[c]] * r[c];
                }
            }
            for (int64_t c = 0; c < C; c++) dm[c] /= (float)P;
            for (int64_t p = 0; p < P; p++) {
                const float *d = db + p * C, *ar = ab + p * G, *sr = sb + p * G;
                float *o = ob + p * C;
                if (Cg == 1) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = d[c] * ar[c] + sr[c] * m[c] + dm[c];
                } else {
                    for (int64_t c = 0; c < C; c++) { ae[c] = ar[gi[c]]; se[c] = sr[gi[c]]; }
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = d[c] * ae[c] + se[c] * m[c] + dm[c];
                }
            }
            free(gi);
        }
        free(dm);
    }
}

void group_grad_input(const float *x, const float *dy, const float *a, const float *dsim, const float *mean,
                      GROUP_DIMS, float *dx) {
    SAMPLES group_grad_input_one(x + b * C * P, dy + b * C * P, a + b * G * P, dsim + b * G * P, mean + b * C, C, P, G,
                                 cl, dx + b * C * P);
}

/* SGE's factor from one sample's similarities, per group over its P positions (Eq. 4 with the spread
 * sqrt(max(var, 1e-24)) + eps, var = sum (c - mean)^2 / dof): n = (c - mean) / (sd + eps);
 * a = n * gamma[g] + beta[g], to which the caller applies the sigmoid (sigmoid_inplace, vectorised: a
 * scalar expf per element took most of the block's time). Writes mean and sd + eps per group.
 * Element (g, p) of a sample's map is at g * P + p (cl == 0) or p * G + g (cl == 1). */
static void sge_factor_one(const float *cb, const float *gamma, const float *beta, float eps, float dof, int64_t G,
                           int64_t P, int cl, float *ob, float *m, float *d) {
    {
        if (!cl) {
            for (int64_t g = 0; g < G; g++) {
                const float *c = cb + g * P;
                float *o = ob + g * P;
                float s1 = 0.f, q = 0.f;
#pragma omp simd reduction(+ : s1)
                for (int64_t p = 0; p < P; p++) s1 += c[p];
                const float mv = s1 / (float)P;
#pragma omp simd reduction(+ : q)
                for (int64_t p = 0; p < P; p++) q += (c[p] - mv) * (c[p] - mv);
                float var = q / dof;
                var = var < 1e-24f ? 1e-24f : var;
                const float dv = sqrtf(var) + eps, w = gamma[g], t = beta[g];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = ((c[p] - mv) / dv) * w + t;
                m[g] = mv; d[g] = dv;
            }
        } else if (G % LANES == 0) {  /* register accumulators (cl_chunk_sum), whole vectors per row */
            float *q = malloc(sizeof(float) * G);  /* the biased variances */
            for (int64_t g0 = 0; g0 < G; g0 += LANES) {
                float M[LANES], R[LANES], W[LANES], T[LANES];
                cl_chunk_sum(cb, G, P, g0, m);
                cl_chunk_sqdev(cb, G, P, g0, m, q);
                for (int64_t j = 0; j < LANES; j++) {
                    float var = q[g0 + j] * (float)P / dof;
                    var = var < 1e-24f ? 1e-24f : var;
                    d[g0 + j] = sqrtf(var) + eps;
                    M[j] = m[g0 + j]; R[j] = d[g0 + j]; W[j] = gamma[g0 + j]; T[j] = beta[g0 + j];
                }
                for (int64_t p = 0; p < P; p++) {
                    const float *restrict c = cb + p * G + g0;
                    float *restrict o = ob + p * G + g0;
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) o[j] = ((c[j] - M[j]) / R[j]) * W[j] + T[j];
                }
            }
            free(q);
        } else {
            float *q = malloc(sizeof(float) * G);
            for (int64_t g = 0; g < G; g++) { m[g] = 0.f; q[g] = 0.f; }
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) m[g] += cb[p * G + g];
            for (int64_t g = 0; g < G; g++) m[g] /= (float)P;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) { const float e = cb[p * G + g] - m[g]; q[g] += e * e; }
            for (int64_t g = 0; g < G; g++) {
                float var = q[g] / dof;
                var = var < 1e-24f ? 1e-24f : var;
                d[g] = sqrtf(var) + eps;
            }
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) ob[p * G + g] = ((cb[p * G + g] - m[g]) / d[g]) * gamma[g] + beta[g];
            free(q);
        }
    }
}

/* Backward of sge_factor_one and the sigmoid for one sample: dsim, and per group the sums for dgamma
 * (sum dz * n) and dbeta (sum dz), dz = da * a * (1 - a). */
static void sge_factor_backward_one(const float *dAb, const float *Ab, const float *cb, const float *gamma,
                                    const float *m, const float *d, float eps, float dof, int64_t G, int64_t P, int cl,
                                    float *ob, float *dg, float *db) {
    {
        float *acc = malloc(sizeof(float) * G * 4), *sdn = acc + G, *k1 = sdn + G, *k2 = k1 + G;
        for (int64_t g = 0; g < G; g++) { dg[g] = 0.f; db[g] = 0.f; sdn[g] = 0.f; acc[g] = 0.f; }
        if (!cl) {
            for (int64_t g = 0; g < G; g++) {
                const float *c = cb + g * P, *dA = dAb + g * P, *A = Ab + g * P;
                const float mv = m[g], dv = d[g], w = gamma[g];
                float sz = 0.f, szn = 0.f, sd_ = 0.f;
#pragma omp simd reduction(+ : sz, szn, sd_)
                for (int64_t p = 0; p < P; p++) {
                    const float dz = dA[p] * A[p] * (1.f - A[p]), cen = c[p] - mv;
                    sz += dz; szn += dz * (cen / dv); sd_ += dz * w * cen;
                }
                db[g] = sz; dg[g] = szn; sdn[g] = sd_;
            }
        } else if (G % LANES == 0) {  /* register accumulators, chunk by chunk */
            for (int64_t g0 = 0; g0 < G; g0 += LANES) {
                float s0[LANES], s1[LANES], s2[LANES], M[LANES], R[LANES], W[LANES];
                for (int64_t j = 0; j < LANES; j++) {
                    s0[j] = 0.f; s1[j] = 0.f; s2[j] = 0.f; M[j] = m[g0 + j]; R[j] = d[g0 + j]; W[j] = gamma[g0 + j];
                }
                for (int64_t p = 0; p < P; p++) {
                    const float *restrict c = cb + p * G + g0, *restrict dA = dAb + p * G + g0, *restrict A = Ab + p * G + g0;
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) {
                        const float dz = dA[j] * A[j] * (1.f - A[j]), cen = c[j] - M[j];
                        s0[j] += dz; s1[j] += dz * (cen / R[j]); s2[j] += dz * W[j] * cen;
                    }
                }
                for (int64_t j = 0; j < LANES; j++) { db[g0 + j] = s0[j]; dg[g0 + j] = s1[j]; sdn[g0 + j] = s2[j]; }
            }
        } else {
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) {
                    const int64_t i = p * G + g;
                    const float dz = dAb[i] * Ab[i] * (1.f - Ab[i]), cen = cb[i] - m[g];
                    db[g] += dz; dg[g] += dz * (cen / d[g]); sdn[g] += dz * gamma[g] * cen;
                }
        }
        /* n = cen / d, d = sd + eps, sd = sqrt(max(var, 1e-24)), var = sum cen^2 / dof:
         * dL/dcen[p] = dz w / d + dvar * 2 cen / dof, then minus its mean over p (cen = c - mean c) */
        for (int64_t g = 0; g < G; g++) {
            const float sd = d[g] - eps, dd = -sdn[g] / (d[g] * d[g]);
            const float dvar = sd * sd > 1e-24f ? dd * 0.5f / sd : 0.f;  /* clamp_min passes it above 1e-24 */
            k1[g] = gamma[g] / d[g]; k2[g] = dvar * 2.f / dof;
        }
        if (!cl) {
            for (int64_t g = 0; g < G; g++) {
                const float *c = cb + g * P, *dA = dAb + g * P, *A = Ab + g * P;
                float *o = ob + g * P;
                const float mv = m[g], u = k1[g], v = k2[g];
                float t = 0.f;
#pragma omp simd reduction(+ : t)
                for (int64_t p = 0; p < P; p++) {
                    const float gp = dA[p] * A[p] * (1.f - A[p]) * u + v * (c[p] - mv);
                    o[p] = gp; t += gp;
                }
                t /= (float)P;
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] -= t;
            }
        } else if (G % LANES == 0) {
            for (int64_t g0 = 0; g0 < G; g0 += LANES) {
                float t[LANES], M[LANES], U[LANES], V[LANES];
                for (int64_t j = 0; j < LANES; j++) { t[j] = 0.f; M[j] = m[g0 + j]; U[j] = k1[g0 + j]; V[j] = k2[g0 + j]; }
                for (int64_t p = 0; p < P; p++) {
                    const float *restrict c = cb + p * G + g0, *restrict dA = dAb + p * G + g0, *restrict A = Ab + p * G + g0;
                    float *restrict o = ob + p * G + g0;
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) {
                        const float gp = dA[j] * A[j] * (1.f - A[j]) * U[j] + V[j] * (c[j] - M[j]);
                        o[j] = gp; t[j] += gp;
                    }
                }
                for (int64_t j = 0; j < LANES; j++) acc[g0 + j] = t[j];
            }
            for (int64_t g = 0; g < G; g++) acc[g] /= (float)P;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) ob[p * G + g] -= acc[g];
        } else {
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) {
                    const int64_t i = p * G + g;
                    const float gp = dAb[i] * Ab[i] * (1.f - Ab[i]) * k1[g] + k2[g] * (cb[i] - m[g]);
                    ob[i] = gp; acc[g] += gp;
                }
            for (int64_t g = 0; g < G; g++) acc[g] /= (float)P;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t g = 0; g < G; g++) ob[p * G + g] -= acc[g];
        }
        free(acc);
    }
}

static void sigmoid_inplace(float *z, int64_t n);

/* SGE at one channel per group, channels_last, C a multiple of LANES (every CIFAR-sized network, where the
 * paper's 64 groups meet C <= 64): sim = m[c] x[c, p] and the factor are formed in registers, LANES channels
 * at a time, with the sums and operations of the general path (group_sim_one, sge_factor_one,
 * sge_factor_backward_one, group_grad_input_one), except that the sigmoid is sigmoid16 and (sim - mu) / d is
 * a product with 1 / d (a division per vector cost more than the rest of a row). No map of them is written:
 * at one channel per group each is as large as x, and writing and reading them back took most of the
 * block's time. sge1_stats: m (mean of x), mu (mean of sim), d = sd + eps of sim, for the chunk. */
INLINE void sge1_stats(const float *xb, int64_t C, int64_t P, int64_t c0, float eps, float dof, float *m, float *mu,
                       float *d) {
    cl_chunk_sum_by(xb, C, P, c0, NULL, m);
    cl_chunk_sum_by(xb, C, P, c0, m, mu);
    cl_chunk_sqdev_by(xb, C, P, c0, m, mu, d);
    for (int64_t j = c0; j < c0 + LANES; j++) {
        float var = d[j] * (float)P / dof;
        var = var < 1e-24f ? 1e-24f : var;
        d[j] = sqrtf(var) + eps;
    }
}

static void sge1_forward_one(const float *xb, const float *gamma, const float *beta, float eps, float dof, int64_t C,
                             int64_t P, float *yb) {
    float *m = malloc(sizeof(float) * C * 3), *mu = m + C, *d = mu + C;
    for (int64_t c0 = 0; c0 < C; c0 += LANES) {
        sge1_stats(xb, C, P, c0, eps, dof, m, mu, d);
        const vec16 M = load16(m + c0), U = load16(mu + c0), R = load16(d + c0), W = load16(gamma + c0),
                    T = load16(beta + c0), IR = 1.f / R;
        for (int64_t p = 0; p < P; p++) {
            const vec16 r = load16(xb + p * C + c0);
            store16(yb + p * C + c0, r * sigmoid16(((r * M - U) * IR) * W + T));
        }
    }
    free(m);
}

static void sge1_backward_one(const float *xb, const float *db, const float *gamma, const float *beta, float eps,
                              float dof, int64_t C, int64_t P, float *ob, float *dg, float *dbeta) {
    float *m = malloc(sizeof(float) * (C * 3 + 2 * P * LANES)), *mu = m + C, *d = mu + C, *A = d + C, *Z = A + P * LANES;
    for (int64_t c0 = 0; c0 < C; c0 += LANES) {
        sge1_stats(xb, C, P, c0, eps, dof, m, mu, d);
        const vec16 M = load16(m + c0), U = load16(mu + c0), R = load16(d + c0), W = load16(gamma + c0),
                    T = load16(beta + c0), IR = 1.f / R, zero = splat16(0.f);
        vec16 s0 = zero, s1 = zero, s2 = zero;
        for (int64_t p = 0; p < P; p++) {  /* a, dz = (dy x) a (1 - a), and the factor's sums */
            const vec16 r = load16(xb + p * C + c0), cen = r * M - U, n = cen * IR, a = sigmoid16(n * W + T);
            const vec16 dz = (load16(db + p * C + c0) * r) * a * (1.f - a);
            store16(A + p * LANES, a); store16(Z + p * LANES, dz);
            s0 += dz; s1 += dz * n; s2 += dz * W * cen;
        }
        store16(dbeta + c0, s0); store16(dg + c0, s1);
        float k1[LANES], k2[LANES], sdn[LANES];
        store16(sdn, s2);
        for (int64_t j = 0; j < LANES; j++) {  /* as in sge_factor_backward_one */
            const float dv = d[c0 + j], sd = dv - eps, dd = -sdn[j] / (dv * dv);
            const float dvar = sd * sd > 1e-24f ? dd * 0.5f / sd : 0.f;
            k1[j] = gamma[c0 + j] / dv; k2[j] = dvar * 2.f / dof;
        }
        const vec16 K1 = load16(k1), K2 = load16(k2);
        vec16 t = zero;
        for (int64_t p = 0; p < P; p++) {  /* dL/dsim before its mean over p is taken off */
            const vec16 gp = load16(Z + p * LANES) * K1 + K2 * (load16(xb + p * C + c0) * M - U);
            store16(Z + p * LANES, gp); t += gp;
        }
        const vec16 tp = t / (float)P;
        vec16 t0 = zero, t1 = zero;
        int64_t p = 0;
        for (; p + 1 < P; p += 2) {  /* dmean = sum_p dsim x / P, as group_grad_input_one sums it */
            t0 += (load16(Z + p * LANES) - tp) * load16(xb + p * C + c0);
            t1 += (load16(Z + (p + 1) * LANES) - tp) * load16(xb + (p + 1) * C + c0);
        }
        if (p < P) t0 += (load16(Z + p * LANES) - tp) * load16(xb + p * C + c0);
        const vec16 DM = (t0 + t1) / (float)P;
        for (p = 0; ob && p < P; p++)
            store16(ob + p * C + c0, load16(db + p * C + c0) * load16(A + p * LANES) + (load16(Z + p * LANES) - tp) * M + DM);
    }
    free(m);
}

/* SGE's whole gate, one sample at a time while the sample is in cache: the similarities, the factor and
 * its sigmoid go to per-thread scratch (G P floats each) and never to memory, so the forward reads x and
 * writes y once, and saves nothing but x. sge_backward recomputes sim and a from x with the same calls
 * (the same values), then the factor's gradient and dL/dx from the sample in cache: it reads x and dL/dy
 * and writes dL/dx once. dgamma, dbeta (B, G): per-sample sums, which the caller adds over the batch;
 * dx may be NULL (no input gradient). */
void sge_forward(const float *x, const float *gamma, const float *beta, float eps, float dof, GROUP_DIMS, float *y) {
    SAMPLES {
        const int64_t n = G * P;
        if (cl && G == C && C % LANES == 0) {
            sge1_forward_one(x + b * C * P, gamma, beta, eps, dof, C, P, y + b * C * P);
            continue;
        }
        float *s = malloc(sizeof(float) * (2 * n + C + 2 * G)), *a = s + n, *m = a + n, *mu = m + C, *den = mu + G;
        group_sim_one(x + b * C * P, C, P, G, cl, m, s);
        sge_factor_one(s, gamma, beta, eps, dof, G, P, cl, a, mu, den);
        sigmoid_inplace(a, n);
        group_apply_one(x + b * C * P, a, C, P, G, cl, y + b * C * P);
        free(s);
    }
}

void sge_backward(const float *x, const float *dy, const float *gamma, const float *beta, float eps, float dof,
                  GROUP_DIMS, float *dx, float *dgamma, float *dbeta) {
    SAMPLES {
        const int64_t n = G * P;
        const float *xb = x + b * C * P, *db = dy + b * C * P;
        if (cl && G == C && C % LANES == 0) {
            sge1_backward_one(xb, db, gamma, beta, eps, dof, C, P, dx ? dx + b * C * P : NULL, dgamma + b * G,
                              dbeta + b * G);
            continue;
        }
        float *s = malloc(sizeof(float) * (4 * n + C + 2 * G)), *a = s + n, *da = a + n, *ds = da + n;
        float *m = ds + n, *mu = m + C, *den = mu + G;
        group_sim_one(xb, C, P, G, cl, m, s);
        sge_factor_one(s, gamma, beta, eps, dof, G, P, cl, a, mu, den);
        sigmoid_inplace(a, n);
        group_grad_factor_one(xb, db, C, P, G, cl, da);
        sge_factor_backward_one(da, a, s, gamma, mu, den, eps, dof, G, P, cl, ds, dgamma + b * G, dbeta + b * G);
        if (dx) group_grad_input_one(xb, db, a, ds, m, C, P, G, cl, dx + b * C * P);
        free(s);
    }
}

/* SimAM (Yang et al., ICML 2021): per (sample, channel) over the P positions, mu = mean x,
 * k = 1 / (4 (sum (x - mu)^2 / n + lambda)), y = x * sigmoid((x - mu)^2 k + 0.5); n = P - 1 (the
 * block passes it). The sample's statistics and output in one go while it is in cache. */
void simam_forward(const float *x, int64_t B, int64_t C, int64_t P, int cl, int nt, float lambda, float n, float *y,
                   float *mu, float *kk) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *yb = y + b * C * P, *m = mu + b * C, *k = kk + b * C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + c * P;
                float s1 = 0.f, q = 0.f;
#pragma omp simd reduction(+ : s1)
                for (int64_t p = 0; p < P; p++) s1 += r[p];
                const float mv = s1 / (float)P;
#pragma omp simd reduction(+ : q)
                for (int64_t p = 0; p < P; p++) q += (r[p] - mv) * (r[p] - mv);
                const float kv = 1.f / (4.f * (q / n + lambda));
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float d = r[p] - mv;
                    o[p] = sigmoid_approx(d * d * kv + 0.5f) * r[p];
                }
                m[c] = mv; k[c] = kv;
            }
        } else {
            float *q = malloc(sizeof(float) * C);
            if (C % LANES == 0) {  /* register accumulators (cl_chunk_sum); q is the biased variance here */
                for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                    cl_chunk_sum(xb, C, P, c0, m);
                    cl_chunk_sqdev(xb, C, P, c0, m, q);
                }
                for (int64_t c = 0; c < C; c++) q[c] *= (float)P;
            } else {
                for (int64_t c = 0; c < C; c++) { m[c] = 0.f; q[c] = 0.f; }
                for (int64_t p = 0; p < P; p++)
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) m[c] += xb[p * C + c];
                for (int64_t c = 0; c < C; c++) m[c] /= (float)P;
                for (int64_t p = 0; p < P; p++)
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) { const float d = xb[p * C + c] - m[c]; q[c] += d * d; }
            }
            for (int64_t c = 0; c < C; c++) k[c] = 1.f / (4.f * (q[c] / n + lambda));
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float *o = yb + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float d = r[c] - m[c];
                    o[c] = sigmoid_approx(d * d * k[c] + 0.5f) * r[c];
                }
            }
            free(q);
        }
    }
}

/* SimAM's gradient, the statistics' terms in closed form: with c = x - mu, a the gate and
 * gz = dy a (1 - a) x: dx = dy a + 2 k c gz + c (2 / n) dvar + dmu / P, dvar = -4 k^2 sum gz c^2,
 * dmu = -2 k sum gz c. */
void simam_backward(const float *x, const float *dy, const float *mu, const float *kk, int64_t B, int64_t C,
                    int64_t P, int cl, int nt, float n, float *dx) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *m = mu + b * C, *k = kk + b * C;
        float *ob = dx + b * C * P;
        float *s1 = malloc(sizeof(float) * C * 4), *s2 = s1 + C, *u = s2 + C, *v = u + C;
        for (int64_t c = 0; c < C; c++) { s1[c] = 0.f; s2[c] = 0.f; }
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                const float mv = m[c], kv = k[c];
                float t1 = 0.f, t2 = 0.f;
#pragma omp simd reduction(+ : t1, t2)
                for (int64_t p = 0; p < P; p++) {
                    const float cc = r[p] - mv, a = sigmoid_approx(cc * cc * kv + 0.5f);
                    const float gz = d[p] * a * (1.f - a) * r[p];
                    t1 += gz * cc * cc; t2 += gz * cc;
                }
                s1[c] = t1; s2[c] = t2;
            }
        } else if (C % LANES == 0) {  /* register accumulators, chunk by chunk (see cl_chunk_sum) */
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                float t1[LANES], t2[LANES], M[LANES], K[LANES];
                for (int64_t j = 0; j < LANES; j++) { t1[j] = 0.f; t2[j] = 0.f; M[j] = m[c0 + j]; K[j] = k[c0 + j]; }
                for (int64_t p = 0; p < P; p++) {
                    const float *restrict r = xb + p * C + c0, *restrict d = db + p * C + c0;
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) {
                        const float cc = r[j] - M[j], a = sigmoid_approx(cc * cc * K[j] + 0.5f);
                        const float gz = d[j] * a * (1.f - a) * r[j];
                        t1[j] += gz * cc * cc; t2[j] += gz * cc;
                    }
                }
                for (int64_t j = 0; j < LANES; j++) { s1[c0 + j] = t1[j]; s2[c0 + j] = t2[j]; }
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float cc = r[c] - m[c], a = sigmoid_approx(cc * cc * k[c] + 0.5f);
                    const float gz = d[c] * a * (1.f - a) * r[c];
                    s1[c] += gz * cc * cc; s2[c] += gz * cc;
                }
            }
        }
        for (int64_t c = 0; c < C; c++) {
            const float dvar = -4.f * k[c] * k[c] * s1[c], dmu = -2.f * k[c] * s2[c];
            u[c] = dvar * (2.f / n); v[c] = dmu / (float)P;
        }
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float *o = ob + c * P;
                const float mv = m[c], kv = k[c], uv = u[c], vv = v[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float cc = r[p] - mv, a = sigmoid_approx(cc * cc * kv + 0.5f);
                    const float ga = d[p] * a, gz = ga * (1.f - a) * r[p];
                    o[p] = ga + 2.f * kv * cc * gz + cc * uv + vv;
                }
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                float *o = ob + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float cc = r[c] - m[c], a = sigmoid_approx(cc * cc * k[c] + 0.5f);
                    const float ga = d[c] * a, gz = ga * (1.f - a) * r[c];
                    o[c] = ga + 2.f * k[c] * cc * gz + cc * u[c] + v[c];
                }
            }
        }
        free(s1);
    }
}

/* BAM's combination (Park et al., BMVC 2018): y = x + x * sigmoid(z), z = a[b, c] + s[b, p] (mul == 0, the
 * paper's sum of the two branches) or a[b, c] * s[b, p] (mul == 1, the authors' code). One pass each way;
 * backward writes the direct dL/dx = dy (1 + m) and reduces dz = dy x m (1 - m) into
 * da[b, c] = sum_p dz (* s) and ds[b, p] = sum_c dz (* a), m = sigmoid(z). */
INLINE float bam_z(float av, float sv, int mul) { return mul ? av * sv : av + sv; }

void bam_apply(const float *x, const float *a, const float *s, int mul, int64_t B, int64_t C, int64_t P, int cl, int nt,
               float *y) {
    SAMPLES {
        const float *xb = x + b * C * P, *A = a + b * C, *S = s + b * P;
        float *yb = y + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + c * P;
                const float av = A[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = r[p] + r[p] * sigmoid_approx(bam_z(av, S[p], mul));
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float *o = yb + p * C;
                const float sv = S[p];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] = r[c] + r[c] * sigmoid_approx(bam_z(A[c], sv, mul));
            }
        }
    }
}

void bam_backward(const float *x, const float *dy, const float *a, const float *s, int mul, int64_t B, int64_t C,
                  int64_t P, int cl, int nt, float *dx, float *da, float *ds) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *A = a + b * C, *S = s + b * P;
        float *ob = dx + b * C * P, *DA = da + b * C, *DS = ds + b * P;
        if (!cl) {
            for (int64_t p = 0; p < P; p++) DS[p] = 0.f;
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float *o = ob + c * P;
                const float av = A[c];
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t p = 0; p < P; p++) {
                    const float m = sigmoid_approx(bam_z(av, S[p], mul)), dz = d[p] * r[p] * m * (1.f - m);
                    o[p] = d[p] + d[p] * m;
                    acc += mul ? dz * S[p] : dz;
                    DS[p] += mul ? dz * av : dz;
                }
                DA[c] = acc;
            }
        } else {
            for (int64_t c = 0; c < C; c++) DA[c] = 0.f;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                float *o = ob + p * C;
                const float sv = S[p];
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t c = 0; c < C; c++) {
                    const float m = sigmoid_approx(bam_z(A[c], sv, mul)), dz = d[c] * r[c] * m * (1.f - m);
                    o[c] = d[c] + d[c] * m;
                    acc += mul ? dz * A[c] : dz;
                    DA[c] += mul ? dz * sv : dz;
                }
                DS[p] = acc;
            }
        }
    }
}

/* The kernels' sigmoid on n values (for the tests: its accuracy against torch.sigmoid). */
void sigmoid_values(const float *z, int64_t n, float *out) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = sigmoid_approx(z[i]);
}

/* The same through sigmoid16, 16 values at a time (n a multiple of 16; for the tests). */
void sigmoid16_values(const float *z, int64_t n, float *out) {
    for (int64_t i = 0; i + LANES <= n; i += LANES) store16(out + i, sigmoid16(load16(z + i)));
}

/* Channel shuffle by 2 of one channels_last row of C values (C a multiple of LANES), out[2j + i] =
 * v[i C/2 + j], as vector interleaves; and its inverse (deinterleave). v needs LANES floats of slack past C. */
INLINE void shuffle_row16(const float *v, int64_t C, float *out) {
    for (int64_t k = 0; k < C / LANES; k++)
        store16(out + LANES * k, SHUFFLE16(load16(v + 8 * k), load16(v + C / 2 + 8 * k),
                                           0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
}

INLINE void unshuffle_row16(const float *d, int64_t C, float *g) {
    for (int64_t k = 0; k < C / LANES; k++) {
        float t[LANES];
        const vec16 v = load16(d + LANES * k);
        store16(t, SHUFFLE16(v, v, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
        memcpy(g + 8 * k, t, 8 * sizeof(float));
        memcpy(g + C / 2 + 8 * k, t + 8, 8 * sizeof(float));
    }
}

/* Affine sigmoid gates (SA-Net's shuffle attention, Zhang & Yang, ICASSP 2021): per (sample, channel)
 * s, t; y = x * sigmoid(x * s + t), written to channel perm(c) = 2 (c mod C/2) + c div (C/2) when
 * shuffle (ShuffleNet's channel shuffle by 2), else to c. channel_moments gives the statistics. */
static int32_t *shuffle_perm(int64_t C, int shuffle) {
    int32_t *pm = malloc(sizeof(int32_t) * C);
    for (int64_t c = 0; c < C; c++) pm[c] = (int32_t)(shuffle ? 2 * (c % (C / 2)) + c / (C / 2) : c);
    return pm;
}

/* mean[b, c] and the biased variance var[b, c] over positions (two passes over the cached sample);
 * var == NULL: the mean alone (one pass). */
void channel_moments(const float *x, int64_t B, int64_t C, int64_t P, int cl, int nt, float *mean, float *var) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *m = mean + b * C, *v = var ? var + b * C : NULL;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float s = 0.f, q = 0.f;
#pragma omp simd reduction(+ : s)
                for (int64_t p = 0; p < P; p++) s += r[p];
                const float mv = s / (float)P;
                m[c] = mv;
                if (!v) continue;
#pragma omp simd reduction(+ : q)
                for (int64_t p = 0; p < P; p++) q += (r[p] - mv) * (r[p] - mv);
                v[c] = q / (float)P;
            }
        } else if (C % LANES == 0) {
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                cl_chunk_sum(xb, C, P, c0, m);
                if (v) cl_chunk_sqdev(xb, C, P, c0, m, v);
            }
        } else {
            for (int64_t c = 0; c < C; c++) m[c] = 0.f;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t c = 0; c < C; c++) m[c] += xb[p * C + c];
            for (int64_t c = 0; c < C; c++) m[c] /= (float)P;
            if (!v) continue;
            for (int64_t c = 0; c < C; c++) v[c] = 0.f;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t c = 0; c < C; c++) { const float d = xb[p * C + c] - m[c]; v[c] += d * d; }
            for (int64_t c = 0; c < C; c++) v[c] /= (float)P;
        }
    }
}

void affine_gate_forward(const float *x, const float *s, const float *t, int shuffle, int64_t B, int64_t C, int64_t P,
                         int cl, int nt, float *y) {
    int32_t *pm = shuffle_perm(C, shuffle);
    SAMPLES {
        const float *xb = x + b * C * P, *S = s + b * C, *T = t + b * C;
        float *yb = y + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + (int64_t)pm[c] * P;
                const float sv = S[c], tv = T[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = r[p] * sigmoid_approx(r[p] * sv + tv);
            }
        } else {
            float *v = calloc(C + LANES, sizeof(float));
            const int fast = shuffle && C % LANES == 0;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float *o = yb + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) v[c] = r[c] * sigmoid_approx(r[c] * S[c] + T[c]);
                if (fast) shuffle_row16(v, C, o);
                else for (int64_t c = 0; c < C; c++) o[pm[c]] = v[c];
            }
            free(v);
        }
    }
    free(pm);
}

/* With g = dL/dy at perm(c), a the gate and gz = g a (1 - a) x: gs[b, c] = sum_p gz x, gt[b, c] = sum_p gz. */
void affine_gate_reduce(const float *x, const float *dy, const float *s, const float *t, int shuffle, int64_t B,
                        int64_t C, int64_t P, int cl, int nt, float *gs, float *gt) {
    int32_t *pm = shuffle_perm(C, shuffle);
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *S = s + b * C, *T = t + b * C;
        float *GS = gs + b * C, *GT = gt + b * C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + (int64_t)pm[c] * P;
                const float sv = S[c], tv = T[c];
                float u = 0.f, w = 0.f;
#pragma omp simd reduction(+ : u, w)
                for (int64_t p = 0; p < P; p++) {
                    const float a = sigmoid_approx(r[p] * sv + tv), gz = d[p] * a * (1.f - a) * r[p];
                    u += gz * r[p]; w += gz;
                }
                GS[c] = u; GT[c] = w;
            }
        } else {
            float *g = malloc(sizeof(float) * C);
            for (int64_t c = 0; c < C; c++) { GS[c] = 0.f; GT[c] = 0.f; }
            const int fast = shuffle && C % LANES == 0;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                if (fast) unshuffle_row16(d, C, g);
                else for (int64_t c = 0; c < C; c++) g[c] = d[pm[c]];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float a = sigmoid_approx(r[c] * S[c] + T[c]), gz = g[c] * a * (1.f - a) * r[c];
                    GS[c] += gz * r[c]; GT[c] += gz;
                }
            }
            free(g);
        }
    }
    free(pm);
}

/* dx = g a + gz s + x beta[b, c] + alpha[b, c] (the statistics' gradients folded into beta, alpha). */
void affine_gate_grad_input(const float *x, const float *dy, const float *s, const float *t, const float *beta,
                            const float *alpha, int shuffle, int64_t B, int64_t C, int64_t P, int cl, int nt, float *dx) {
    int32_t *pm = shuffle_perm(C, shuffle);
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *S = s + b * C, *T = t + b * C;
        const float *Be = beta + b * C, *Al = alpha + b * C;
        float *ob = dx + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + (int64_t)pm[c] * P;
                float *o = ob + c * P;
                const float sv = S[c], tv = T[c], be = Be[c], al = Al[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float a = sigmoid_approx(r[p] * sv + tv), ga = d[p] * a;
                    o[p] = ga + ga * (1.f - a) * r[p] * sv + r[p] * be + al;
                }
            }
        } else {
            float *g = malloc(sizeof(float) * C);
            const int fast = shuffle && C % LANES == 0;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                float *o = ob + p * C;
                if (fast) unshuffle_row16(d, C, g);
                else for (int64_t c = 0; c < C; c++) g[c] = d[pm[c]];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float a = sigmoid_approx(r[c] * S[c] + T[c]), ga = g[c] * a;
                    o[c] = ga + ga * (1.f - a) * r[c] * S[c] + r[c] * Be[c] + Al[c];
                }
            }
            free(g);
        }
    }
    free(pm);
}

/* Strip sigmoid gates (strip pooling attention as in timm's StripAttention, shuffled coordinate
 * attention): y = x * sigmoid(zh[c, h] + zw[c, w]) (+ x with the skip); zh, zw from the strip means. */
void strip_sigmoid_apply(const float *x, const float *zh, const float *zw, int skip, TRIP_DIMS, float *y) {
    SAMPLES {
        const float *xb = x + b * C * H * W;
        float *yb = y + b * C * H * W;
        float *th = malloc(sizeof(float) * C * (H + W)), *tw = th + C * H;
        trip_factors(zh + b * C * H, zw + b * C * W, C, H, W, cl, th, tw);
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *g = tw + c * W;
                    float *o = yb + (c * H + h) * W;
                    const float a = th[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++) {
                        const float v = r[w] * sigmoid_approx(a + g[w]);
                        o[w] = skip ? v + r[w] : v;  /* not v + 0 * x: an inf x would give NaN */
                    }
                }
        } else if (0 && C % LANES == 0) {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *a = th + h * C, *g = tw + w * C;
                    float *o = yb + (h * W + w) * C;
                    for (int64_t c = 0; c < C; c += LANES) {
                        const vec16 xr = load16(r + c), v = xr * sigmoid16(load16(a + c) + load16(g + c));
                        store16(o + c, skip ? v + xr : v);
                    }
                }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *a = th + h * C, *g = tw + w * C;
                    float *o = yb + (h * W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) {
                        const float v = r[c] * sigmoid_approx(a[c] + g[c]);
                        o[c] = skip ? v + r[c] : v;
                    }
                }
        }
        free(th);
    }
}

/* dz = dy * x * a (1 - a), a = sigmoid(zh + zw): dzh[c, h] = sum_w dz, dzw[c, w] = sum_h dz. */
void strip_sigmoid_reduce(const float *x, const float *dy, const float *zh, const float *zw, TRIP_DIMS, float *dzh,
                          float *dzw) {
    SAMPLES {
        const float *xb = x + b * C * H * W, *db = dy + b * C * H * W;
        float *Dh = dzh + b * C * H, *Dw = dzw + b * C * W;
        float *th = malloc(sizeof(float) * C * (H + W)), *tw = th + C * H;
        trip_factors(zh + b * C * H, zw + b * C * W, C, H, W, cl, th, tw);
        if (!cl) {
            for (int64_t k = 0; k < C * W; k++) Dw[k] = 0.f;
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *d = db + (c * H + h) * W, *g = tw + c * W;
                    float *dw_ = Dw + c * W;
                    const float a0 = th[c * H + h];
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t w = 0; w < W; w++) {
                        const float a = sigmoid_approx(a0 + g[w]), dz = d[w] * r[w] * a * (1.f - a);
                        s += dz; dw_[w] += dz;
                    }
                    Dh[c * H + h] = s;
                }
        } else {
            float *sh = malloc(sizeof(float) * C), *sw = calloc(W * C, sizeof(float));
            for (int64_t h = 0; h < H; h++) {
                for (int64_t c = 0; c < C; c++) sh[c] = 0.f;
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C, *a0 = th + h * C, *g = tw + w * C;
                    float *t = sw + w * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) {
                        const float a = sigmoid_approx(a0[c] + g[c]), dz = d[c] * r[c] * a * (1.f - a);
                        sh[c] += dz; t[c] += dz;
                    }
                }
                for (int64_t c = 0; c < C; c++) Dh[c * H + h] = sh[c];
            }
            for (int64_t w = 0; w < W; w++)
                for (int64_t c = 0; c < C; c++) Dw[c * W + w] = sw[w * C + c];
            free(sh); free(sw);
        }
        free(th);
    }
}

/* dx = dy * (a + skip) + dmean_w[c, h] / W + dmean_h[c, w] / H. */
void strip_sigmoid_grad_input(const float *dy, const float *zh, const float *zw, const float *dmw, const float *dmh,
                              int skip, TRIP_DIMS, float *dx) {
    const float k0 = skip ? 1.f : 0.f;
    SAMPLES {
        const float *db = dy + b * C * H * W;
        float *ob = dx + b * C * H * W;
        float *th = malloc(sizeof(float) * 2 * C * (H + W)), *tw = th + C * H, *eh = tw + C * W, *ew = eh + C * H;
        trip_factors(zh + b * C * H, zw + b * C * W, C, H, W, cl, th, tw);
        for (int64_t c = 0; c < C; c++) {
            for (int64_t h = 0; h < H; h++) eh[cl ? h * C + c : c * H + h] = dmw[b * C * H + c * H + h] / (float)W;
            for (int64_t w = 0; w < W; w++) ew[cl ? w * C + c : c * W + w] = dmh[b * C * W + c * W + w] / (float)H;
        }
        if (!cl) {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *d = db + (c * H + h) * W, *g = tw + c * W, *e = ew + c * W;
                    float *o = ob + (c * H + h) * W;
                    const float a0 = th[c * H + h], ea = eh[c * H + h];
#pragma omp simd
                    for (int64_t w = 0; w < W; w++) o[w] = d[w] * (sigmoid_approx(a0 + g[w]) + k0) + ea + e[w];
                }
        } else if (C % LANES == 0) {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++)
                    for (int64_t c = 0; c < C; c += LANES) {
                        const int64_t q = (h * W + w) * C + c;
                        const vec16 a = sigmoid16(load16(th + h * C + c) + load16(tw + w * C + c));
                        store16(ob + q, load16(db + q) * (a + k0) + load16(eh + h * C + c) + load16(ew + w * C + c));
                    }
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *d = db + (h * W + w) * C, *a0 = th + h * C, *g = tw + w * C;
                    const float *ea = eh + h * C, *e = ew + w * C;
                    float *o = ob + (h * W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = d[c] * (sigmoid_approx(a0[c] + g[c]) + k0) + ea[c] + e[c];
                }
        }
        free(th);
    }
}

/* Global context blocks (GCNet, Cao et al., 2019): logits[p] = sum_c w[b, c] x[c, p] (the 1x1 conv to one
 * channel; also dL/dattn with w = dL/dcontext), context[c] = sum_p q[b, p] x[c, p] (attention pooling;
 * also the conv's weight gradient with q = dL/dlogits), y = x * s[b, c] + t[b, c]. */
void channel_weighted_sum(const float *x, const float *w, int64_t B, int64_t C, int64_t P, int cl, int nt, float *out) {
    SAMPLES {
        const float *xb = x + b * C * P, *wb = w + b * C;
        float *o = out + b * P;
        if (!cl) {
            for (int64_t p = 0; p < P; p++) o[p] = 0.f;
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                const float wv = wb[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] += wv * r[p];
            }
        } else if (C % LANES == 0) {  /* 16 positions' sums over C at once (reduce16_sum) */
            for (int64_t p0 = 0; p0 < P; p0 += 16) {
                const int64_t np = P - p0 < 16 ? P - p0 : 16;
                vec16 S[16];
                for (int64_t q = 0; q < 16; q++) {
                    const vec16 z = {0};
                    S[q] = z;
                    if (q >= np) continue;
                    const float *r = xb + (p0 + q) * C;
                    for (int64_t c0 = 0; c0 < C; c0 += LANES) S[q] += load16(wb + c0) * load16(r + c0);
                }
                float sa[16];
                store16(sa, reduce16_sum(S));
                for (int64_t q = 0; q < np; q++) o[p0 + q] = sa[q];
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float s[LANES] = {0}, t = 0.f;
                int64_t c = 0;
                for (; c + LANES <= C; c += LANES)
                    for (int64_t j = 0; j < LANES; j++) s[j] += wb[c + j] * r[c + j];
                for (; c < C; c++) t += wb[c] * r[c];
                for (int64_t j = 0; j < LANES; j++) t += s[j];
                o[p] = t;
            }
        }
    }
}

void position_weighted_pool(const float *x, const float *q, int64_t B, int64_t C, int64_t P, int cl, int nt,
                            float *out) {
    SAMPLES {
        const float *xb = x + b * C * P, *qb = q + b * P;
        float *o = out + b * C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float s = 0.f;
#pragma omp simd reduction(+ : s)
                for (int64_t p = 0; p < P; p++) s += qb[p] * r[p];
                o[c] = s;
            }
        } else if (C % LANES == 0) {  /* register accumulators, two chains over alternate rows */
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                vec16 s0 = {0}, s1 = {0};
                int64_t p = 0;
                for (; p + 1 < P; p += 2) {
                    s0 += qb[p] * load16(xb + p * C + c0);
                    s1 += qb[p + 1] * load16(xb + (p + 1) * C + c0);
                }
                if (p < P) s0 += qb[p] * load16(xb + p * C + c0);
                store16(o + c0, s0 + s1);
            }
        } else {
            for (int64_t c = 0; c < C; c++) o[c] = 0.f;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                const float qv = qb[p];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] += qv * r[c];
            }
        }
    }
}

/* y = x * s[b, c] + t[b, c]; s == NULL: 1 (y = x + t), t == NULL: 0. */
void scale_shift(const float *x, const float *s, const float *t, int64_t B, int64_t C, int64_t P, int cl, int nt,
                 float *y) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *yb = y + b * C * P;
        float *S = malloc(sizeof(float) * 2 * C), *T = S + C;
        for (int64_t c = 0; c < C; c++) { S[c] = s ? s[b * C + c] : 1.f; T[c] = t ? t[b * C + c] : 0.f; }
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + c * P;
                const float sv = S[c], tv = T[c];
                if (s) {
#pragma omp simd
                    for (int64_t p = 0; p < P; p++) o[p] = r[p] * sv + tv;
                } else {
#pragma omp simd
                    for (int64_t p = 0; p < P; p++) o[p] = r[p] + tv;
                }
            }
        } else if (C % LANES == 0) {  /* whole vectors per row (see cl_chunk_sum) */
            for (int64_t p = 0; p < P; p++) {
                const float *restrict r = xb + p * C;
                float *restrict o = yb + p * C;
                for (int64_t c0 = 0; c0 < C; c0 += LANES)
                    for (int64_t j = 0; j < LANES; j++) o[c0 + j] = r[c0 + j] * S[c0 + j] + T[c0 + j];
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float *o = yb + p * C;
                if (s) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = r[c] * S[c] + T[c];
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = r[c] + T[c];
                }
            }
        }
        free(S);
    }
}

/* ds[b, c] = sum_p dy * x, dt[b, c] = sum_p dy (each where not NULL). */
void scale_shift_reduce(const float *x, const float *dy, int64_t B, int64_t C, int64_t P, int cl, int nt, float *ds,
                        float *dt) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float u = 0.f, v = 0.f;
#pragma omp simd reduction(+ : u, v)
                for (int64_t p = 0; p < P; p++) { u += d[p] * r[p]; v += d[p]; }
                if (ds) ds[b * C + c] = u;
                if (dt) dt[b * C + c] = v;
            }
        } else if (C % LANES == 0) {  /* double accumulators in registers over alternate rows (see cl_chunk_sum) */
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                double u0[LANES], u1[LANES], v0[LANES], v1[LANES];
                for (int64_t j = 0; j < LANES; j++) { u0[j] = 0.; u1[j] = 0.; v0[j] = 0.; v1[j] = 0.; }
                int64_t p = 0;
                for (; p + 1 < P; p += 2) {
                    const float *restrict r0 = xb + p * C + c0, *restrict d0 = db + p * C + c0;
                    const float *restrict r1 = r0 + C, *restrict d1 = d0 + C;
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++) {
                        u0[j] += (double)(d0[j] * r0[j]); v0[j] += (double)d0[j];
                        u1[j] += (double)(d1[j] * r1[j]); v1[j] += (double)d1[j];
                    }
                }
                if (p < P)
                    for (int64_t j = 0; j < LANES; j++) {
                        u0[j] += (double)(db[p * C + c0 + j] * xb[p * C + c0 + j]); v0[j] += (double)db[p * C + c0 + j];
                    }
                for (int64_t j = 0; j < LANES; j++) {
                    if (ds) ds[b * C + c0 + j] = (float)(u0[j] + u1[j]);
                    if (dt) dt[b * C + c0 + j] = (float)(v0[j] + v1[j]);
                }
            }
        } else {
            float *u = calloc(2 * C, sizeof(float)), *v = u + C;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) { u[c] += d[c] * r[c]; v[c] += d[c]; }
            }
            for (int64_t c = 0; c < C; c++) { if (ds) ds[b * C + c] = u[c]; if (dt) dt[b * C + c] = v[c]; }
            free(u);
        }
    }
}

/* GCNet's input gradient: dx = dy * s[c] + dctx[c] * attn[p] + dlogits[p] * w[c] (s == NULL: 1). */
void gc_grad_input(const float *dy, const float *s, const float *dctx, const float *attn, const float *dlog,
                   const float *w, int64_t B, int64_t C, int64_t P, int cl, int nt, float *dx) {
    SAMPLES {
        const float *db = dy + b * C * P, *K = dctx + b * C, *A = attn + b * P, *L = dlog + b * P;
        float *ob = dx + b * C * P;
        float *S = malloc(sizeof(float) * C);
        for (int64_t c = 0; c < C; c++) S[c] = s ? s[b * C + c] : 1.f;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *d = db + c * P;
                float *o = ob + c * P;
                const float sv = S[c], kv = K[c], wv = w[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = d[p] * sv + kv * A[p] + L[p] * wv;
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *d = db + p * C;
                float *o = ob + p * C;
                const float av = A[p], lv = L[p];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] = d[c] * S[c] + K[c] * av + lv * w[c];
            }
        }
        free(S);
    }
}

/* The input gradient of a channel gate on moments, y = x * g[b, c] with g a function of the mean m and the
 * variance over positions: dx = dy * g[c] + (x - m[c]) * f[c] + e[c] (f == NULL: no x term; x, m unused).
 * x - m first: x * f - m * f would cancel where the mean is large next to the spread. */
void moment_grad_input(const float *dy, const float *g, const float *x, const float *m, const float *f, const float *e,
                       int64_t B, int64_t C, int64_t P, int cl, int nt, float *dx) {
    if (!f) { scale_shift(dy, g, e, B, C, P, cl, nt, dx); return; }
    SAMPLES {
        const float *db = dy + b * C * P, *xb = x + b * C * P;
        const float *G = g + b * C, *M = m + b * C, *F = f + b * C, *E = e + b * C;
        float *ob = dx + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *restrict d = db + c * P, *restrict r = xb + c * P;
                float *restrict o = ob + c * P;
                const float gv = G[c], mv = M[c], fv = F[c], ev = E[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = d[p] * gv + (r[p] - mv) * fv + ev;
            }
        } else if (C % LANES == 0) {
            for (int64_t p = 0; p < P; p++) {
                const float *restrict d = db + p * C, *restrict r = xb + p * C;
                float *restrict o = ob + p * C;
                for (int64_t c0 = 0; c0 < C; c0 += LANES)
#pragma omp simd
                    for (int64_t j = 0; j < LANES; j++)
                        o[c0 + j] = d[c0 + j] * G[c0 + j] + (r[c0 + j] - M[c0 + j]) * F[c0 + j] + E[c0 + j];
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *d = db + p * C, *r = xb + p * C;
                float *o = ob + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] = d[c] * G[c] + (r[c] - M[c]) * F[c] + E[c];
            }
        }
    }
}

/* A channel gate on a weighted sum over positions (FcaNet's DCT coefficient per channel): s[b, c] = sum_p
 * x[b, c, p] * wt[c, p], with wt laid out as the map (NCHW: (C, P); channels_last: (P, C)). */
void channel_weighted_pool(const float *x, const float *wt, int64_t B, int64_t C, int64_t P, int cl, int nt,
                           float *out) {
    SAMPLES {
        const float *xb = x + b * C * P;
        float *o = out + b * C;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *q = wt + c * P;
                float s = 0.f;
#pragma omp simd reduction(+ : s)
                for (int64_t p = 0; p < P; p++) s += r[p] * q[p];
                o[c] = s;
            }
        } else if (C % LANES == 0) {  /* whole vectors, two chains over alternate rows */
            for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                vec16 s0 = {0}, s1 = {0};
                int64_t p = 0;
                for (; p + 1 < P; p += 2) {
                    s0 += load16(xb + p * C + c0) * load16(wt + p * C + c0);
                    s1 += load16(xb + (p + 1) * C + c0) * load16(wt + (p + 1) * C + c0);
                }
                if (p < P) s0 += load16(xb + p * C + c0) * load16(wt + p * C + c0);
                store16(o + c0, s0 + s1);
            }
        } else {
            for (int64_t c = 0; c < C; c++) o[c] = 0.f;
            for (int64_t p = 0; p < P; p++)
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] += xb[p * C + c] * wt[p * C + c];
        }
    }
}

/* Its input gradient: dx = dy * g[b, c] + e[b, c] * wt[c, p] (wt laid out as in channel_weighted_pool). */
void weighted_grad_input(const float *dy, const float *g, const float *wt, const float *e, int64_t B, int64_t C,
                         int64_t P, int cl, int nt, float *dx) {
    SAMPLES {
        const float *db = dy + b * C * P, *G = g + b * C, *E = e + b * C;
        float *ob = dx + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *restrict d = db + c * P, *restrict q = wt + c * P;
                float *restrict o = ob + c * P;
                const float gv = G[c], ev = E[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) o[p] = d[p] * gv + ev * q[p];
            }
        } else if (C % LANES == 0) {
            for (int64_t p = 0; p < P; p++)
                for (int64_t c0 = 0; c0 < C; c0 += LANES)
                    store16(ob + p * C + c0, load16(db + p * C + c0) * load16(G + c0)
                                                 + load16(E + c0) * load16(wt + p * C + c0));
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *d = db + p * C, *q = wt + p * C;
                float *o = ob + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] = d[c] * G[c] + E[c] * q[c];
            }
        }
    }
}

/* scSE (Roy et al., MICCAI 2018): y = max(x * gc[c], x * gs[p]) (add == 0; torch.maximum, NaN propagates) or
 * x * gc + x * gs (add == 1). The gradient splits at the selector m = 1 where the channel branch wins,
 * 1/2 at a tie, 0 where the spatial one wins (as torch.maximum's backward); with add, m = 1 for both. */
INLINE float scse_max(float a, float q) { return (a > q || a != a) ? a : q; }
INLINE float scse_sel(float a, float q) { return a > q ? 1.f : (a == q ? 0.5f : 0.f); }

void scse_apply(const float *x, const float *gc, const float *gs, int add, int64_t B, int64_t C, int64_t P, int cl,
                int nt, float *y) {
    SAMPLES {
        const float *xb = x + b * C * P, *G = gc + b * C, *S = gs + b * P;
        float *yb = y + b * C * P;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P;
                float *o = yb + c * P;
                const float gv = G[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float a = r[p] * gv, q = r[p] * S[p];
                    o[p] = add ? a + q : scse_max(a, q);
                }
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
                float *o = yb + p * C;
                const float sv = S[p];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float a = r[c] * G[c], q = r[c] * sv;
                    o[c] = add ? a + q : scse_max(a, q);
                }
            }
        }
    }
}

/* dgc[b, c] = sum_p dy x m; dgs[b, p] = sum_c dy x (1 - m) (add: sum_c dy x). */
void scse_reduce(const float *x, const float *dy, const float *gc, const float *gs, int add, int64_t B, int64_t C,
                 int64_t P, int cl, int nt, float *dgc, float *dgs) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *G = gc + b * C, *S = gs + b * P;
        float *oc = dgc + b * C, *op = dgs + b * P;
        for (int64_t c = 0; c < C; c++) oc[c] = 0.f;
        for (int64_t p = 0; p < P; p++) op[p] = 0.f;
        if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                const float gv = G[c];
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t p = 0; p < P; p++) {
                    const float t = d[p] * r[p], m = add ? 1.f : scse_sel(r[p] * gv, r[p] * S[p]);
                    acc += t * m;
                    op[p] += add ? t : t - t * m;
                }
                oc[c] = acc;
            }
        } else if (C % LANES == 0) {  /* whole vectors; 16 positions' sums over C at once (reduce16_sum) */
            const vec16 zero = {0}, one = zero + 1.f, half = zero + 0.5f;
            for (int64_t p0 = 0; p0 < P; p0 += 16) {
                const int64_t np = P - p0 < 16 ? P - p0 : 16;
                vec16 T[16];
                for (int64_t q = 0; q < 16; q++) {
                    T[q] = zero;
                    if (q >= np) continue;
                    const float *r = xb + (p0 + q) * C, *d = db + (p0 + q) * C;
                    const vec16 sv = zero + S[p0 + q];
                    for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                        const vec16 rv = load16(r + c0), t = load16(d + c0) * rv;
                        vec16 m = one;
                        if (!add) {
                            const vec16 a = rv * load16(G + c0), qv = rv * sv;
                            m = (vec16)(((ivec16)one & (a > qv)) | ((ivec16)half & (a == qv)));
                        }
                        const vec16 tm = t * m;
                        store16(oc + c0, load16(oc + c0) + tm);
                        T[q] += add ? t : t - tm;
                    }
                }
                float ta[16];
                store16(ta, reduce16_sum(T));
                for (int64_t q = 0; q < np; q++) op[p0 + q] = ta[q];
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                const float sv = S[p];
                float acc = 0.f;
                for (int64_t c = 0; c < C; c++) {
                    const float t = d[c] * r[c], m = add ? 1.f : scse_sel(r[c] * G[c], r[c] * sv);
                    oc[c] += t * m;
                    acc += add ? t : t - t * m;
                }
                op[p] = acc;
            }
        }
    }
}

/* dx = dy * (gs + m (gc - gs)) (add: dy * (gc + gs)) + e[c] + dlog[p] * w[c]: the direct term, the channel
 * branch's mean (e = dmean / P) and the spatial branch's 1x1 conv C -> 1 (weights w, logits' gradient dlog). */
void scse_grad_input(const float *x, const float *dy, const float *gc, const float *gs, int add, const float *e,
                     const float *dlog, const float *w, int64_t B, int64_t C, int64_t P, int cl, int nt, float *dx) {
    SAMPLES {
        const float *xb = x + b * C * P, *db = dy + b * C * P, *G = gc + b * C, *S = gs + b * P;
        const float *E = e + b * C, *L = dlog + b * P;
        float *ob = dx + b * C * P;
        if (cl && C % LANES == 0) {
            const vec16 zero = {0}, one = zero + 1.f, half = zero + 0.5f;
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                float *o = ob + p * C;
                const vec16 sv = zero + S[p], lv = zero + L[p];
                for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                    const vec16 gv = load16(G + c0);
                    vec16 f;
                    if (add) f = gv + sv;
                    else {
                        const vec16 rv = load16(r + c0), a = rv * gv, qv = rv * sv;
                        const vec16 m = (vec16)(((ivec16)one & (a > qv)) | ((ivec16)half & (a == qv)));
                        f = sv + m * (gv - sv);
                    }
                    store16(o + c0, load16(d + c0) * f + load16(E + c0) + lv * load16(w + c0));
                }
            }
        } else if (!cl) {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, *d = db + c * P;
                float *o = ob + c * P;
                const float gv = G[c], ev = E[c], wv = w[c];
#pragma omp simd
                for (int64_t p = 0; p < P; p++) {
                    const float f = add ? gv + S[p] : S[p] + scse_sel(r[p] * gv, r[p] * S[p]) * (gv - S[p]);
                    o[p] = d[p] * f + ev + L[p] * wv;
                }
            }
        } else {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C, *d = db + p * C;
                float *o = ob + p * C;
                const float sv = S[p], lv = L[p];
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float f = add ? G[c] + sv : sv + scse_sel(r[c] * G[c], r[c] * sv) * (G[c] - sv);
                    o[c] = d[c] * f + E[c] + lv * w[c];
                }
            }
        }
    }
}

/* ---- The gates' small graphs as single ops (_small_graphs.py) ------------------------------------------
 * CBAM's shared MLP on the pooled descriptors and the sigmoid of a one-channel BatchNorm after the small
 * convolutions: tensors of a few thousand values, where each eager PyTorch op costs more than the
 * arithmetic. Single-threaded where the work is a few hundred thousand multiply-adds (a thread team costs
 * more), OpenMP over the values of the normalised map. */

/* sum_i a[i] b[i], 16 lanes at a time, the lanes summed by tree_sum, then the tail: a fixed order. */
INLINE float dot16(const float *a, const float *b, int64_t n) {
    vec16 acc = splat16(0.f);
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) acc += load16(a + i) * load16(b + i);
    float l[LANES];
    store16(l, acc);
    float s = tree_sum(l);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* sigmoid_approx over n contiguous values, in place. */
static void sigmoid_inplace(float *z, int64_t n) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) store16(z + i, sigmoid16(load16(z + i)));
    for (; i < n; i++) z[i] = sigmoid_approx(z[i]);
}

/* g = sigmoid(sum_i relu(a_i W1^T + b1) W2^T + k b2) for k stacked descriptors a = (k B, C) (row-major;
 * a_i is rows i B .. i B + B - 1): h = relu(a W1^T + b1) (k B, R), hs = sum_i h_i (B, R), g (B, C).
 * w1 (R, C), w2 (C, R); b1, b2 NULL for none. relu keeps NaN, as torch's does. */
void mlp_gate_forward(const float *a, const float *w1, const float *b1, const float *w2, const float *b2,
                      int64_t k, int64_t B, int64_t C, int64_t R, float *h, float *hs, float *g) {
    for (int64_t n = 0; n < k * B; n++)
        for (int64_t r = 0; r < R; r++) {
            const float v = dot16(a + n * C, w1 + r * C, C) + (b1 ? b1[r] : 0.f);
            h[n * R + r] = v < 0.f ? 0.f : v;
        }
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < R; r++) {
            float s = h[b * R + r];
            for (int64_t i = 1; i < k; i++) s += h[(i * B + b) * R + r];
            hs[b * R + r] = s;
        }
    float *w2t = malloc(sizeof(float) * R * C);  /* (R, C): rows of W2^T, so the loop below runs along C */
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++) w2t[r * C + c] = w2[c * R + r];
    for (int64_t b = 0; b < B; b++) {
        float *z = g + b * C;
        for (int64_t c = 0; c < C; c++) z[c] = b2 ? (float)k * b2[c] : 0.f;
        for (int64_t r = 0; r < R; r++) {
            const float hv = hs[b * R + r], *wr = w2t + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) z[c] += hv * wr[c];
        }
    }
    free(w2t);
    sigmoid_inplace(g, B * C);
}

/* The gradients of mlp_gate_forward for dL/dg = dg (each output NULL where not wanted): dw1 (R, C), db1 (R),
 * dw2 (C, R), db2 (C), da (k B, C). The weight and bias gradients are summed in double. */
void mlp_gate_backward(const float *dg, const float *g, const float *a, const float *h, const float *hs,
                       const float *w1, const float *w2, int64_t k, int64_t B, int64_t C, int64_t R,
                       float *dw1, float *db1, float *dw2, float *db2, float *da) {
    float *dz = malloc(sizeof(float) * B * C), *dh = malloc(sizeof(float) * k * B * R);
    float *w2t = malloc(sizeof(float) * R * C);
    double *acc = calloc(R * C + C + R, sizeof(double));
    for (int64_t i = 0; i < B * C; i++) dz[i] = dg[i] * (1.f - g[i]) * g[i];  /* torch's sigmoid_backward */
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++) w2t[r * C + c] = w2[c * R + r];
    if (dw2 || db2) {
        double *s2 = acc, *sb = acc + R * C;
        for (int64_t b = 0; b < B; b++) {
            const float *d = dz + b * C;
            for (int64_t r = 0; r < R; r++) {
                const double hv = hs[b * R + r];
                double *row = s2 + r * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) row[c] += hv * d[c];
            }
#pragma omp simd
            for (int64_t c = 0; c < C; c++) sb[c] += d[c];
        }
        if (dw2)
            for (int64_t c = 0; c < C; c++)
                for (int64_t r = 0; r < R; r++) dw2[c * R + r] = (float)s2[r * C + c];
        if (db2)
            for (int64_t c = 0; c < C; c++) db2[c] = (float)((double)k * sb[c]);
    }
    if (dw1 || db1 || da) {
        /* dL/dh_i = dz W2, the same for every branch, zero where that branch's relu was */
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < R; r++) {
                const float v = dot16(dz + b * C, w2t + r * C, C);
                for (int64_t i = 0; i < k; i++) {
                    const int64_t n = i * B + b;
                    dh[n * R + r] = h[n * R + r] <= 0.f ? 0.f : v;
                }
            }
        memset(acc, 0, sizeof(double) * (R * C + R));
        double *s1 = acc, *sb = acc + R * C;
        for (int64_t n = 0; n < k * B; n++) {
            const float *an = a + n * C;
            if (dw1 || db1)
                for (int64_t r = 0; r < R; r++) {
                    const double d = dh[n * R + r];
                    sb[r] += d;
                    if (!dw1 || d == 0.) continue;
                    double *row = s1 + r * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) row[c] += d * an[c];
                }
            if (da) {
                float *o = da + n * C;
                for (int64_t c = 0; c < C; c++) o[c] = 0.f;
                for (int64_t r = 0; r < R; r++) {
                    const float d = dh[n * R + r], *wr = w1 + r * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] += d * wr[c];
                }
            }
        }
        if (dw1)
            for (int64_t i = 0; i < R * C; i++) dw1[i] = (float)s1[i];
        if (db1)
            for (int64_t r = 0; r < R; r++) db1[r] = (float)sb[r];
    }
    free(dz); free(dh); free(w2t); free(acc);
}

#define NORM_BLOCK 1024

/* One channel's BatchNorm as torch computes it, from the shifted sums s = sum (u - k) and q = sum (u - k)^2 over
 * its n values (batch_stats: the batch mean and biased variance normalise, and the running statistics, where
 * given, move by momentum towards the mean and the unbiased variance) or from the running statistics: the mean
 * and 1 / sqrt(var + eps) used (mean_out, invstd_out) and the normalisation's scale and shift, with channel c's
 * weight and bias (NULL for 1, 0). */
static void bn_channel(int batch_stats, double k, double s, double q, double n, int64_t c, const float *weight,
                       const float *bias, float *running_mean, float *running_var, float momentum, float eps,
                       float *mean_out, float *invstd_out, float *scale, float *shift) {
    double mean, var;
    if (batch_stats) {
        const double ds = s / n;
        mean = k + ds;
        q = q - s * ds;  /* sum (u - mean)^2 */
        if (q < 0.) q = 0.;
        var = q / n;
        if (running_mean) running_mean[c] = (float)((1. - momentum) * running_mean[c] + momentum * mean);
        if (running_var) running_var[c] = (float)((1. - momentum) * running_var[c] + momentum * q / (n > 1. ? n - 1. : 1.));
    } else {
        mean = running_mean[c];
        var = running_var[c];
    }
    const double invstd = 1. / sqrt(var + (double)eps);
    *mean_out = (float)mean;
    *invstd_out = (float)invstd;
    *scale = (float)(invstd * (weight ? weight[c] : 1.f));
    *shift = (float)((bias ? bias[c] : 0.f) - mean * *scale);
}


/* g = sigmoid(BatchNorm(u)) for a one-channel map of n values (the order does not matter), as torch's
 * batch_norm computes it: with batch_stats the batch mean and biased variance normalise, and the running
 * statistics (when given) move by momentum towards the mean and the unbiased variance; without, the
 * running statistics normalise. weight, bias NULL for 1, 0. stats[0], stats[1]: the mean and
 * 1 / sqrt(var + eps) used. norm == 0: g = sigmoid(u), no statistics. */
void norm_gate_forward(const float *u, int64_t n, int norm, int batch_stats, const float *weight, const float *bias,
                       float *running_mean, float *running_var, float momentum, float eps, int nt, float *stats,
                       float *g) {
    float scale = 1.f, shift = 0.f;
    if (norm) {
        double s = 0., q = 0.;
        float k0 = 0.f;
        if (batch_stats) {
            /* one pass: sums of d = u - u[0] and d^2 (shifted, so the variance does not cancel), 16 float
             * lanes over blocks of NORM_BLOCK values, each block's sums added in double */
            k0 = u[0];
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+:s, q)
            for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
                const int64_t i1 = i0 + NORM_BLOCK < n ? i0 + NORM_BLOCK : n;
                vec16 vs = splat16(0.f), vq = splat16(0.f);
                int64_t i = i0;
                for (; i + LANES <= i1; i += LANES) {
                    const vec16 d = load16(u + i) - k0;
                    vs += d;
                    vq += d * d;
                }
                float ls[LANES], lq[LANES];
                store16(ls, vs);
                store16(lq, vq);
                double bs = tree_sum(ls), bq = tree_sum(lq);
                for (; i < i1; i++) { const double d = (double)u[i] - k0; bs += d; bq += d * d; }
                s += bs;
                q += bq;
            }
        }
        bn_channel(batch_stats, k0, s, q, (double)n, 0, weight, bias, running_mean, running_var, momentum, eps,
                   stats, stats + 1, &scale, &shift);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += LANES) {
        if (i0 + LANES <= n)
            store16(g + i0, sigmoid16(load16(u + i0) * scale + shift));
        else
            for (int64_t i = i0; i < n; i++) g[i] = sigmoid_approx(u[i] * scale + shift);
    }
}

/* dL/du (and dL/dweight, dL/dbias when not NULL) of norm_gate_forward for dL/dg = dg. */
void norm_gate_backward(const float *dg, const float *g, const float *u, int64_t n, int norm, int batch_stats,
                        const float *weight, const float *stats, int nt, float *du, float *dweight, float *dbias) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) du[i] = dg[i] * (1.f - g[i]) * g[i];
    if (!norm) return;
    const double mean = stats[0], invstd = stats[1];
    /* the sums of dout and dout * (u - mean), as the statistics: float lanes per block, blocks in double */
    const float mf = (float)mean;
    double sd = 0., sdu = 0.;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+:sd, sdu)
    for (int64_t i0 = 0; i0 < n; i0 += NORM_BLOCK) {
        const int64_t i1 = i0 + NORM_BLOCK < n ? i0 + NORM_BLOCK : n;
        vec16 vd = splat16(0.f), vu = splat16(0.f);
        int64_t i = i0;
        for (; i + LANES <= i1; i += LANES) {
            const vec16 d = load16(du + i);
            vd += d;
            vu += d * (load16(u + i) - mf);
        }
        float ld[LANES], lu[LANES];
        store16(ld, vd);
        store16(lu, vu);
        double bd = tree_sum(ld), bu = tree_sum(lu);
        for (; i < i1; i++) { bd += du[i]; bu += (double)du[i] * (u[i] - mf); }
        sd += bd;
        sdu += bu;
    }
    const double sdx = sdu * invstd;
    if (dweight) dweight[0] = (float)sdx;
    if (dbias) dbias[0] = (float)sd;
    const double w = weight ? weight[0] : 1.;
    const float a = (float)(w * invstd);
    if (batch_stats) {
        const float md = (float)(sd / (double)n), mdx = (float)(sdx / (double)n), m = (float)mean, is = (float)invstd;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) du[i] = a * (du[i] - md - (u[i] - m) * is * mdx);
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; i++) du[i] *= a;
    }
}

/* Coordinate attention's small graph on its pooled strips, per sample z = [z_h | z_w] (C, L = H + W) from
 * the means over W (B, C, H) and over H (B, C, W): u = W1 z + b1 (M, L); v = BatchNorm(u) per channel m,
 * over the batch and L (as norm_gate_forward; stats = M means then M inverse deviations; norm == 0: v = u);
 * f = hardswish(v) (act == 1: SiLU); g_h = sigmoid(Wh f[:, :H] + bh) (C, H) and g_w = sigmoid(Ww f[:, H:] + bw)
 * (C, W) (gate == 0: no sigmoid). w1 (M, C), wh, ww (C, M);
 * biases and norm parameters NULL for none. u is kept (B, M, L) for backward. */
#define COORD_DIMS int64_t B, int64_t C, int64_t M, int64_t H, int64_t W, int norm, int batch_stats, int act, \
                   int gate, int nt

INLINE float hardswish(float v) { return v <= -3.f ? 0.f : v >= 3.f ? v : v * (v + 3.f) * (1.f / 6.f); }

/* the activation between the convs: act == 0 hard swish (coordinate attention), 1 SiLU (timm's simplified
 * form, scoord), and its derivative times d as torch's backward computes it */
INLINE float coord_act(float v, int act) { return act ? v * sigmoid_approx(v) : hardswish(v); }
INLINE float coord_act_grad(float v, float d, int act) {
    if (act) {
        const float sg = sigmoid_approx(v);
        return d * sg * (1.f + v * (1.f - sg));
    }
    return v < -3.f ? 0.f : v <= 3.f ? d * (v / 3.f + 0.5f) : d;
}

/* (B, M, L) -> per channel scale and shift of the normalisation (running statistics moved when batch_stats) */
static void coord_norm_stats(const float *u, COORD_DIMS, const float *bnw, const float *bnb, float *rm, float *rv,
                             float momentum, float eps, float *stats, float *scale, float *shift) {
    (void)C; (void)nt; (void)act; (void)gate;
    const int64_t L = H + W, n = B * L;
    for (int64_t m = 0; m < M; m++) {
        if (!norm) { scale[m] = 1.f; shift[m] = 0.f; continue; }
        double s = 0., q = 0.;
        const float k0 = batch_stats ? u[m * L] : 0.f;
        if (batch_stats)
            for (int64_t b = 0; b < B; b++)
                for (int64_t l = 0; l < L; l++) { const double d = (double)u[(b * M + m) * L + l] - k0; s += d; q += d * d; }
        bn_channel(batch_stats, k0, s, q, (double)n, m, bnw, bnb, rm, rv, momentum, eps, stats + m, stats + M + m,
                   scale + m, shift + m);
    }
}

/* A sample's strips as zt (L, C): zt[l, c] = z_h[c, l] for l < H, z_w[c, l - H] after (position-major). */
static void coord_strips(const float *zh, const float *zw, int64_t b, int64_t C, int64_t H, int64_t W, float *zt) {
    for (int64_t c = 0; c < C; c++) {
        const float *rh = zh + (b * C + c) * H, *rw = zw + (b * C + c) * W;
        for (int64_t l = 0; l < H; l++) zt[l * C + c] = rh[l];
        for (int64_t l = 0; l < W; l++) zt[(H + l) * C + c] = rw[l];
    }
}

/* (R, C) row-major -> (C, R) */
static float *transposed(const float *a, int64_t R, int64_t C) {
    float *t = malloc(sizeof(float) * R * C);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) t[c * R + r] = a[r * C + c];
    return t;
}

/* o (R, N) = a (R, K) z (K, N) (+ bias[r] when not NULL), row-major with row pitches lda, ldz, ldo: tiles of
 * 8 rows x 16 columns held in registers, one load of z and 8 multiply-adds per k. Columns past the last
 * multiple of 16 go through zero-padded copies (the small matrices of coordinate attention: N = 7-64). */
#define GEMM_TR 8
static void gemm_rows(const float *a, int64_t lda, const float *z, int64_t ldz, const float *bias, int64_t R,
                      int64_t K, int64_t N, float *o, int64_t ldo) {
    const int64_t full = N / LANES * LANES, tail = N - full;
    float stack[256 * LANES], *zt = NULL;  /* up to K = 256 on the stack: no allocation per call */
    if (tail) {  /* the last columns of z, zero-padded to one vector per row */
        zt = K <= 256 ? stack : malloc(sizeof(float) * K * LANES);
        for (int64_t k = 0; k < K; k++) {
            const float *zr = z + k * ldz + full;
            float *t = zt + k * LANES;
            for (int64_t j = 0; j < LANES; j++) t[j] = j < tail ? zr[j] : 0.f;
        }
    }
    for (int64_t n0 = 0; n0 < N; n0 += LANES) {
        const int last = n0 == full;
        const float *zc = last ? zt : z + n0;
        const int64_t ld = last ? LANES : ldz;
        for (int64_t r0 = 0; r0 < R; r0 += GEMM_TR) {
            const int64_t rr = R - r0 < GEMM_TR ? R - r0 : GEMM_TR;
            vec16 acc[GEMM_TR];
            for (int64_t i = 0; i < GEMM_TR; i++) acc[i] = splat16(bias && i < rr ? bias[r0 + i] : 0.f);
            const float *ar = a + r0 * lda;
            if (rr == GEMM_TR) {
                for (int64_t k = 0; k < K; k++) {
                    const vec16 zv = load16(zc + k * ld);
#pragma GCC unroll 8
                    for (int64_t i = 0; i < GEMM_TR; i++) acc[i] += ar[i * lda + k] * zv;
                }
            } else {
                for (int64_t k = 0; k < K; k++) {
                    const vec16 zv = load16(zc + k * ld);
                    for (int64_t i = 0; i < rr; i++) acc[i] += ar[i * lda + k] * zv;
                }
            }
            for (int64_t i = 0; i < rr; i++) {
                if (!last) {
                    store16(o + (r0 + i) * ldo + n0, acc[i]);
                } else {
                    float t[LANES], *orow = o + (r0 + i) * ldo + n0;
                    store16(t, acc[i]);
                    for (int64_t j = 0; j < tail; j++) orow[j] = t[j];
                }
            }
        }
    }
    if (zt != stack) free(zt);
}

void coord_gates_forward(const float *zh, const float *zw, const float *w1, const float *b1, const float *bnw,
                         const float *bnb, float *rm, float *rv, float momentum, float eps, const float *wh,
                         const float *bh, const float *ww, const float *bw, COORD_DIMS, float *u, float *stats,
                         float *gh, float *gw) {
    const int64_t L = H + W;
    SAMPLES {
        float *z = malloc(sizeof(float) * C * L);  /* (C, L): the h strip then the w strip of each channel */
        for (int64_t c = 0; c < C; c++) {
            const float *rh = zh + (b * C + c) * H, *rw = zw + (b * C + c) * W;
            float *o = z + c * L;
            for (int64_t l = 0; l < H; l++) o[l] = rh[l];
            for (int64_t l = 0; l < W; l++) o[H + l] = rw[l];
        }
        gemm_rows(w1, C, z, L, b1, M, C, L, u + b * M * L, L);
        free(z);
    }
    float *scale = malloc(sizeof(float) * 2 * M), *shift = scale + M;
    coord_norm_stats(u, B, C, M, H, W, norm, batch_stats, act, gate, nt, bnw, bnb, rm, rv, momentum, eps, stats, scale,
                     shift);
    SAMPLES {
        float *f = malloc(sizeof(float) * M * L);
        const float *ub = u + b * M * L;
        for (int64_t m = 0; m < M; m++)
            for (int64_t l = 0; l < L; l++) f[m * L + l] = coord_act(ub[m * L + l] * scale[m] + shift[m], act);
        gemm_rows(wh, M, f, L, bh, C, M, H, gh + b * C * H, H);
        gemm_rows(ww, M, f + H, L, bw, C, M, W, gw + b * C * W, W);
        if (gate) {
            sigmoid_inplace(gh + b * C * H, C * H);
            sigmoid_inplace(gw + b * C * W, C * W);
        }
        free(f);
    }
    free(scale);
}

/* The gradients of coord_gates_forward for dL/dg_h, dL/dg_w (outputs NULL where not wanted): dzh (B, C, H),
 * dzw (B, C, W), dw1 (M, C), db1 (M), dbnw, dbnb (M), dwh, dww (C, M), dbh, dbw (C). Parameter gradients
 * are summed per sample in float, then over samples in double, per thread, then across threads. */
void coord_gates_backward(const float *dgh, const float *dgw, const float *gh, const float *gw, const float *zh,
                          const float *zw, const float *u, const float *stats, const float *w1, const float *bnw,
                          const float *bnb, const float *wh, const float *ww, COORD_DIMS, float *dzh, float *dzw,
                          float *dw1, float *db1, float *dbnw, float *dbnb, float *dwh, float *dbh, float *dww,
                          float *dbw) {
    const int64_t L = H + W, n = B * L;
    float *scale = malloc(sizeof(float) * 2 * M), *shift = scale + M;
    for (int64_t m = 0; m < M; m++) {
        const float is = norm ? stats[M + m] : 1.f, mu = norm ? stats[m] : 0.f;
        scale[m] = is * (norm && bnw ? bnw[m] : 1.f);
        shift[m] = (norm && bnb ? bnb[m] : 0.f) - mu * scale[m];
    }
    float *wht = transposed(wh, C, M), *wwt = transposed(ww, C, M), *w1t = transposed(w1, M, C);  /* (M, C), (C, M) */
    float *dv = malloc(sizeof(float) * B * M * L);
    /* per thread: dwh^T, dww^T (M, C) each, dbh, dbw (C) each; then dw1 (M, C), db1 (M) */
    const int64_t np = 2 * M * C + 2 * C;
    double *tot = calloc(np + M * C + M, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(np, sizeof(double));
        float *f = malloc(sizeof(float) * M * L), *da = malloc(sizeof(float) * 2 * L * C), *dat = da + L * C;
        float *ps = malloc(sizeof(float) * np);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *ub = u + b * M * L;
            for (int64_t m = 0; m < M; m++)
                for (int64_t l = 0; l < L; l++) f[m * L + l] = coord_act(ub[m * L + l] * scale[m] + shift[m], act);
            /* da = dL/d(pre-sigmoid) (torch's sigmoid_backward), as (C, L) and as dat (L, C) */
            for (int64_t c = 0; c < C; c++) {
                for (int64_t l = 0; l < H; l++) {
                    const int64_t i = (b * C + c) * H + l;
                    const float d = gate ? dgh[i] * (1.f - gh[i]) * gh[i] : dgh[i];
                    da[c * L + l] = d;
                    dat[l * C + c] = d;
                }
                for (int64_t l = 0; l < W; l++) {
                    const int64_t i = (b * C + c) * W + l;
                    const float d = gate ? dgw[i] * (1.f - gw[i]) * gw[i] : dgw[i];
                    da[c * L + H + l] = d;
                    dat[(H + l) * C + c] = d;
                }
            }
            /* dwh^T (M, C) = f_h dat_h, dww^T = f_w dat_w; dbh, dbw the sums over positions */
            gemm_rows(f, L, dat, C, NULL, M, H, C, ps, C);
            gemm_rows(f + H, L, dat + H * C, C, NULL, M, W, C, ps + M * C, C);
            float *pb = ps + 2 * M * C;
            for (int64_t c = 0; c < 2 * C; c++) pb[c] = 0.f;
            for (int64_t l = 0; l < L; l++) {
                const float *dr = dat + l * C;
                float *o = pb + (l < H ? 0 : C);
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] += dr[c];
            }
#pragma omp simd
            for (int64_t k = 0; k < np; k++) part[k] += ps[k];
            /* df = Wh^T da_h | Ww^T da_w (M, L), then dv = df * act'(v) (torch's hardswish_backward: 0 below -3,
             * grad * (v / 3 + 1/2) up to 3, grad above; silu_backward: grad * s * (1 + v * (1 - s))) */
            float *dvb = dv + b * M * L;
            gemm_rows(wht, C, da, L, NULL, M, C, H, dvb, L);
            gemm_rows(wwt, C, da + H, L, NULL, M, C, W, dvb + H, L);
            for (int64_t m = 0; m < M; m++)
                for (int64_t l = 0; l < L; l++) {
                    const float v = ub[m * L + l] * scale[m] + shift[m];
                    dvb[m * L + l] = coord_act_grad(v, dvb[m * L + l], act);
                }
        }
#pragma omp critical
        for (int64_t k = 0; k < np; k++) tot[k] += part[k];
        free(part); free(f); free(da); free(ps);
    }
    if (dwh) for (int64_t c = 0; c < C; c++) for (int64_t m = 0; m < M; m++) dwh[c * M + m] = (float)tot[m * C + c];
    if (dww) for (int64_t c = 0; c < C; c++) for (int64_t m = 0; m < M; m++) dww[c * M + m] = (float)tot[M * C + m * C + c];
    if (dbh) for (int64_t c = 0; c < C; c++) dbh[c] = (float)tot[2 * M * C + c];
    if (dbw) for (int64_t c = 0; c < C; c++) dbw[c] = (float)tot[2 * M * C + C + c];
    /* the normalisation's backward, per channel: dv -> du in place */
    for (int64_t m = 0; m < M; m++) {
        if (!norm) continue;
        const double mean = stats[m], invstd = stats[M + m];
        double sd = 0., sdx = 0.;
        for (int64_t b = 0; b < B; b++)
            for (int64_t l = 0; l < L; l++) {
                const int64_t i = (b * M + m) * L + l;
                sd += dv[i];
                sdx += (double)dv[i] * ((u[i] - mean) * invstd);
            }
        if (dbnw) dbnw[m] = (float)sdx;
        if (dbnb) dbnb[m] = (float)sd;
        const float a = (float)(invstd * (bnw ? bnw[m] : 1.f));
        const float md = (float)(sd / (double)n), mdx = (float)(sdx / (double)n), mu = (float)mean, is = (float)invstd;
        for (int64_t b = 0; b < B; b++)
            for (int64_t l = 0; l < L; l++) {
                const int64_t i = (b * M + m) * L + l;
                dv[i] = batch_stats ? a * (dv[i] - md - (u[i] - mu) * is * mdx) : a * dv[i];
            }
    }
    /* dw1 (M, C) = du zt, db1 = the sums of du, dz (C, L) = W1^T du */
    double *s1 = tot + np;
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(M * C + M, sizeof(double));
        float *zt = malloc(sizeof(float) * L * C), *ps = malloc(sizeof(float) * M * C);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *du = dv + b * M * L;
            if (dw1) {
                coord_strips(zh, zw, b, C, H, W, zt);
                gemm_rows(du, L, zt, C, NULL, M, L, C, ps, C);
#pragma omp simd
                for (int64_t k = 0; k < M * C; k++) part[k] += ps[k];
            }
            for (int64_t m = 0; m < M; m++) {
                double sb = 0.;
                for (int64_t l = 0; l < L; l++) sb += du[m * L + l];
                part[M * C + m] += sb;
            }
            if (dzh) gemm_rows(w1t, M, du, L, NULL, C, M, H, dzh + b * C * H, H);
            if (dzw) gemm_rows(w1t, M, du + H, L, NULL, C, M, W, dzw + b * C * W, W);
        }
#pragma omp critical
        for (int64_t k = 0; k < M * C + M; k++) s1[k] += part[k];
        free(part); free(zt); free(ps);
    }
    if (dw1) for (int64_t k = 0; k < M * C; k++) dw1[k] = (float)s1[k];
    if (db1) for (int64_t m = 0; m < M; m++) db1[m] = (float)s1[M * C + m];
    free(tot); free(dv); free(scale); free(wht); free(wwt); free(w1t);
}

/* ELA's strip gate: a = sigmoid(GroupNorm(conv(z))) for strips z (B, C, L), conv a depthwise 1-D convolution
 * with taps w (C, k), bias (C) or NULL, and k / 2 zeros each side, GroupNorm over G groups of C / G channels x L
 * per sample (biased variance; gamma, beta (C) or NULL). norm == 0: no GroupNorm; gate == 0: no sigmoid (strip
 * attention's convs alone). Each sample is worked on position-major, (L, C), so the loops
 * over channels are the inner ones (L is 7-56 here, C 16-2048). u, the conv's output, is kept (B, L, C) and
 * stats (B, G, 2: mean, 1 / std) for backward; a is (B, C, L). */
#define STRIP_DIMS int64_t B, int64_t C, int64_t L, int64_t k, int64_t G, int norm, int gate, int nt

/* ut (L, C) = the depthwise conv of zt (L, C) with taps wt (k, C) */
static void strip_conv(const float *zt, const float *wt, int64_t L, int64_t C, int64_t k, float *ut) {
    const int64_t p = k / 2;
    for (int64_t l = 0; l < L; l++) {
        float *o = ut + l * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0.f;
        for (int64_t j = 0; j < k; j++) {
            const int64_t i = l + j - p;
            if (i < 0 || i >= L) continue;
            const float *zr = zt + i * C, *wr = wt + j * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] += wr[c] * zr[c];
        }
    }
}

/* per channel sums over the L positions of t (L, C), then per group (of cg channels) in double */
static void group_sums(const float *t, int64_t L, int64_t C, int64_t cg, float *col, double *grp) {
    for (int64_t c = 0; c < C; c++) col[c] = 0.f;
    for (int64_t l = 0; l < L; l++) {
        const float *r = t + l * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) col[c] += r[c];
    }
    for (int64_t g = 0; g < C / cg; g++) {
        double s = 0.;
        for (int64_t c = g * cg; c < (g + 1) * cg; c++) s += col[c];
        grp[g] = s;
    }
}

void strip_norm_gate_forward(const float *z, const float *w, const float *bias, const float *gamma, const float *beta,
                             float eps, STRIP_DIMS, float *u, float *stats, float *a) {
    const int64_t cg = C / G, n = cg * L;
    float *wt = transposed(w, C, k);  /* (k, C) */
    SAMPLES {
        float *zt = malloc(sizeof(float) * (2 * L * C + 3 * C)), *sq = zt + L * C, *col = sq + L * C;
        float *sc = col + C, *sh = sc + C;
        double *grp = malloc(sizeof(double) * G);
        const float *zb = z + b * C * L;
        for (int64_t c = 0; c < C; c++)
            for (int64_t l = 0; l < L; l++) zt[l * C + c] = zb[c * L + l];
        float *ut = u + b * L * C;
        strip_conv(zt, wt, L, C, k, ut);
        if (bias)
            for (int64_t l = 0; l < L; l++) {
                float *r = ut + l * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) r[c] += bias[c];
            }
        if (!norm) {
            for (int64_t c = 0; c < C; c++) { sc[c] = 1.f; sh[c] = 0.f; }
            goto apply;
        }
        /* two passes: the group means, then the sums of squares about them */
        group_sums(ut, L, C, cg, col, grp);
        for (int64_t c = 0; c < C; c++) sc[c] = (float)(grp[c / cg] / (double)n);  /* the mean, per channel */
        for (int64_t l = 0; l < L; l++) {
            const float *r = ut + l * C;
            float *o = sq + l * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) { const float d = r[c] - sc[c]; o[c] = d * d; }
        }
        group_sums(sq, L, C, cg, col, grp);
        for (int64_t g = 0; g < G; g++) {
            const double mean = sc[g * cg], invstd = 1. / sqrt(grp[g] / (double)n + (double)eps);
            stats[(b * G + g) * 2] = (float)mean;
            stats[(b * G + g) * 2 + 1] = (float)invstd;
        }
        for (int64_t c = 0; c < C; c++) {
            const int64_t g = c / cg;
            const double mean = stats[(b * G + g) * 2], invstd = stats[(b * G + g) * 2 + 1];
            const double s = invstd * (gamma ? gamma[c] : 1.f);
            sc[c] = (float)s;
            sh[c] = (float)((beta ? beta[c] : 0.f) - mean * s);
        }
    apply:
        for (int64_t l = 0; l < L; l++) {
            const float *r = ut + l * C;
            float *o = zt + l * C;  /* zt is done with: the gate, position-major */
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = r[c] * sc[c] + sh[c];
        }
        if (gate) sigmoid_inplace(zt, L * C);
        float *ab = a + b * C * L;
        for (int64_t c = 0; c < C; c++)
            for (int64_t l = 0; l < L; l++) ab[c * L + l] = zt[l * C + c];
        free(zt); free(grp);
    }
    free(wt);
}

/* The gradients of strip_norm_gate_forward for dL/da = da (outputs NULL where not wanted): dz (B, C, L),
 * dw (C, k), dgamma, dbeta (C); the parameter gradients summed per sample in float, over samples in double
 * per thread, then across threads. */
void strip_norm_gate_backward(const float *da, const float *a, const float *z, const float *u, const float *w,
                              const float *gamma, const float *stats, STRIP_DIMS, float *dz, float *dw, float *dbias,
                              float *dgamma, float *dbeta) {
    const int64_t cg = C / G, n = cg * L, p = k / 2, np = k * C + 3 * C;  /* dw (k, C), dgamma, dbeta, dbias */
    float *wt = transposed(w, C, k);  /* (k, C) */
    double *tot = calloc(np, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(np, sizeof(double)), *g1 = malloc(sizeof(double) * 2 * G), *g2 = g1 + G;
        float *buf = malloc(sizeof(float) * (4 * L * C + 6 * C + np));
        float *d = buf, *xh = d + L * C, *zt = xh + L * C, *t = zt + L * C;
        float *mu = t + L * C, *is = mu + C, *m1 = is + C, *m2 = m1 + C, *col = m2 + C, *gm = col + C, *ps = gm + C;
        for (int64_t c = 0; c < C; c++) gm[c] = gamma ? gamma[c] : 1.f;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *ab = a + b * C * L, *db = da + b * C * L, *zb = z + b * C * L, *ut = u + b * L * C;
            for (int64_t c = 0; c < C; c++) {
                mu[c] = norm ? stats[(b * G + c / cg) * 2] : 0.f;
                is[c] = norm ? stats[(b * G + c / cg) * 2 + 1] : 1.f;
                for (int64_t l = 0; l < L; l++) {
                    const float av = ab[c * L + l];
                    d[l * C + c] = gate ? db[c * L + l] * (1.f - av) * av : db[c * L + l];  /* torch's sigmoid_backward */
                    zt[l * C + c] = zb[c * L + l];
                }
            }
            memset(ps, 0, sizeof(float) * np);
            float *pg = ps + k * C, *pb = pg + C, *pbias = pb + C;
            if (!norm) {  /* dL/du = d */
                memcpy(t, d, sizeof(float) * L * C);
                goto conv;
            }
            for (int64_t l = 0; l < L; l++) {
                const float *ur = ut + l * C, *dr = d + l * C;
                float *xr = xh + l * C, *tr = t + l * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    xr[c] = (ur[c] - mu[c]) * is[c];
                    pg[c] += dr[c] * xr[c];
                    pb[c] += dr[c];
                    tr[c] = dr[c] * gm[c];  /* dL/dxhat */
                }
            }
            group_sums(t, L, C, cg, col, g1);
            for (int64_t l = 0; l < L; l++) {
                const float *tr = t + l * C, *xr = xh + l * C;
                float *o = d + l * C;  /* d is done with: dxhat * xhat */
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] = tr[c] * xr[c];
            }
            group_sums(d, L, C, cg, col, g2);
            for (int64_t c = 0; c < C; c++) {
                m1[c] = (float)(g1[c / cg] / (double)n);
                m2[c] = (float)(g2[c / cg] / (double)n);
            }
            for (int64_t l = 0; l < L; l++) {  /* t becomes dL/du */
                float *tr = t + l * C;
                const float *xr = xh + l * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) tr[c] = is[c] * (tr[c] - m1[c] - xr[c] * m2[c]);
            }
        conv:
            for (int64_t l = 0; l < L; l++) {
                const float *tr = t + l * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) pbias[c] += tr[c];
            }
            /* the conv: dw[j, c] += sum_l du[l, c] z[l + j - p, c]; dz[m, c] = sum_j w[j, c] du[m - j + p, c] */
            for (int64_t l = 0; l < L; l++) {
                const float *dr = t + l * C;
                for (int64_t j = 0; j < k; j++) {
                    const int64_t i = l + j - p;
                    if (i < 0 || i >= L) continue;
                    const float *zr = zt + i * C;
                    float *o = ps + j * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] += dr[c] * zr[c];
                }
            }
#pragma omp simd
            for (int64_t i = 0; i < np; i++) part[i] += ps[i];
            if (dz) {
                float *o = xh;  /* xh is done with: dL/dz, position-major */
                for (int64_t m = 0; m < L; m++) {
                    float *orow = o + m * C;
                    for (int64_t c = 0; c < C; c++) orow[c] = 0.f;
                    for (int64_t j = 0; j < k; j++) {
                        const int64_t l = m - j + p;
                        if (l < 0 || l >= L) continue;
                        const float *dr = t + l * C, *wr = wt + j * C;
#pragma omp simd
                        for (int64_t c = 0; c < C; c++) orow[c] += wr[c] * dr[c];
                    }
                }
                float *dzb = dz + b * C * L;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t l = 0; l < L; l++) dzb[c * L + l] = o[l * C + c];
            }
        }
#pragma omp critical
        for (int64_t i = 0; i < np; i++) tot[i] += part[i];
        free(part); free(g1); free(buf);
    }
    if (dw) for (int64_t c = 0; c < C; c++) for (int64_t j = 0; j < k; j++) dw[c * k + j] = (float)tot[j * C + c];
    if (dgamma) for (int64_t c = 0; c < C; c++) dgamma[c] = (float)tot[k * C + c];
    if (dbeta) for (int64_t c = 0; c < C; c++) dbeta[c] = (float)tot[k * C + C + c];
    if (dbias) for (int64_t c = 0; c < C; c++) dbias[c] = (float)tot[k * C + 2 * C + c];
    free(wt); free(tot);
}

/* Efficient multi-scale attention's cross-spatial step (Ouyang et al., ICASSP 2023), from its two grouped
 * branches to the output. x (B, C, P) in layout cl; x1, x2 (B G, cg, P) NCHW, cg = C / G: the 1x1 branch
 * (after its GroupNorm) and the 3x3 branch of every group. Per group, over its cg channels,
 *     s1 = softmax(mean_p x1),  s2 = softmax(mean_p x2),  gate[p] = sigmoid(s1 . x2[:, p] + s2 . x1[:, p]),
 * and y[c, p] = x[c, p] gate[g(c), p]. The means are summed in double, the softmax is in double. Forward saves
 * s1, s2 (B G, cg) and gate (B G, P) for backward; the whole step is one pass over each sample while it is
 * in cache, where the PyTorch expression is two batched matmuls of (1, cg) x (cg, P) per group, a softmax
 * each, a sigmoid and a broadcast product, each a full pass and again in backward. */
#define EMA_DIMS int64_t B, int64_t C, int64_t G, int64_t P, int cl, int nt

/* y = x * gate[g(c), p] for one sample: x, y (C, P) in layout cl, gate (G, P). In channels_last the gate is
 * read across its rows: 16 positions at a time, their gate values are spread to a (16, C) block in cache
 * first (read along the gate's rows), so that the product runs along x's rows as one vector loop. */
#define EMA_PB 16
static void ema_apply(const float *x, const float *gate, int64_t C, int64_t G, int64_t P, int cl, float *y) {
    const int64_t cg = C / G;
    if (!cl) {
        for (int64_t c = 0; c < C; c++) {
            const float *gt = gate + (c / cg) * P, *r = x + c * P;
            float *o = y + c * P;
#pragma omp simd
            for (int64_t p = 0; p < P; p++) o[p] = r[p] * gt[p];
        }
        return;
    }
    float *ge = malloc(sizeof(float) * EMA_PB * C);
    for (int64_t p0 = 0; p0 < P; p0 += EMA_PB) {
        const int64_t n = P - p0 < EMA_PB ? P - p0 : EMA_PB;
        for (int64_t g = 0; g < G; g++)
            for (int64_t q = 0; q < n; q++) {
                const float v = gate[g * P + p0 + q];
                for (int64_t k = 0; k < cg; k++) ge[q * C + g * cg + k] = v;
            }
        for (int64_t q = 0; q < n; q++) {
            const float *restrict r = x + (p0 + q) * C, *restrict e = ge + q * C;
            float *restrict o = y + (p0 + q) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = r[c] * e[c];
        }
    }
    free(ge);
}

/* s = softmax over the cg channel means of a (cg, P); the means summed in double (eight running sums, a
 * loop the compiler vectorises), cg == 1 is s = 1 (what the softmax of one value gives). */
static void ema_softmax_means(const float *a, int64_t cg, int64_t P, double *m, float *s) {
    if (cg == 1) { s[0] = 1.f; return; }
    double mx = -INFINITY, tot = 0.;
    for (int64_t c = 0; c < cg; c++) {
        double acc[8] = {0., 0., 0., 0., 0., 0., 0., 0.};
        const float *r = a + c * P;
        int64_t p = 0;
        for (; p + 8 <= P; p += 8)
            for (int j = 0; j < 8; j++) acc[j] += (double)r[p + j];
        for (; p < P; p++) acc[0] += (double)r[p];
        m[c] = ((acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7])) / (double)P;
        if (m[c] > mx) mx = m[c];
    }
    for (int64_t c = 0; c < cg; c++) { m[c] = exp(m[c] - mx); tot += m[c]; }
    for (int64_t c = 0; c < cg; c++) s[c] = (float)(m[c] / tot);
}

void ema_cross_forward(const float *x, const float *x1, const float *x2, EMA_DIMS, float *s1, float *s2,
                       float *gate, float *y) {
    const int64_t cg = C / G;
    SAMPLES {
        double *m = malloc(sizeof(double) * cg);
        for (int64_t g = 0; g < G; g++) {
            const int64_t bg = b * G + g;
            const float *a = x1 + bg * cg * P, *d = x2 + bg * cg * P;
            float *S1 = s1 + bg * cg, *S2 = s2 + bg * cg, *gt = gate + bg * P;
            ema_softmax_means(a, cg, P, m, S1);
            ema_softmax_means(d, cg, P, m, S2);
            for (int64_t p = 0; p < P; p++) gt[p] = 0.f;
            for (int64_t c = 0; c < cg; c++) {
                const float u = S1[c], v = S2[c], *r1 = a + c * P, *r2 = d + c * P;
#pragma omp simd
                for (int64_t p = 0; p < P; p++) gt[p] += u * r2[p] + v * r1[p];
            }
            sigmoid_inplace(gt, P);
        }
        ema_apply(x + b * C * P, gate + b * G * P, C, G, P, cl, y + b * C * P);
        free(m);
    }
}

/* dL/dwts = (sum over the group's channels of dy x) gate (1 - gate); dx = dy gate (through y = x gate only:
 * x's paths through the branches are the autograd graph's); dx1 = s2 dwts + dm1 / P and dx2 = s1 dwts + dm2 / P
 * with dm = the softmax's gradient of dL/ds1 = sum_p dwts x2, dL/ds2 = sum_p dwts x1. */
void ema_cross_backward(const float *x, const float *dy, const float *x1, const float *x2, const float *s1,
                        const float *s2, const float *gate, EMA_DIMS, float *dx, float *dx1, float *dx2) {
    const int64_t cg = C / G;
    SAMPLES {
        float *dw = calloc(G * P, sizeof(float));
        double *ds = malloc(sizeof(double) * 2 * cg);
        const float *xb = x + b * C * P, *db = dy + b * C * P, *gb = gate + b * G * P;
        if (!cl)
            for (int64_t c = 0; c < C; c++) {
                float *t = dw + (c / cg) * P;
                const float *r = xb + c * P, *q = db + c * P;
                for (int64_t p = 0; p < P; p++) t[p] += r[p] * q[p];
            }
        else {  /* products along x's rows, 16 positions at a time, then summed per group into dw's rows */
            float *pr = malloc(sizeof(float) * EMA_PB * C);
            for (int64_t p0 = 0; p0 < P; p0 += EMA_PB) {
                const int64_t n = P - p0 < EMA_PB ? P - p0 : EMA_PB;
                for (int64_t q = 0; q < n; q++) {
                    const float *restrict r = xb + (p0 + q) * C, *restrict d = db + (p0 + q) * C;
                    float *restrict o = pr + q * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = r[c] * d[c];
                }
                for (int64_t g = 0; g < G; g++)
                    for (int64_t q = 0; q < n; q++) {
                        float t = 0.f;
                        for (int64_t k = g * cg; k < (g + 1) * cg; k++) t += pr[q * C + k];
                        dw[g * P + p0 + q] = t;
                    }
            }
            free(pr);
        }
#pragma omp simd
        for (int64_t i = 0; i < G * P; i++) dw[i] *= gb[i] * (1.f - gb[i]);
        if (dx) ema_apply(db, gb, C, G, P, cl, dx + b * C * P);
        for (int64_t g = 0; g < G; g++) {
            const int64_t bg = b * G + g;
            const float *a = x1 + bg * cg * P, *d = x2 + bg * cg * P, *w = dw + g * P;
            const float *S1 = s1 + bg * cg, *S2 = s2 + bg * cg;
            double t1 = 0., t2 = 0.;
            for (int64_t c = 0; c < cg && cg > 1; c++) {  /* cg == 1: s = 1, so dm = 0 */
                ds[c] = dot16(w, d + c * P, P);  /* dL/ds1 */
                ds[cg + c] = dot16(w, a + c * P, P);  /* dL/ds2 */
                t1 += S1[c] * ds[c];
                t2 += S2[c] * ds[cg + c];
            }
            for (int64_t c = 0; c < cg; c++) {
                const float e1 = cg > 1 ? (float)(S1[c] * (ds[c] - t1) / (double)P) : 0.f;  /* dm1 / P */
                const float e2 = cg > 1 ? (float)(S2[c] * (ds[cg + c] - t2) / (double)P) : 0.f;
                const float u = S1[c], v = S2[c];
                if (dx1) {
                    float *o = dx1 + (bg * cg + c) * P;
#pragma omp simd
                    for (int64_t p = 0; p < P; p++) o[p] = v * w[p] + e1;
                }
                if (dx2) {
                    float *o = dx2 + (bg * cg + c) * P;
#pragma omp simd
                    for (int64_t p = 0; p < P; p++) o[p] = u * w[p] + e2;
                }
            }
        }
        free(dw); free(ds);
    }
}

/* EMA's 1x1 branch after its strip gates: x1 = GroupNorm(gx * gh[c, h] * gw[c, w]) with one channel per
 * group (as the authors' GroupNorm(C/G, C/G)), every channel normalised over its H x W map with the biased
 * variance. gx (N, cg, H, W) NCHW (N = B G), gh (N, cg, H), gw (N, cg, W); gamma, beta (cg) or NULL. Forward
 * keeps the mean and 1 / sqrt(var + eps) of every (n, c) in stats (N cg, 2); backward recomputes the
 * product. Where PyTorch runs two broadcast products and the norm, each a full pass (and their backward:
 * the products' gradients, two reductions for the strips, the norm's), this is one pass per map in cache. */
#define EMA_BRANCH_DIMS int64_t N, int64_t cg, int64_t H, int64_t W, int nt

void ema_branch_forward(const float *gx, const float *gh, const float *gw, const float *gamma, const float *beta,
                        float eps, EMA_BRANCH_DIMS, float *stats, float *x1) {
    const int64_t P = H * W;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t k = 0; k < N * cg; k++) {
        const float *r = gx + k * P, *sh = gh + k * H, *sw = gw + k * W;
        float *o = x1 + k * P;
        double s = 0.;
        for (int64_t h = 0; h < H; h++) {
            const float v = sh[h];
            float rs = 0.f;
            for (int64_t w = 0; w < W; w++) { o[h * W + w] = r[h * W + w] * v * sw[w]; rs += o[h * W + w]; }
            s += rs;
        }
        const float mean = (float)(s / (double)P);
        double q = 0.;
        for (int64_t p = 0; p < P; p++) { const double d = o[p] - mean; q += d * d; }
        const float invstd = (float)(1. / sqrt(q / (double)P + eps));
        const int64_t c = k % cg;
        const float a = (gamma ? gamma[c] : 1.f) * invstd, bb = beta ? beta[c] : 0.f;
        for (int64_t p = 0; p < P; p++) o[p] = (o[p] - mean) * a + bb;
        stats[2 * k] = mean;
        stats[2 * k + 1] = invstd;
    }
}

void ema_branch_backward(const float *dx1, const float *gx, const float *gh, const float *gw, const float *gamma,
                         const float *stats, EMA_BRANCH_DIMS, float *dgx, float *dgh, float *dgw, float *dgamma,
                         float *dbeta) {
    const int64_t P = H * W;
    double *total = calloc(2 * cg, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        double *part = calloc(2 * cg, sizeof(double));
        float *t = malloc(sizeof(float) * 2 * P), *dt = t + P;
#pragma omp for schedule(static)
        for (int64_t k = 0; k < N * cg; k++) {
            const float *r = gx + k * P, *sh = gh + k * H, *sw = gw + k * W, *d = dx1 + k * P;
            const float mean = stats[2 * k], invstd = stats[2 * k + 1];
            const int64_t c = k % cg;
            double s1 = 0., s2 = 0.;
            for (int64_t h = 0; h < H; h++) {
                const float v = sh[h];
                float a1 = 0.f, a2 = 0.f;
                for (int64_t w = 0; w < W; w++) {
                    const float xh = (r[h * W + w] * v * sw[w] - mean) * invstd;
                    t[h * W + w] = xh;
                    a1 += d[h * W + w];
                    a2 += d[h * W + w] * xh;
                }
                s1 += a1;
                s2 += a2;
            }
            part[c] += s2;  /* dL/dgamma */
            part[cg + c] += s1;  /* dL/dbeta */
            const float g = (gamma ? gamma[c] : 1.f) * invstd, m1 = (float)(s1 / (double)P), m2 = (float)(s2 / (double)P);
            for (int64_t p = 0; p < P; p++) dt[p] = g * (d[p] - m1 - t[p] * m2);  /* dL/d(the product) */
            if (dgh)
                for (int64_t h = 0; h < H; h++) {
                    float a = 0.f;
                    for (int64_t w = 0; w < W; w++) a += dt[h * W + w] * r[h * W + w] * sw[w];
                    dgh[k * H + h] = a;
                }
            if (dgw) {
                float *o = dgw + k * W;
                for (int64_t w = 0; w < W; w++) o[w] = 0.f;
                for (int64_t h = 0; h < H; h++) {
                    const float v = sh[h];
                    for (int64_t w = 0; w < W; w++) o[w] += dt[h * W + w] * r[h * W + w] * v;
                }
            }
            if (dgx)
                for (int64_t h = 0; h < H; h++) {
                    const float v = sh[h];
                    for (int64_t w = 0; w < W; w++) dgx[k * P + h * W + w] = dt[h * W + w] * v * sw[w];
                }
        }
#pragma omp critical
        for (int64_t i = 0; i < 2 * cg; i++) total[i] += part[i];
        free(part); free(t);
    }
    if (dgamma) for (int64_t c = 0; c < cg; c++) dgamma[c] = (float)total[c];
    if (dbeta) for (int64_t c = 0; c < cg; c++) dbeta[c] = (float)total[cg + c];
    free(total);
}

/* ------------------------------------------------------------------ ECA's convolution over channels */
/* g = sigmoid(conv_k(h)) with the channels of each sample as a 1-D sequence of C values (ECA, ceca, ecam):
 * h is z itself (R == 0: eca, ceca; one input plane), or R planes h_r = relu(w1[r] z + b1[r]) (R > 0:
 * ecam's 1-tap conv 1 -> R). Each plane is padded by p on both sides -- zeros, or wrapped around
 * (circular, p <= C) -- and v[c] = b2 + sum_r sum_j w2[r, j] hp_r[c + j], g = sigmoid(v). z (B, C) row-major;
 * w2 (max(R, 1), k); w1, b1 (R) (b1 NULL for none), b2 (1) or NULL. One thread: the work is B C max(R, 1) k
 * multiply-adds, which the caller keeps small. */
static void chan_planes(const float *z, const float *w1, const float *b1, int64_t C, int64_t R, int64_t p,
                        int circular, float *hp) {
    const int64_t n = C + 2 * p, planes = R > 0 ? R : 1;
    for (int64_t r = 0; r < planes; r++) {
        float *row = hp + r * n;
        if (R > 0) {
            const float a = w1[r], o = b1 ? b1[r] : 0.f;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float u = a * z[c] + o;
                row[p + c] = u < 0.f ? 0.f : u;  /* relu keeps NaN, as torch's does */
            }
        } else {
            memcpy(row + p, z, sizeof(float) * C);
        }
        for (int64_t q = 0; q < p; q++) {
            row[q] = circular ? row[C + q] : 0.f;
            row[C + p + q] = circular ? row[p + q] : 0.f;
        }
    }
}

/* threads for B C planes k multiply-adds: one below 2^18 (a thread team costs more than the work) */
static int chan_threads(int64_t work, int nt) { return work < (1 << 18) ? 1 : nt; }

void chan_conv_gate_forward(const float *z, const float *w1, const float *b1, const float *w2, const float *b2,
                            int64_t B, int64_t C, int64_t R, int64_t k, int64_t p, int circular, int nt, float *g) {
    const int64_t n = C + 2 * p, planes = R > 0 ? R : 1;
#pragma omp parallel num_threads(chan_threads(B * C * planes * k, nt))
    {
        float *hp = malloc(sizeof(float) * planes * n);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            chan_planes(z + b * C, w1, b1, C, R, p, circular, hp);
            float *v = g + b * C;
            const float o = b2 ? b2[0] : 0.f;
            for (int64_t c = 0; c < C; c++) v[c] = o;
            for (int64_t r = 0; r < planes; r++)
                for (int64_t j = 0; j < k; j++) {
                    const float wv = w2[r * k + j], *src = hp + r * n + j;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) v[c] += wv * src[c];
                }
            sigmoid_inplace(v, C);
        }
        free(hp);
    }
}

/* The gradients of chan_conv_gate_forward for dL/dg = dg (each output NULL where not wanted): dz (B, C),
 * dw1 (R), db1 (R), dw2 (max(R, 1), k), db2 (1). The planes are recomputed from z; the weight and bias
 * gradients are summed per sample in float, over the samples in double. */
void chan_conv_gate_backward(const float *dg, const float *g, const float *z, const float *w1, const float *b1,
                             const float *w2, int64_t B, int64_t C, int64_t R, int64_t k, int64_t p, int circular,
                             int nt, float *dz, float *dw1, float *db1, float *dw2, float *db2) {
    const int64_t n = C + 2 * p, planes = R > 0 ? R : 1, nacc = planes * k + 1 + 2 * planes;
    double *total = calloc(nacc, sizeof(double));  /* dw2, db2, dw1, db1 */
#pragma omp parallel num_threads(chan_threads(B * C * planes * k, nt))
    {
        float *hp = malloc(sizeof(float) * planes * n), *dv = malloc(sizeof(float) * C);
        float *dhp = malloc(sizeof(float) * n), *dh = malloc(sizeof(float) * C);
        double *acc = calloc(nacc, sizeof(double));
        double *s2 = acc, *sb2 = acc + planes * k, *s1 = sb2 + 1, *sb1 = s1 + planes;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *zb = z + b * C, *gb = g + b * C, *dgb = dg + b * C;
            float tb = 0.f;
#pragma omp simd reduction(+ : tb)
            for (int64_t c = 0; c < C; c++) {
                dv[c] = dgb[c] * (1.f - gb[c]) * gb[c];  /* torch's sigmoid_backward */
                tb += dv[c];
            }
            *sb2 += tb;
            chan_planes(zb, w1, b1, C, R, p, circular, hp);
            float *dzb = dz ? dz + b * C : NULL;
            if (dzb && R > 0) for (int64_t c = 0; c < C; c++) dzb[c] = 0.f;
            for (int64_t r = 0; r < planes; r++) {
                const float *row = hp + r * n;
                if (dw2)
                    for (int64_t j = 0; j < k; j++) {
                        float t = 0.f;
                        const float *src = row + j;
#pragma omp simd reduction(+ : t)
                        for (int64_t c = 0; c < C; c++) t += dv[c] * src[c];
                        s2[r * k + j] += t;
                    }
                if (!(dzb || dw1 || db1)) continue;
                /* dL/dhp_r[c + j] += w2[r, j] dv[c], then the padding folds back: zeros drop, wraps add */
                for (int64_t q = 0; q < n; q++) dhp[q] = 0.f;
                for (int64_t j = 0; j < k; j++) {
                    const float wv = w2[r * k + j];
                    float *dst = dhp + j;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) dst[c] += wv * dv[c];
                }
                memcpy(dh, dhp + p, sizeof(float) * C);
                if (circular)
                    for (int64_t q = 0; q < p; q++) {
                        dh[C - p + q] += dhp[q];
                        dh[q] += dhp[C + p + q];
                    }
                if (R == 0) {
                    if (dzb) memcpy(dzb, dh, sizeof(float) * C);
                    continue;
                }
                const float a = w1[r], *hr = row + p;
                float tw = 0.f, to = 0.f;
#pragma omp simd reduction(+ : tw, to)
                for (int64_t c = 0; c < C; c++) {
                    const float du = hr[c] > 0.f ? dh[c] : 0.f;  /* relu's backward: the result > 0 */
                    dh[c] = du;
                    tw += du * zb[c];
                    to += du;
                }
                s1[r] += tw;
                sb1[r] += to;
                if (dzb) {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) dzb[c] += a * dh[c];
                }
            }
        }
#pragma omp critical
        for (int64_t i = 0; i < nacc; i++) total[i] += acc[i];
        free(hp); free(dv); free(dhp); free(dh); free(acc);
    }
    const double *s2 = total, *sb2 = total + planes * k, *s1 = sb2 + 1, *sb1 = s1 + planes;
    if (dw2) for (int64_t i = 0; i < planes * k; i++) dw2[i] = (float)s2[i];
    if (db2) db2[0] = (float)*sb2;
    if (dw1) for (int64_t r = 0; r < R; r++) dw1[r] = (float)s1[r];
    if (db1) for (int64_t r = 0; r < R; r++) db1[r] = (float)sb1[r];
    free(total);
}

/* ---------------------------------------------------------------------------------------------------------
 * Selective Kernel's branch tail (sk.py): per branch m, u_m = relu(BatchNorm_m(x_m)) of the branch's conv output
 * x_m (B, C, P); s = sum_m mean_p u_m (B, C), the input of the block's small MLP; out = sum_m a_m u_m with the
 * softmax weights a_m (B, C). u_m is never written: the kernels recompute it from x_m and the per-channel scale
 * and shift (ss: C scales then C shifts), which is one multiply-add per element.
 *
 * The BatchNorm is torch's: with batch_stats the batch mean and biased variance over (B, P) normalise, and the
 * running statistics (when given) move by momentum towards the mean and the unbiased variance; without, the
 * running statistics normalise. stats: C means then C values of 1 / sqrt(var + eps). The ReLU is torch's too:
 * NaN passes (u = x <= 0 ? 0 : x), and its gradient passes wherever u is not <= 0.
 *
 * Sums: per sample in double (channels_last: one double per channel along the rows; NCHW: float lanes over
 * blocks of NORM_BLOCK values, each block added in double), then over the samples in order, so the results do
 * not depend on the thread count. The variance sums are shifted by the first sample's first value of each
 * channel (no cancellation when the mean is large). */

INLINE float relu_keep_nan(float v) { return v <= 0.f ? 0.f : v; }

/* s[c] += sum_p (x[c, p] - k[c]) (and q[c] += its square when q) for one sample (C, P) in layout cl */
static void sample_channel_sums(const float *x, int64_t C, int64_t P, int cl, const float *k, double *s, double *q) {
    if (cl) {
        for (int64_t p = 0; p < P; p++) {
            const float *r = x + p * C;
            if (q) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) { const double d = (double)(r[c] - k[c]); s[c] += d; q[c] += d * d; }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) s[c] += (double)(r[c] - k[c]);
            }
        }
        return;
    }
    for (int64_t c = 0; c < C; c++) {
        const float *r = x + c * P, kc = k[c];
        for (int64_t i0 = 0; i0 < P; i0 += NORM_BLOCK) {
            const int64_t i1 = i0 + NORM_BLOCK < P ? i0 + NORM_BLOCK : P;
            float bs = 0.f, bq = 0.f;
#pragma omp simd reduction(+ : bs, bq)
            for (int64_t i = i0; i < i1; i++) { const float d = r[i] - kc; bs += d; bq += d * d; }
            s[c] += bs;
            if (q) q[c] += bq;
        }
    }
}

/* scale and shift of the normalisation (ss: C scales, C shifts) from the batch or the running statistics */
static void sk_norm(const float *x, int64_t B, int64_t C, int64_t P, int cl, int nt, int batch_stats,
                    const float *weight, const float *bias, float *running_mean, float *running_var, float momentum,
                    float eps, float *stats, float *ss) {
    const double n = (double)B * (double)P;
    double *sums = NULL;
    float *k = NULL;
    if (batch_stats) {
        sums = calloc((size_t)(2 * B * C), sizeof(double));
        k = malloc(sizeof(float) * C);
        for (int64_t c = 0; c < C; c++) k[c] = cl ? x[c] : x[c * P];
        SAMPLES sample_channel_sums(x + b * C * P, C, P, cl, k, sums + 2 * b * C, sums + (2 * b + 1) * C);
    }
    for (int64_t c = 0; c < C; c++) {
        double s = 0., q = 0.;
        if (batch_stats)
            for (int64_t b = 0; b < B; b++) { s += sums[2 * b * C + c]; q += sums[(2 * b + 1) * C + c]; }
        bn_channel(batch_stats, batch_stats ? k[c] : 0., s, q, n, c, weight, bias, running_mean, running_var, momentum,
                   eps, stats + c, stats + C + c, ss + c, ss + C + c);
    }
    free(sums);
    free(k);
}

/* One branch: its normalisation (stats, ss) and s[b, c] += mean_p u (accumulate == 0: s = that mean; s == NULL:
 * the normalisation alone, for a BatchNorm + ReLU that writes u with sk_select_forward). */
void sk_branch_forward(const float *x, int64_t B, int64_t C, int64_t P, int cl, int nt, int batch_stats,
                       const float *weight, const float *bias, float *running_mean, float *running_var, float momentum,
                       float eps, int accumulate, float *stats, float *ss, float *s) {
    sk_norm(x, B, C, P, cl, nt, batch_stats, weight, bias, running_mean, running_var, momentum, eps, stats, ss);
    if (!s) return;
    const float *sc = ss, *sh = ss + C;
    SAMPLES {
        const float *xb = x + b * C * P;
        float *sb = s + b * C;
        double *t = calloc((size_t)C, sizeof(double));
        if (cl) {
            for (int64_t p = 0; p < P; p++) {
                const float *r = xb + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) t[c] += (double)relu_keep_nan(r[c] * sc[c] + sh[c]);
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = xb + c * P, a = sc[c], h = sh[c];
                for (int64_t i0 = 0; i0 < P; i0 += NORM_BLOCK) {
                    const int64_t i1 = i0 + NORM_BLOCK < P ? i0 + NORM_BLOCK : P;
                    float bs = 0.f;
#pragma omp simd reduction(+ : bs)
                    for (int64_t i = i0; i < i1; i++) bs += relu_keep_nan(r[i] * a + h);
                    t[c] += bs;
                }
            }
        }
        for (int64_t c = 0; c < C; c++) sb[c] = (accumulate ? sb[c] : 0.f) + (float)(t[c] / (double)P);
        free(t);
    }
}

/* out = a0 u0 + a1 u1 (x1 == NULL: a0 u0 alone), plus out's values when accumulate: a0, a1 (B, C). */
void sk_select_forward(const float *x0, const float *ss0, const float *a0, const float *x1, const float *ss1,
                       const float *a1, int accumulate, int64_t B, int64_t C, int64_t P, int cl, int nt, float *out) {
    SAMPLES {
        const int64_t o = b * C * P;
        if (cl) {
            for (int64_t p = 0; p < P; p++) {
                const float *r0 = x0 + o + p * C, *r1 = x1 ? x1 + o + p * C : NULL, *w0 = a0 + b * C;
                float *y = out + o + p * C;
                if (r1) {
                    const float *w1 = a1 + b * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        y[c] = (accumulate ? y[c] : 0.f) + w0[c] * relu_keep_nan(r0[c] * ss0[c] + ss0[C + c])
                               + w1[c] * relu_keep_nan(r1[c] * ss1[c] + ss1[C + c]);
                } else {
#pragma omp simd
                    for (int64_t c = 0; c < C; c++)
                        y[c] = (accumulate ? y[c] : 0.f) + w0[c] * relu_keep_nan(r0[c] * ss0[c] + ss0[C + c]);
                }
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r0 = x0 + o + c * P, *r1 = x1 ? x1 + o + c * P : NULL;
                const float w0 = a0[b * C + c], s0 = ss0[c], h0 = ss0[C + c];
                float *y = out + o + c * P;
                if (r1) {
                    const float w1 = a1[b * C + c], s1 = ss1[c], h1 = ss1[C + c];
#pragma omp simd
                    for (int64_t i = 0; i < P; i++)
                        y[i] = (accumulate ? y[i] : 0.f) + w0 * relu_keep_nan(r0[i] * s0 + h0)
                               + w1 * relu_keep_nan(r1[i] * s1 + h1);
                } else {
#pragma omp simd
                    for (int64_t i = 0; i < P; i++) y[i] = (accumulate ? y[i] : 0.f) + w0 * relu_keep_nan(r0[i] * s0 + h0);
                }
            }
        }
    }
}

/* da[b, c] = sum_p dy u of one branch (the gradient of the select's weight a[b, c]). */
void sk_select_reduce(const float *x, const float *ss, const float *dy, int64_t B, int64_t C, int64_t P, int cl, int nt,
                      float *da) {
    SAMPLES {
        const int64_t o = b * C * P;
        double *t = calloc((size_t)C, sizeof(double));
        if (cl) {
            for (int64_t p = 0; p < P; p++) {
                const float *r = x + o + p * C, *d = dy + o + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) t[c] += (double)(d[c] * relu_keep_nan(r[c] * ss[c] + ss[C + c]));
            }
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = x + o + c * P, *d = dy + o + c * P, a = ss[c], h = ss[C + c];
                for (int64_t i0 = 0; i0 < P; i0 += NORM_BLOCK) {
                    const int64_t i1 = i0 + NORM_BLOCK < P ? i0 + NORM_BLOCK : P;
                    float bs = 0.f;
#pragma omp simd reduction(+ : bs)
                    for (int64_t i = i0; i < i1; i++) bs += d[i] * relu_keep_nan(r[i] * a + h);
                    t[c] += bs;
                }
            }
        }
        for (int64_t c = 0; c < C; c++) da[b * C + c] = (float)t[c];
        free(t);
    }
}

/* g = (dy a + ds / P) where u is not <= 0, else 0 (dy, a NULL: no select term; ds NULL: no pooling term) */
INLINE float sk_grad_u(float v, float d, float w, float e) { return v <= 0.f ? 0.f : d * w + e; }

/* dL/dx of one branch from dL/dout = dy (through out = ... + a u) and dL/ds = ds (through s = ... + mean_p u),
 * through the ReLU and the BatchNorm; dweight, dbias (C) when not NULL. Two passes: the sums of g and of
 * g (x - mean) per channel, then dx. */
void sk_branch_backward(const float *x, const float *dy, const float *a, const float *ds, const float *stats,
                        const float *ss, const float *weight, int batch_stats, int64_t B, int64_t C, int64_t P, int cl,
                        int nt, float *dx, float *dweight, float *dbias) {
    const float *sc = ss, *sh = ss + C, *mean = stats, *invstd = stats + C;
    const float ip = 1.f / (float)P;
    double *sums = calloc((size_t)(2 * B * C), sizeof(double));
    SAMPLES {
        const int64_t o = b * C * P;
        double *sg = sums + 2 * b * C, *sgx = sums + (2 * b + 1) * C;
        const float *ab = a ? a + b * C : NULL, *eb = ds ? ds + b * C : NULL;
        if (cl) {
            float *w = malloc(sizeof(float) * 2 * C), *e = w + C;
            for (int64_t c = 0; c < C; c++) { w[c] = ab ? ab[c] : 0.f; e[c] = eb ? eb[c] * ip : 0.f; }
            for (int64_t p = 0; p < P; p++) {
                const float *r = x + o + p * C, *d = dy ? dy + o + p * C : NULL;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float g = sk_grad_u(r[c] * sc[c] + sh[c], d ? d[c] : 0.f, w[c], e[c]);
                    sg[c] += (double)g;
                    sgx[c] += (double)(g * (r[c] - mean[c]));
                }
            }
            free(w);
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = x + o + c * P, *d = dy ? dy + o + c * P : NULL;
                const float w = ab ? ab[c] : 0.f, e = eb ? eb[c] * ip : 0.f, s = sc[c], h = sh[c], m = mean[c];
                for (int64_t i0 = 0; i0 < P; i0 += NORM_BLOCK) {
                    const int64_t i1 = i0 + NORM_BLOCK < P ? i0 + NORM_BLOCK : P;
                    float bs = 0.f, bx = 0.f;
#pragma omp simd reduction(+ : bs, bx)
                    for (int64_t i = i0; i < i1; i++) {
                        const float g = sk_grad_u(r[i] * s + h, d ? d[i] : 0.f, w, e);
                        bs += g;
                        bx += g * (r[i] - m);
                    }
                    sg[c] += bs;
                    sgx[c] += bx;
                }
            }
        }
    }
    const double n = (double)B * (double)P;
    float *k1 = malloc(sizeof(float) * 3 * C), *k2 = k1 + C, *k3 = k2 + C;
    for (int64_t c = 0; c < C; c++) {
        double sg = 0., sgx = 0.;
        for (int64_t b = 0; b < B; b++) { sg += sums[2 * b * C + c]; sgx += sums[(2 * b + 1) * C + c]; }
        const double is = invstd[c], aw = (weight ? weight[c] : 1.) * is;
        if (dweight) dweight[c] = (float)(sgx * is);
        if (dbias) dbias[c] = (float)sg;
        /* dx = aw (g - sg / n - (x - mean) is^2 sgx / n) with batch statistics, aw g with the running ones */
        k1[c] = (float)aw;
        k2[c] = batch_stats ? (float)(aw * sg / n) : 0.f;
        k3[c] = batch_stats ? (float)(aw * is * is * sgx / n) : 0.f;
    }
    free(sums);
    SAMPLES {
        const int64_t o = b * C * P;
        const float *ab = a ? a + b * C : NULL, *eb = ds ? ds + b * C : NULL;
        if (cl) {
            float *w = malloc(sizeof(float) * 2 * C), *e = w + C;
            for (int64_t c = 0; c < C; c++) { w[c] = ab ? ab[c] : 0.f; e[c] = eb ? eb[c] * ip : 0.f; }
            for (int64_t p = 0; p < P; p++) {
                const float *r = x + o + p * C, *d = dy ? dy + o + p * C : NULL;
                float *q = dx + o + p * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    const float g = sk_grad_u(r[c] * sc[c] + sh[c], d ? d[c] : 0.f, w[c], e[c]);
                    q[c] = k1[c] * g - k2[c] - (r[c] - mean[c]) * k3[c];
                }
            }
            free(w);
        } else {
            for (int64_t c = 0; c < C; c++) {
                const float *r = x + o + c * P, *d = dy ? dy + o + c * P : NULL;
                const float w = ab ? ab[c] : 0.f, e = eb ? eb[c] * ip : 0.f, s = sc[c], h = sh[c], m = mean[c];
                const float c1 = k1[c], c2 = k2[c], c3 = k3[c];
                float *q = dx + o + c * P;
#pragma omp simd
                for (int64_t i = 0; i < P; i++) q[i] = c1 * sk_grad_u(r[i] * s + h, d ? d[i] : 0.f, w, e) - c2 - (r[i] - m) * c3;
            }
        }
    }
    free(k1);
}

/* ---------------------------------------------------------------------------------------------------------
 * Gather-excite's local gate (ge.py, extent > 0): y = x * s[c, ih[h], iw[w]], the small map s (B, C, Hs, Ws)
 * upsampled by nearest-neighbour index maps ih (H), iw (W) (F.interpolate's own, computed by the caller).
 * s is given laid out as x: (B, Hs, Ws, C) for channels_last, (B, C, Hs, Ws) for NCHW. Backward:
 * dx = dy * s[...] and ds[c, i, j] = the sum of dy * x over the positions that read s[c, i, j] (float per
 * sample, in the order of the positions). */
void nearest_gate_forward(const float *x, const float *s, const int32_t *ih, const int32_t *iw, int64_t B, int64_t C,
                          int64_t H, int64_t W, int64_t Hs, int64_t Ws, int cl, int nt, float *y) {
    const int64_t P = H * W, Q = Hs * Ws;
    SAMPLES {
        const float *xb = x + b * C * P, *sb = s + b * C * Q;
        float *yb = y + b * C * P;
        if (cl) {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const float *r = xb + (h * W + w) * C, *g = sb + ((int64_t)ih[h] * Ws + iw[w]) * C;
                    float *o = yb + (h * W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] = r[c] * g[c];
                }
        } else {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *g = sb + (c * Hs + ih[h]) * Ws;
                    float *o = yb + (c * H + h) * W;
                    for (int64_t w = 0; w < W; w++) o[w] = r[w] * g[iw[w]];
                }
        }
    }
}

void nearest_gate_backward(const float *x, const float *s, const float *dy, const int32_t *ih, const int32_t *iw,
                           int64_t B, int64_t C, int64_t H, int64_t W, int64_t Hs, int64_t Ws, int cl, int nt,
                           float *dx, float *ds) {
    const int64_t P = H * W, Q = Hs * Ws;
    SAMPLES {
        const float *xb = x + b * C * P, *sb = s + b * C * Q, *db = dy + b * C * P;
        float *dxb = dx ? dx + b * C * P : NULL, *dsb = ds ? ds + b * C * Q : NULL;
        if (dsb) memset(dsb, 0, sizeof(float) * C * Q);
        if (cl) {
            for (int64_t h = 0; h < H; h++)
                for (int64_t w = 0; w < W; w++) {
                    const int64_t q = (int64_t)ih[h] * Ws + iw[w];
                    const float *r = xb + (h * W + w) * C, *d = db + (h * W + w) * C, *g = sb + q * C;
                    if (dxb) {
                        float *o = dxb + (h * W + w) * C;
#pragma omp simd
                        for (int64_t c = 0; c < C; c++) o[c] = d[c] * g[c];
                    }
                    if (dsb) {
                        float *t = dsb + q * C;
#pragma omp simd
                        for (int64_t c = 0; c < C; c++) t[c] += d[c] * r[c];
                    }
                }
        } else {
            for (int64_t c = 0; c < C; c++)
                for (int64_t h = 0; h < H; h++) {
                    const float *r = xb + (c * H + h) * W, *d = db + (c * H + h) * W, *g = sb + (c * Hs + ih[h]) * Ws;
                    if (dxb) {
                        float *o = dxb + (c * H + h) * W;
                        for (int64_t w = 0; w < W; w++) o[w] = d[w] * g[iw[w]];
                    }
                    if (dsb) {
                        float *t = dsb + (c * Hs + ih[h]) * Ws;
                        for (int64_t w = 0; w < W; w++) t[iw[w]] += d[w] * r[w];
                    }
                }
        }
    }
}
