/* The output layer's product (normed hidden rows times a Q8_0 output matrix: the
   logits), computed here for llama.cpp on x86 CPUs with AVX-512 VNNI.

   A step's last matrix product is what every generated token pays most for with a
   large vocabulary: with Gemma 3's 262,144 x 640 matrix, a step of 8 rows took 78 ms
   here with every row's logits and 33 ms with none. ggml multiplies it with 256-bit
   vectors, one weight row and one hidden row at a time. This kernel reads each weight
   block once per step for up to 8 hidden rows and works on two weight rows per 512-bit
   vector, prefetching the matrix ahead.

   The sums are ggml's own, in ggml's order, so the logits are the very bits ggml gives:
   each hidden row is quantized as ggml's x86 quantize_row_q8_0 does it; every block
   gives eight lanes of four-product integer sums; each lane adds
   fp32(d_w) * fp32(d_x) * sum with a fused multiply-add, block after block; and the
   eight lanes are added as ggml's hsum adds them. BatchEngine.warm_up() compares both
   on real steps (OUTPUT_HEAD_PROBE) and keeps this kernel only where every bit agrees.

   llama.cpp is told through the scheduler's eval callback (the llama_context_params
   cb_eval): asked about "result_norm", the callback wants it, so that the graph is
   computed up to it; asked next about "result_output" (the product), it computes the
   product into that tensor's data and marks the node GGML_OP_NONE, which ggml skips,
   then puts the op back once that node has "run". llama.cpp then copies, orders and
   hands out the logits as always. */
#pragma once

/* GCC 12 warns of the undefined upper halves that AVX-512 casts leave on purpose */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SHIMMY_HEAD_X86 1
#define SHIMMY_HEAD_TARGET \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#else
#define SHIMMY_HEAD_X86 0
#endif

enum { OUTPUT_HEAD_OFF = 0, OUTPUT_HEAD_PROBE = 1, OUTPUT_HEAD_ON = 2 };

#define SHIMMY_QK 32            /* values per Q8_0 block */
#define SHIMMY_Q8_BLOCK 34      /* bytes per Q8_0 block: an fp16 scale and 32 int8 */
#define SHIMMY_X_BYTES 128      /* a quantized hidden block as the kernel reads it */
#define SHIMMY_HEAD_ROWS 8      /* hidden rows per pass over a weight row pair */
#define SHIMMY_HEAD_AHEAD 8     /* weight rows prefetched ahead (6 to 12 timed alike) */

struct ShimmyHead {
    int mode = OUTPUT_HEAD_OFF;
    int n_threads = 1;
    const ggml_tensor * norm = nullptr;  /* this graph's result_norm */
    bool norm_ready = false;             /* computed, and no other node asked since */
    ggml_tensor * patched = nullptr;     /* the product whose op is GGML_OP_NONE now */
    ggml_tensor * probed = nullptr;      /* the product ggml computes, to compare */
    std::vector<uint8_t> xq;             /* quantized hidden rows, see quantize_rows */
    std::vector<float> xd;               /* their block scales */
    std::vector<float> probe;            /* logits of the probed product */
    uint64_t probe_single = 0;           /* rows compared in one-row products */
    uint64_t probe_multi = 0;            /* rows compared in products of several rows */
    uint64_t probe_bad = 0;              /* rows whose bits differed */
    uint64_t rows = 0;                   /* rows computed in ggml's place (ON) */
};

#if SHIMMY_HEAD_X86

SHIMMY_HEAD_TARGET static inline float shimmy_hsum8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Each block of each row as ggml's x86 quantize_row_q8_0 makes it, stored for the
   kernel as SHIMMY_X_BYTES: the 32 values twice (a vector's two halves), then each lane's
   correction, -128 times the sum of its four values (see shimmy_head_pair); and the
   block's scale, rounded through fp16, as a float. */
SHIMMY_HEAD_TARGET static void shimmy_quantize_rows(const char * x, size_t row_bytes, int rows,
                                                    int blocks, uint8_t * xq, float * xd) {
    for (int r = 0; r < rows; r++) {
        const float * row = (const float *) (x + r * row_bytes);
        for (int l = 0; l < blocks; l++) {
            const float * v = row + l * SHIMMY_QK;
            float amax = 0.0f;
            for (int i = 0; i < SHIMMY_QK; i++) {
                const float a = fabsf(v[i]);
                amax = amax > a ? amax : a;
            }
            const float d = amax / 127.f;
            xd[r * blocks + l] = _cvtsh_ss(_cvtss_sh(d, 0));
            const float id = amax != 0.0f ? 127.f / amax : 0.0f;
            uint8_t * block = xq + ((size_t) r * blocks + l) * SHIMMY_X_BYTES;
            int8_t * q = (int8_t *) block;
            int32_t * correction = (int32_t *) (block + 2 * SHIMMY_QK);
            for (int i = 0; i < SHIMMY_QK; i++) {
                int n = (int) nearbyintf(v[i] * id);
                q[i] = q[i + SHIMMY_QK] = (int8_t) (n < -128 ? -128 : n > 127 ? 127 : n);
            }
            for (int lane = 0; lane < 8; lane++) {
                const int8_t * four = q + 4 * lane;
                correction[lane] = correction[lane + 8] = -128 * (four[0] + four[1] + four[2] + four[3]);
            }
        }
    }
}

/* Logits of weight rows t and u (u == t for an odd last row) for NR hidden rows. The
   lower half of a vector holds row t's eight lanes, the upper half row u's. dpbusd
   multiplies unsigned by signed bytes: the weights come in plus 128 (a flipped top bit)
   and each lane starts from its correction, so the lanes hold ggml's exact sums. */
template <int NR>
SHIMMY_HEAD_TARGET static inline void shimmy_head_pair(const uint8_t * rt, const uint8_t * ru,
                                                       int blocks, const uint8_t * xq,
                                                       const float * xd, float * out,
                                                       int64_t out_stride, int64_t t,
                                                       int64_t u) {
    const __m512i top_bit = _mm512_set1_epi8((char) 0x80);
    __m512 acc[NR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++) acc[i] = _mm512_setzero_ps();
    for (int l = 0; l < blocks; l++) {
        const uint8_t * bt = rt + l * SHIMMY_Q8_BLOCK;
        const uint8_t * bu = ru + l * SHIMMY_Q8_BLOCK;
        const __m512i w = _mm512_xor_si512(top_bit, _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) (bt + 2))),
            _mm256_loadu_si256((const __m256i *) (bu + 2)), 1));
        uint16_t ht, hu;
        memcpy(&ht, bt, 2);
        memcpy(&hu, bu, 2);
        const __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(_cvtsh_ss(ht)),
                                             _mm256_set1_ps(_cvtsh_ss(hu)), 1);
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) {
            const uint8_t * block = xq + ((size_t) i * blocks + l) * SHIMMY_X_BYTES;
            const __m512i correction = _mm512_loadu_si512(block + 2 * SHIMMY_QK);
            const __m512i sums = _mm512_dpbusd_epi32(correction, w, _mm512_loadu_si512(block));
            const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[i * blocks + l]));
            acc[i] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), acc[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++) {
        out[i * out_stride + t] = shimmy_hsum8(_mm512_castps512_ps256(acc[i]));
        if (u != t) out[i * out_stride + u] = shimmy_hsum8(_mm512_extractf32x8_ps(acc[i], 1));
    }
}

/* Weight rows [first, last) for every hidden row, SHIMMY_HEAD_ROWS of them at a time. */
SHIMMY_HEAD_TARGET static void shimmy_head_range(const uint8_t * w, size_t w_row_bytes,
                                                 int64_t n_w_rows, int blocks, int rows,
                                                 const uint8_t * xq, const float * xd,
                                                 float * out, int64_t out_stride,
                                                 int64_t first, int64_t last) {
    for (int64_t t = first; t < last; t += 2) {
        const int64_t u = t + 1 < n_w_rows ? t + 1 : t;
        const uint8_t * rt = w + t * w_row_bytes;
        const uint8_t * ru = w + u * w_row_bytes;
        const uint8_t * ahead = rt + SHIMMY_HEAD_AHEAD * w_row_bytes;
        for (size_t line = 0; line < 2 * w_row_bytes; line += 64) {
            _mm_prefetch((const char *) ahead + line, _MM_HINT_T0);
        }
        for (int r0 = 0; r0 < rows; r0 += SHIMMY_HEAD_ROWS) {
            const int n = rows - r0 < SHIMMY_HEAD_ROWS ? rows - r0 : SHIMMY_HEAD_ROWS;
            const uint8_t * x = xq + (size_t) r0 * blocks * SHIMMY_X_BYTES;
            const float * d = xd + r0 * blocks;
            float * o = out + r0 * out_stride;
            switch (n) {
            case 1: shimmy_head_pair<1>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 2: shimmy_head_pair<2>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 3: shimmy_head_pair<3>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 4: shimmy_head_pair<4>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 5: shimmy_head_pair<5>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 6: shimmy_head_pair<6>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            case 7: shimmy_head_pair<7>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            default: shimmy_head_pair<8>(rt, ru, blocks, x, d, o, out_stride, t, u); break;
            }
        }
    }
}

static bool shimmy_head_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c")
        && __builtin_cpu_supports("fma");
}

/* The product of node t (weights t->src[0], hidden rows t->src[1]) into out. */
static void shimmy_head_compute(ShimmyHead * h, const ggml_tensor * t, float * out,
                                int64_t out_stride) {
    const ggml_tensor * w = t->src[0];
    const ggml_tensor * x = t->src[1];
    const int blocks = (int) (x->ne[0] / SHIMMY_QK);
    const int rows = (int) x->ne[1];
    const int64_t n_w_rows = w->ne[1];
    const int64_t pairs = (n_w_rows + 1) / 2;
    h->xq.resize((size_t) rows * blocks * SHIMMY_X_BYTES);
    h->xd.resize((size_t) rows * blocks);
    shimmy_quantize_rows((const char *) x->data, x->nb[1], rows, blocks, h->xq.data(),
                         h->xd.data());
    const uint8_t * wd = (const uint8_t *) w->data;
    const uint8_t * xq = h->xq.data();
    const float * xd = h->xd.data();
#pragma omp parallel num_threads(h->n_threads)
    {
        const int64_t nth = omp_get_num_threads(), ith = omp_get_thread_num();
        const int64_t share = (pairs + nth - 1) / nth;
        const int64_t first = 2 * share * ith;
        const int64_t last = 2 * share * (ith + 1) < n_w_rows ? 2 * share * (ith + 1) : n_w_rows;
        if (first < last) {
            shimmy_head_range(wd, w->nb[1], n_w_rows, blocks, rows, xq, xd, out, out_stride,
                              first, last);
        }
    }
}

static bool shimmy_on_host(const ggml_tensor * t) {
    return t->data != nullptr && (t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer));
}

/* Whether node t is the plain product this kernel does, of the computed result_norm. */
static bool shimmy_head_fits(const ShimmyHead * h, const ggml_tensor * t) {
    const ggml_tensor * w = t->src[0];
    const ggml_tensor * x = t->src[1];
    if (!h->norm_ready || t->op != GGML_OP_MUL_MAT || x != h->norm || w == nullptr) return false;
    if (w->type != GGML_TYPE_Q8_0 || x->type != GGML_TYPE_F32 || t->type != GGML_TYPE_F32) {
        return false;
    }
    const int64_t n_embd = w->ne[0];
    return n_embd % SHIMMY_QK == 0 && x->ne[0] == n_embd && t->ne[0] == w->ne[1]
        && t->ne[1] == x->ne[1] && w->ne[2] == 1 && w->ne[3] == 1 && x->ne[2] == 1
        && x->ne[3] == 1 && t->ne[2] == 1 && t->ne[3] == 1
        && w->nb[1] == (size_t) (n_embd / SHIMMY_QK * SHIMMY_Q8_BLOCK)
        && x->nb[0] == sizeof(float) && t->nb[0] == sizeof(float)
        && shimmy_on_host(w) && shimmy_on_host(x) && shimmy_on_host(t);
}

/* Asked about the product: compute it (ON), or compute it aside for comparing with what
   ggml is about to compute (PROBE). Wanting the node brings the call after it. */
static bool shimmy_head_before_output(ShimmyHead * h, ggml_tensor * t) {
    if (t == h->patched) t->op = GGML_OP_MUL_MAT;  /* a view that was cut short */
    h->patched = h->probed = nullptr;
    if (!shimmy_head_fits(h, t) || t->ne[1] == 0) return false;
    if (h->mode == OUTPUT_HEAD_PROBE) {
        h->probe.resize((size_t) t->ne[0] * t->ne[1]);
        shimmy_head_compute(h, t, h->probe.data(), t->ne[0]);
        h->probed = t;
        return true;
    }
    shimmy_head_compute(h, t, (float *) t->data, (int64_t) (t->nb[1] / sizeof(float)));
    h->rows += t->ne[1];
    t->op = GGML_OP_NONE;
    h->patched = t;
    return true;
}

static void shimmy_head_compare(ShimmyHead * h, const ggml_tensor * t) {
    const int64_t n = t->ne[0];
    for (int64_t r = 0; r < t->ne[1]; r++) {
        const float * ggml_row = (const float *) ((const char *) t->data + r * t->nb[1]);
        if (memcmp(ggml_row, h->probe.data() + r * n, n * sizeof(float)) != 0) {
            h->probe_bad++;
        } else if (t->ne[1] == 1) {
            h->probe_single++;
        } else {
            h->probe_multi++;
        }
    }
}

static bool shimmy_head_eval(ggml_tensor * t, bool ask, void * user_data) {
    ShimmyHead * h = (ShimmyHead *) user_data;
    if (h->mode == OUTPUT_HEAD_OFF) return false;
    if (ask) {
        if (strcmp(t->name, "result_output") == 0) return shimmy_head_before_output(h, t);
        h->norm_ready = false;
        if (strcmp(t->name, "result_norm") == 0) {
            h->norm = t;
            return true;
        }
        return false;
    }
    if (t == h->norm) {
        h->norm_ready = true;
    } else if (t == h->patched) {
        t->op = GGML_OP_MUL_MAT;
        h->patched = nullptr;
    } else if (t == h->probed) {
        shimmy_head_compare(h, t);
        h->probed = nullptr;
    }
    return true;
}

#else  /* not x86 with GCC: ggml computes the product */

static bool shimmy_head_supported(void) { return false; }
static bool shimmy_head_eval(ggml_tensor *, bool, void *) { return false; }

#endif

static ShimmyHead * shimmy_head_new(int n_threads) {
    ShimmyHead * h = new ShimmyHead();
    h->n_threads = n_threads;
    return h;
}

static void shimmy_head_free(ShimmyHead * h) { delete h; }

/* Route a context's graph evaluation through the head, where this CPU can run it. */
static bool shimmy_head_attach(llama_context_params * params, ShimmyHead * h) {
    if (!shimmy_head_supported()) return false;
    params->cb_eval = shimmy_head_eval;
    params->cb_eval_user_data = h;
    return true;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
