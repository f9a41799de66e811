# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The one boundary to llama.cpp: model, context, slots and the per-token loop.

Everything that runs once per generated token lives here, in C: batch fill,
``llama_decode`` with the GIL released, per-slot sampler chains, token to bytes,
UTF-8 completion and stop strings. Python sees one list of finished pieces per step.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport fflush, fputs, stderr
from libc.math cimport INFINITY, expf, logf, sqrtf
from libc.string cimport memcmp, memcpy
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector


cdef extern from "llama.h" nogil:
    ctypedef int32_t llama_token
    ctypedef int32_t llama_pos
    ctypedef int32_t llama_seq_id

    cdef struct llama_model:
        pass
    cdef struct llama_context:
        pass
    cdef struct llama_vocab:
        pass
    cdef struct llama_sampler:
        pass
    cdef struct llama_adapter_lora:
        pass
    cdef struct llama_memory_i:
        pass
    ctypedef llama_memory_i * llama_memory_t

    cdef enum llama_load_mode:
        LLAMA_LOAD_MODE_NONE
        LLAMA_LOAD_MODE_MMAP

    cdef enum llama_flash_attn_type:
        LLAMA_FLASH_ATTN_TYPE_AUTO
        LLAMA_FLASH_ATTN_TYPE_DISABLED
        LLAMA_FLASH_ATTN_TYPE_ENABLED

    cdef enum ggml_type:
        GGML_TYPE_F16
        GGML_TYPE_Q8_0
        GGML_TYPE_BF16

    cdef enum llama_pooling_type:
        LLAMA_POOLING_TYPE_UNSPECIFIED
        LLAMA_POOLING_TYPE_NONE
        LLAMA_POOLING_TYPE_MEAN

    cdef enum ggml_log_level:
        GGML_LOG_LEVEL_NONE
        GGML_LOG_LEVEL_DEBUG
        GGML_LOG_LEVEL_INFO
        GGML_LOG_LEVEL_WARN
        GGML_LOG_LEVEL_ERROR
        GGML_LOG_LEVEL_CONT

    ctypedef void (*ggml_log_callback)(ggml_log_level level, const char * text, void * user_data)

    cdef struct llama_model_params:
        int32_t n_gpu_layers
        llama_load_mode load_mode
        cbool use_extra_bufts

    cdef struct llama_context_params:
        uint32_t n_ctx
        uint32_t n_batch
        uint32_t n_ubatch
        uint32_t n_seq_max
        int32_t n_threads
        int32_t n_threads_batch
        llama_pooling_type pooling_type
        llama_flash_attn_type flash_attn_type
        cbool embeddings
        cbool no_perf
        cbool swa_full
        cbool kv_unified
        ggml_type type_k
        ggml_type type_v

    ctypedef struct llama_sampler_chain_params:
        cbool no_perf

    ctypedef struct llama_batch:
        int32_t n_tokens
        llama_token * token
        float * embd
        llama_pos * pos
        int32_t * n_seq_id
        llama_seq_id ** seq_id
        int8_t * logits

    ctypedef struct llama_token_data:
        llama_token id
        float logit
        float p

    ctypedef struct llama_token_data_array:
        llama_token_data * data
        size_t size
        int64_t selected
        cbool sorted

    ctypedef struct llama_logit_bias:
        llama_token token
        float bias

    void llama_backend_init()
    void llama_log_set(ggml_log_callback log_callback, void * user_data)
    const char * llama_print_system_info()
    cbool llama_supports_gpu_offload()
    cbool llama_supports_mmap()
    size_t llama_max_parallel_sequences()

    llama_model_params llama_model_default_params()
    llama_context_params llama_context_default_params()
    llama_sampler_chain_params llama_sampler_chain_default_params()

    llama_model * llama_model_load_from_file(const char * path, llama_model_params params) except +
    void llama_model_free(llama_model * model)
    llama_context * llama_init_from_model(llama_model * model, llama_context_params params) except +
    void llama_free(llama_context * ctx)

    const llama_vocab * llama_model_get_vocab(const llama_model * model)
    int32_t llama_model_n_ctx_train(const llama_model * model)
    int32_t llama_model_n_embd(const llama_model * model)
    int32_t llama_model_n_layer(const llama_model * model)
    int32_t llama_model_n_swa(const llama_model * model)
    uint64_t llama_model_size(const llama_model * model)
    uint64_t llama_model_n_params(const llama_model * model)
    int32_t llama_model_desc(const llama_model * model, char * buf, size_t buf_size)
    const char * llama_model_chat_template(const llama_model * model, const char * name)
    cbool llama_model_has_encoder(const llama_model * model)

    llama_adapter_lora * llama_adapter_lora_init(llama_model * model, const char * path)
    int32_t llama_set_adapters_lora(llama_context * ctx, llama_adapter_lora ** adapters,
                                    size_t n_adapters, float * scales)

    uint32_t llama_n_ctx(const llama_context * ctx)
    uint32_t llama_n_ctx_seq(const llama_context * ctx)
    uint32_t llama_n_batch(const llama_context * ctx)
    llama_memory_t llama_get_memory(const llama_context * ctx)
    void llama_memory_clear(llama_memory_t mem, cbool data)
    cbool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq, llama_pos p0, llama_pos p1)
    llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq)
    llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq)
    size_t llama_state_seq_get_size(llama_context * ctx, llama_seq_id seq_id)
    size_t llama_state_seq_get_data(llama_context * ctx, uint8_t * dst, size_t size,
                                    llama_seq_id seq_id)
    size_t llama_state_seq_set_data(llama_context * ctx, const uint8_t * src, size_t size,
                                    llama_seq_id dest_seq_id)
    float * llama_get_logits_ith(llama_context * ctx, int32_t i)
    float * llama_get_embeddings_seq(llama_context * ctx, llama_seq_id seq)
    float * llama_get_embeddings_ith(llama_context * ctx, int32_t i)
    int llama_get_pooling_type "llama_pooling_type"(const llama_context * ctx)

    int32_t llama_vocab_n_tokens(const llama_vocab * vocab)
    cbool llama_vocab_is_eog(const llama_vocab * vocab, llama_token token)
    llama_token llama_vocab_bos(const llama_vocab * vocab)
    llama_token llama_vocab_eos(const llama_vocab * vocab)
    cbool llama_vocab_get_add_bos(const llama_vocab * vocab)
    llama_token llama_vocab_fim_pre(const llama_vocab * vocab)
    llama_token llama_vocab_fim_suf(const llama_vocab * vocab)
    llama_token llama_vocab_fim_mid(const llama_vocab * vocab)
    int32_t llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                           llama_token * tokens, int32_t n_tokens_max,
                           cbool add_special, cbool parse_special) except +
    int32_t llama_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf,
                                 int32_t length, int32_t lstrip, cbool special)
    int32_t llama_detokenize(const llama_vocab * vocab, const llama_token * tokens,
                             int32_t n_tokens, char * text, int32_t text_len_max,
                             cbool remove_special, cbool unparse_special) except +

    llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)
    void llama_batch_free(llama_batch batch)
    int32_t llama_decode(llama_context * ctx, llama_batch batch)
    void llama_set_n_threads(llama_context * ctx, int32_t n_threads, int32_t n_threads_batch)

    llama_sampler * llama_sampler_chain_init(llama_sampler_chain_params params)
    void llama_sampler_chain_add(llama_sampler * chain, llama_sampler * smpl)
    llama_sampler * llama_sampler_init_greedy()
    llama_sampler * llama_sampler_init_dist(uint32_t seed)
    llama_sampler * llama_sampler_init_top_k(int32_t k)
    llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep)
    llama_sampler * llama_sampler_init_temp(float t)
    llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n,
                                                 float penalty_repeat, float penalty_freq,
                                                 float penalty_present)
    llama_sampler * llama_sampler_init_grammar(const llama_vocab * vocab, const char * grammar_str,
                                               const char * grammar_root)
    llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
                                                  const llama_logit_bias * logit_bias)
    void llama_sampler_accept(llama_sampler * smpl, llama_token token)
    void llama_sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p)
    llama_token llama_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx)
    void llama_sampler_free(llama_sampler * smpl)


cdef extern from *:
    """
    #if defined(__linux__) && defined(__x86_64__)
    #include <sys/syscall.h>
    #include <unistd.h>
    /* Linux hands out AMX tile registers only to processes that ask (ARCH_REQ_XCOMP_PERM
       for XFEATURE_XTILEDATA); ggml built for an AMX CPU would die of SIGILL otherwise. */
    static int shimmy_request_amx(void) { return (int) syscall(SYS_arch_prctl, 0x1023, 18); }
    #else
    static int shimmy_request_amx(void) { return -1; }
    #endif
    """
    int shimmy_request_amx()


cdef extern from "output_head.h" nogil:
    cdef cppclass ShimmyHead:
        int mode
        uint64_t probe_single
        uint64_t probe_multi
        uint64_t probe_bad
        uint64_t rows
    enum:
        OUTPUT_HEAD_OFF
        OUTPUT_HEAD_PROBE
        OUTPUT_HEAD_ON
    cbool shimmy_head_supported()
    ShimmyHead * shimmy_head_new(int n_threads)
    void shimmy_head_free(ShimmyHead * head)
    cbool shimmy_head_attach(llama_context_params * params, ShimmyHead * head)


cdef extern from "ggml-backend.h" nogil:
    size_t ggml_backend_reg_count()
    void ggml_backend_load_all_from_path(const char * dir_path)


cdef extern from *:
    """
    #include <link.h>
    #include <string.h>
    /* ggml built with GGML_BACKEND_DL dlopens every libggml-cpu-<variant>.so to score it
       and keeps only the best one mapped: the one found here is the variant in use. */
    static int shimmy_match_cpu_variant(struct dl_phdr_info * info, size_t size, void * out) {
        const char * base = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
        const char * end;
        size_t n;
        (void) size;
        base = base ? base + 1 : info->dlpi_name;
        if (base == NULL || strncmp(base, "libggml-cpu-", 12) != 0) return 0;
        base += 12;
        end = strstr(base, ".so");
        n = end ? (size_t) (end - base) : strlen(base);
        if (n > 63) n = 63;
        memcpy(out, base, n);
        ((char *) out)[n] = 0;
        return 1;
    }
    static void shimmy_cpu_variant(char * out) {
        out[0] = 0;
        dl_iterate_phdr(shimmy_match_cpu_variant, out);
    }
    """
    void shimmy_cpu_variant(char * out)


cdef extern from *:
    """
    #if defined(__SSE2__) && defined(__GNUC__)
    #include <emmintrin.h>
    #endif
    /* The first index from i on whose value is above floor, or n: what a scalar loop with
       `x[i] > floor` finds (NaNs never are), 16 values at a time where SSE2 is there. */
    static int shimmy_next_above(const float * x, int i, int n, float floor) {
    #if defined(__SSE2__) && defined(__GNUC__)
        const __m128 f = _mm_set1_ps(floor);
        for (; i + 16 <= n; i += 16) {
            int hits = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i), f))
                | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i + 4), f)) << 4
                | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i + 8), f)) << 8
                | _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + i + 12), f)) << 12;
            if (hits) return i + __builtin_ctz(hits);
        }
    #endif
        for (; i < n; i++) {
            if (x[i] > floor) return i;
        }
        return n;
    }
    """
    int shimmy_next_above(const float * x, int i, int n, float floor) noexcept nogil


from shimmy.engine.lifecycle import StepFailed


class LlamaError(RuntimeError):
    """llama.cpp refused: a model that does not load, a context that cannot be made."""


# ---------------------------------------------------------------- logging

cdef string _log_tail          # the last error lines, to explain a failure
cdef cbool _log_verbose = False


cdef void _on_log(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    global _log_tail
    if _log_verbose:
        fputs(text, stderr)
        fflush(stderr)
    if level == GGML_LOG_LEVEL_ERROR or level == GGML_LOG_LEVEL_WARN:
        _log_tail.append(text)
        if _log_tail.size() > 4096:
            _log_tail.erase(0, _log_tail.size() - 4096)


def init_backend(verbose: bool = False, backend_dir: str | None = None) -> int:
    """Initialise llama.cpp once per process and route its log through us.

    A portable build (``GGML_BACKEND_DL``) keeps its CPU variants in ``backend_dir``; the
    best one this CPU runs is loaded from there. Returns the number of ggml backends.
    """
    global _log_verbose
    _log_verbose = verbose
    shimmy_request_amx()
    llama_log_set(_on_log, NULL)
    if backend_dir:
        load_backends(backend_dir)
    llama_backend_init()
    return ggml_backend_reg_count()


def load_backends(str directory) -> int:
    """Load ggml's loadable backends from a folder, unless some are registered already.

    A build without ``GGML_BACKEND_DL`` has its CPU backend built in, so this is a no-op.
    """
    cdef bytes path = directory.encode()
    if ggml_backend_reg_count() == 0:
        ggml_backend_load_all_from_path(path)
    return ggml_backend_reg_count()


def cpu_variant() -> str:
    """The ``libggml-cpu-<variant>.so`` in use (``haswell``, ``skylakex``, ...).

    Empty for a build whose CPU backend is built in (not portable: ``GGML_NATIVE``).
    """
    cdef char name[64]
    shimmy_cpu_variant(name)
    return name.decode("utf-8", "replace")


def take_log_tail() -> str:
    """The warnings and errors llama.cpp logged since the last call."""
    global _log_tail
    text = _log_tail.decode("utf-8", "replace")
    _log_tail.clear()
    return text.strip()


def system_info() -> str:
    return llama_print_system_info().decode("utf-8", "replace").strip()


def amx_in_build() -> bool:
    """Whether ggml was compiled with its AMX kernels.

    Those kernels (reached through the extra weight buffers) die with SIGILL on some
    AMX machines in this llama.cpp, so such builds load weights without extra buffers.
    """
    return b"AMX_INT8 = 1" in llama_print_system_info()


def output_head_supported() -> bool:
    """Whether this CPU runs the output head of ``output_head.h`` (AVX-512 VNNI)."""
    return shimmy_head_supported()


def supports_gpu_offload() -> bool:
    return llama_supports_gpu_offload()


def supports_mmap() -> bool:
    return llama_supports_mmap()


# ---------------------------------------------------------------- model

cdef class Model:
    """Weights and vocabulary of one GGUF, loaded through the C API."""

    cdef llama_model * ptr
    cdef const llama_vocab * vocab
    cdef vector[llama_adapter_lora *] loras
    cdef readonly str path

    def __cinit__(self, str path, int gpu_layers=0, bint use_mmap=True, list loras=None,
                  extra_buffers=None):
        cdef llama_model_params params = llama_model_default_params()
        cdef bytes bpath = path.encode()
        cdef const char * cpath = bpath
        cdef llama_adapter_lora * lora
        params.n_gpu_layers = gpu_layers
        params.load_mode = LLAMA_LOAD_MODE_MMAP if use_mmap else LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = (not amx_in_build()) if extra_buffers is None else extra_buffers
        self.path = path
        take_log_tail()
        with nogil:
            self.ptr = llama_model_load_from_file(cpath, params)
        if self.ptr is NULL:
            raise LlamaError(_failure("could not load model", path))
        self.vocab = llama_model_get_vocab(self.ptr)
        for lora_path in loras or ():
            blora = str(lora_path).encode()
            lora = llama_adapter_lora_init(self.ptr, blora)
            if lora is NULL:
                raise LlamaError(_failure("could not load LoRA adapter", str(lora_path)))
            self.loras.push_back(lora)

    def __dealloc__(self):
        # adapters belong to the model and are freed with it
        if self.ptr is not NULL:
            llama_model_free(self.ptr)
            self.ptr = NULL

    @property
    def n_ctx_train(self) -> int:
        return llama_model_n_ctx_train(self.ptr)

    @property
    def n_vocab(self) -> int:
        return llama_vocab_n_tokens(self.vocab)

    @property
    def n_params(self) -> int:
        return llama_model_n_params(self.ptr)

    @property
    def size_bytes(self) -> int:
        return llama_model_size(self.ptr)

    @property
    def n_loras(self) -> int:
        return self.loras.size()

    @property
    def description(self) -> str:
        cdef char buf[256]
        n = llama_model_desc(self.ptr, buf, sizeof(buf))
        return buf[:max(n, 0)].decode("utf-8", "replace")

    @property
    def chat_template(self) -> str | None:
        cdef const char * tmpl = llama_model_chat_template(self.ptr, NULL)
        return None if tmpl is NULL else tmpl.decode("utf-8", "replace")

    @property
    def bos_token(self) -> int:
        return llama_vocab_bos(self.vocab)

    @property
    def fim_tokens(self) -> tuple | None:
        """(prefix, suffix, middle) fill-in-the-middle tokens, or None if the model has none."""
        cdef llama_token pre = llama_vocab_fim_pre(self.vocab)
        cdef llama_token suf = llama_vocab_fim_suf(self.vocab)
        cdef llama_token mid = llama_vocab_fim_mid(self.vocab)
        if pre < 0 or suf < 0 or mid < 0:
            return None
        return (pre, suf, mid)

    def token_text(self, int token) -> str:
        """A token as text with control tokens spelled out (``<bos>``, ``<|eot_id|>``)."""
        cdef string piece
        _append_piece(self.vocab, token, piece, True)
        return piece.decode("utf-8", "replace")

    @property
    def adds_bos(self) -> bool:
        return llama_vocab_get_add_bos(self.vocab)

    @property
    def eos_token(self) -> int:
        return llama_vocab_eos(self.vocab)

    def is_eog(self, int token) -> bool:
        return llama_vocab_is_eog(self.vocab, token)

    def tokenize(self, str text, bint add_special=True, bint parse_special=False) -> list:
        """Text to token ids; BOS is added when the model asks for it."""
        cdef bytes data = text.encode("utf-8")
        cdef const char * chars = data
        cdef int32_t size = len(data)
        cdef int32_t n_max = size + 8
        cdef int32_t n
        cdef vector[llama_token] out
        out.resize(n_max)
        with nogil:  # a long prompt takes a while: other threads (the event loop) run on
            n = llama_tokenize(self.vocab, chars, size, out.data(), n_max,
                               add_special, parse_special)
            if n < 0:
                out.resize(-n)
                n = llama_tokenize(self.vocab, chars, size, out.data(), -n,
                                   add_special, parse_special)
        if n < 0:
            raise LlamaError(f"tokenization failed ({n})")
        return [out[i] for i in range(n)]

    def token_to_piece(self, int token, bint special=False) -> bytes:
        cdef string piece
        _append_piece(self.vocab, token, piece, special)
        return piece

    def grammar_error(self, str gbnf) -> str | None:
        """Why llama.cpp rejects a GBNF grammar (root rule ``root``), or None if it parses."""
        cdef bytes data = gbnf.encode("utf-8")
        take_log_tail()
        cdef llama_sampler * grammar = llama_sampler_init_grammar(self.vocab, data, b"root")
        if grammar is NULL:
            return take_log_tail() or "the grammar does not parse"
        llama_sampler_free(grammar)
        return None

    def detokenize(self, list tokens, bint special=False) -> str:
        cdef vector[llama_token] toks
        for t in tokens:
            toks.push_back(t)
        cdef int32_t cap = 16 + 8 * toks.size()
        cdef string buf
        buf.resize(cap)
        cdef int32_t n = llama_detokenize(self.vocab, toks.data(), toks.size(), &buf[0], cap,
                                          False, special)
        if n < 0:
            cap = -n
            buf.resize(cap)
            n = llama_detokenize(self.vocab, toks.data(), toks.size(), &buf[0], cap, False, special)
        return PyUnicode_DecodeUTF8(buf.data(), max(n, 0), "replace")


cdef str _failure(str what, str path):
    detail = take_log_tail()
    reason = f"{what} '{path}'"
    return f"{reason}: {detail}" if detail else reason


cdef llama_context * _open_context(Model model, llama_context_params params, int n_threads,
                                   str what) except NULL:
    """A llama.cpp context on ``model``; the failure names what it was for and why."""
    cdef llama_context * ctx
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.no_perf = True
    take_log_tail()
    with nogil:
        ctx = llama_init_from_model(model.ptr, params)
    if ctx is NULL:
        raise LlamaError(_failure(f"could not create {what} for", model.path))
    return ctx


cdef int _append_piece(const llama_vocab * vocab, llama_token token, string & out,
                       cbool special) noexcept nogil:
    cdef char buf[64]
    cdef int32_t n = llama_token_to_piece(vocab, token, buf, sizeof(buf), 0, special)
    cdef string big
    if n >= 0:
        out.append(buf, n)
        return n
    big.resize(-n)
    n = llama_token_to_piece(vocab, token, &big[0], -n, 0, special)
    if n > 0:
        out.append(big.data(), n)
    return n


# ---------------------------------------------------------------- text hand-off helpers

cdef size_t _utf8_complete_len(const string & text) noexcept nogil:
    """Length of the longest prefix that does not end inside a UTF-8 character."""
    cdef size_t n = text.size()
    cdef size_t i = n
    cdef unsigned char c
    cdef size_t need
    cdef int back = 0
    while i > 0 and back < 4:
        i -= 1
        back += 1
        c = <unsigned char> text[i]
        if c < 0x80:
            return n
        if c >= 0xC0:
            need = 2 if c < 0xE0 else (3 if c < 0xF0 else 4)
            return n if n - i >= need else i
    return n


cdef size_t _stop_hold_len(const string & text, const vector[string] & stops) noexcept nogil:
    """How many trailing bytes could still grow into a stop string."""
    cdef size_t best = 0
    cdef size_t k, limit
    for s in range(stops.size()):
        limit = stops[s].size() - 1
        if limit > text.size():
            limit = text.size()
        k = limit
        while k > best:
            if memcmp(text.data() + text.size() - k, stops[s].data(), k) == 0:
                best = k
                break
            k -= 1
    return best


cdef long _find_stop(const string & text, const vector[string] & stops, size_t start,
                     int * which) noexcept nogil:
    """Earliest position of any stop string at or after ``start`` (-1 if none); the
    index of that stop string goes to ``which``."""
    cdef long found = -1
    cdef size_t pos
    for s in range(stops.size()):
        pos = text.find(stops[s], start)
        if pos != <size_t> -1 and (found < 0 or <long> pos < found):
            found = pos
            which[0] = s
    return found


# ---------------------------------------------------------------- slots and the step loop

cdef enum:
    DRAFT_NGRAM_MAX = 3     # the longest, then shorter, history suffix looked up for a guess
    DRAFT_NGRAM_MIN = 2
    # rows of one sequence in a decode step at most: up to 4, llama.cpp's CPU kernels
    # give each row what a step of one row gives it, and a fifth row costs more than
    # the first four together here
    MAX_SEQ_ROWS = 4
    # rows of one sequence that warm_up() decodes in one step and one by one: 8 is where
    # llama.cpp's tiled K-quant kernel took over (native.load() turns it off)
    CHECK_ROWS = 8
    # generating slots per llama_decode where that check fails (the most measured to
    # round like one row on this machine, with the tiled kernel on)
    FALLBACK_PASS_ROWS = 7
    # idle slots between busy ones that get a throw-away row each to keep a step in one
    # pass (a row without logits costs a fraction of the second pass a gap causes)
    MAX_FILLER_ROWS = 3
    # prompt tokens read per step at most, in chunks of n_batch (with exact_rows): prompts
    # that arrive together are read together, and a decoding stream waits at most about
    # twice a chunk's time for its next token while long prompts are read
    READ_CHUNKS = 2
    # a shared prefix shorter than this does not choose a slot over a lower one (see
    # choose_slot): busy slots stay packed low, where they share a pass
    MIN_SLOT_REUSE = 8


cdef inline llama_token _probe_token(int i, int n_vocab) noexcept nogil:
    """The i-th token of the kernels' checks at warm-up: any tokens will do."""
    return (i * 7919 + 13) % n_vocab


cdef enum SlotState:   # lifecycle.SlotState: PREFILL and GENERATE are its BUSY
    IDLE = 0
    PREFILL = 1
    GENERATE = 2
    DIRTY = 3          # in a batch that failed: records ahead of cells until cleared


cdef struct TokenProb:
    llama_token token
    float logprob
    vector[llama_token] top_tokens
    vector[float] top_logprobs


cdef struct Slot:
    int state
    vector[llama_token] prompt
    vector[llama_token] cached  # tokens whose KV this slot's stream holds, from position 0
    size_t n_read               # how many of them were read as prompt (not generated)
    size_t n_prefilled          # prompt tokens already in the KV cache
    llama_pos n_past            # next position to decode
    llama_token last_token      # sampled, not yet decoded
    vector[llama_token] drafted # guessed continuation of last_token, decoded beside it
    int32_t draft_room          # how many tokens to guess next: grows while guesses hold
    int32_t batch_row           # row of this slot's logits in the current batch, -1 if none
    llama_pos filler_at         # where an idle slot's throw-away row went this step; -1: none
    int32_t max_tokens
    int32_t n_generated
    int32_t n_probs             # -1: no log-probabilities; else how many alternatives
    llama_sampler * chain
    llama_sampler * grammar     # applied lazily: only when the chain's pick breaks it
    int32_t shortcut            # -1: the whole vocabulary goes through the chain; 0: argmax;
                                # k > 0: only the k best logits do (the chain starts with top-k)
    vector[string] stops
    string pending              # generated bytes not yet handed out
    vector[TokenProb] probs     # log-probabilities of tokens not yet handed out
    cbool ignore_eos
    cbool special               # control tokens handed out as their text (tool-call markers)


cdef inline bint _worse(const llama_token_data & a, const llama_token_data & b) noexcept nogil:
    """Lower logit, or the same logit on a later token: the order a stable sort gives."""
    return a.logit < b.logit or (a.logit == b.logit and a.id > b.id)


cdef void _sift_down(llama_token_data * heap, int n, int i) noexcept nogil:
    """Restore the min-heap (worst on top) below ``i``."""
    cdef llama_token_data item = heap[i]
    cdef int child
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and _worse(heap[child + 1], heap[child]):
            child += 1
        if not _worse(heap[child], item):
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef void _top_logits(const float * logits, int n_vocab, llama_token_data * out,
                      int k) noexcept nogil:
    """The ``k`` best logits into ``out``, best first, in one pass over the vocabulary."""
    cdef int i
    for i in range(k):
        out[i].id = i
        out[i].logit = logits[i]
        out[i].p = 0.0
    for i in range(k // 2 - 1, -1, -1):
        _sift_down(out, k, i)
    i = shimmy_next_above(logits, k, n_vocab, out[0].logit)
    while i < n_vocab:
        out[0].id = i
        out[0].logit = logits[i]
        _sift_down(out, k, 0)
        i = shimmy_next_above(logits, i + 1, n_vocab, out[0].logit)
    cdef llama_token_data last
    for i in range(k - 1, 0, -1):  # heap sort: each step moves the worst left to the end
        last = out[i]
        out[i] = out[0]
        out[0] = last
        _sift_down(out, i, 0)


cdef void _set_kv_type(llama_context_params * params, str kv_type) except *:
    """The KV cache's element type, and the attention that keeps results batch-invariant
    with it.

    llama.cpp's CPU flash attention splits one sequence's cells across threads, or tiles
    them, only for f16/f32 caches, and only for some batch shapes (one row of one stream
    over 512+ cells): with f16 it would round differently alone than beside others. For
    bf16 and q8_0 it always runs the same per-row loop, so those caches get flash
    attention (faster decoding, but long prompts read slower: the loop is no matrix
    product); f16, the default, gets the plain attention.
    """
    if kv_type == "f16":
        params.type_k = params.type_v = GGML_TYPE_F16
        params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED
    elif kv_type in ("bf16", "q8_0"):
        params.type_k = params.type_v = GGML_TYPE_BF16 if kv_type == "bf16" else GGML_TYPE_Q8_0
        params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED
    else:
        raise ValueError(f"KV cache type {kv_type!r}: choose bf16, f16 or q8_0")


cdef class BatchEngine:
    """A llama.cpp context with ``n_slots`` sequences, each able to hold ``n_ctx`` tokens.

    Every slot has a KV stream of its own (not one unified buffer), and attention is
    chosen by ``kv_type`` to run per row (see ``_set_kv_type``): a sequence's cells then
    sit at the same places, and its sums run in the same order, whatever the other
    slots hold. Together with
    ``step()``'s prompt chunks, cut at fixed positions, this makes generation batch-
    invariant. Sliding-window layers keep full-size caches too: a window cache is a
    ring whose cell order depends on history, and its cells would be gone when a later
    prompt wants to reuse the prefix. A finished slot keeps its cache, so a request
    that shares a prefix with it (the next turn of a chat) reads only the rest of its
    prompt.
    """

    cdef Model model
    cdef llama_context * ctx
    cdef llama_batch batch
    cdef vector[Slot] slots
    cdef readonly int n_ctx
    cdef readonly int n_batch
    cdef readonly int n_slots
    cdef readonly int n_threads
    cdef int n_swa
    cdef vector[llama_token_data] candidates  # scratch for grammar-checked sampling
    cdef readonly int n_draft       # most tokens guessed ahead per step; 0: none
    cdef readonly uint64_t n_drafted   # guessed tokens decoded, and how many were right
    cdef readonly uint64_t n_accepted
    cdef readonly uint64_t n_passes    # llama_decode calls
    cdef readonly uint64_t n_filler_rows  # throw-away rows of idle slots (_add_filler)
    cdef readonly int pass_rows     # generating slots per llama_decode at most
    cdef readonly bint exact_rows   # a row rounds alike whatever else its step holds
    cdef bint per_row_attention     # the cache type runs attention row by row
    cdef ShimmyHead * head          # the output layer's product (output_head.h)
    cdef uint64_t fail_at           # debug: the decode pass that fails (0: none)
    cdef uint64_t fail_every        # debug: and every this many passes after it
    cdef uint64_t fail_left         # debug: failures still to inject
    cdef bint head_attached         # this CPU runs it: warm_up() checks it against ggml

    def __cinit__(self, Model model, int n_ctx, int n_slots, int n_threads, int n_batch=64,
                  str kv_type="f16", int n_draft=0, bint exact_weights=False,
                  bint own_head=True):
        cdef llama_context_params params = llama_context_default_params()
        cdef vector[float] scales
        self.head = shimmy_head_new(n_threads)
        self.head_attached = own_head and shimmy_head_attach(&params, self.head)
        params.n_ctx = n_ctx * n_slots
        params.n_ubatch = max(n_batch, n_slots)
        # with exact_rows a step is one batch: every slot's rows and prompt chunks
        params.n_batch = READ_CHUNKS * params.n_ubatch + n_slots + MAX_SEQ_ROWS
        params.n_seq_max = n_slots
        params.kv_unified = False
        _set_kv_type(&params, kv_type)
        params.swa_full = True
        self.model = model
        self.ctx = _open_context(model, params, n_threads, "a context")
        if model.loras.size():
            scales.assign(model.loras.size(), 1.0)
            llama_set_adapters_lora(self.ctx, model.loras.data(), model.loras.size(),
                                    scales.data())
        self.n_ctx = llama_n_ctx_seq(self.ctx)
        self.n_batch = n_batch
        self.n_slots = n_slots
        self.n_threads = n_threads
        # The caller vouches for the weights (no float matrices: llama.cpp multiplies
        # those by one kernel for a single row and another for several); over an f16
        # cache the attention does the same. warm_up() checks the rest.
        self.n_draft = max(0, min(n_draft, MAX_SEQ_ROWS - 1)) \
            if exact_weights and kv_type != "f16" else 0
        self.n_drafted = self.n_accepted = self.n_passes = self.n_filler_rows = 0
        self.fail_at = self.fail_every = self.fail_left = 0
        self.pass_rows = n_slots
        self.exact_rows = False
        self.per_row_attention = kv_type != "f16"
        self.n_swa = llama_model_n_swa(model.ptr)
        self.batch = llama_batch_init(params.n_batch, 0, 1)
        self.slots.resize(n_slots)
        for i in range(n_slots):
            self.slots[i].state = IDLE
            self.slots[i].chain = NULL
            self.slots[i].grammar = NULL
            self.slots[i].n_read = 0
            self.slots[i].filler_at = -1

    def __dealloc__(self):
        for i in range(self.slots.size()):
            if self.slots[i].chain is not NULL:
                llama_sampler_free(self.slots[i].chain)
                self.slots[i].chain = NULL
            if self.slots[i].grammar is not NULL:
                llama_sampler_free(self.slots[i].grammar)
                self.slots[i].grammar = NULL
        if self.ctx is not NULL:
            llama_batch_free(self.batch)
            llama_free(self.ctx)
            self.ctx = NULL
        if self.head is not NULL:
            shimmy_head_free(self.head)
            self.head = NULL

    def warm_up(self) -> None:
        """A first decode, so that the first request skips graph set-up, which is also
        the check that a row's logits do not depend on the rows beside it in a step
        (``exact_rows``). Where they do not, busy slots share one pass, a lone request
        guesses ahead, and a prompt reuses any cached prefix; where they do, slots go
        ``FALLBACK_PASS_ROWS`` to a pass and nothing is guessed.

        The same decodes check the output head (``output_head.h``) against ggml's
        product, row by row and bit by bit; it computes the logits from then on only
        where every row agreed, in one-row and in several-row products."""
        if self.head_attached:
            self.head.mode = OUTPUT_HEAD_PROBE
        if self.per_row_attention and self.n_ctx >= 2 * CHECK_ROWS:
            self.exact_rows = self._rows_agree()
        else:  # f16's plain attention fails the check; a context too small cannot run it
            self._decode_probe(1)
        if not self.exact_rows:
            self.pass_rows = min(self.n_slots, FALLBACK_PASS_ROWS)
            self.n_draft = 0
        # the cells' data stay: cells no sequence holds are masked out of attention, and
        # overwriting the whole cache (590 MB for 8 slots of 4,096 tokens) took 80 ms
        llama_memory_clear(llama_get_memory(self.ctx), False)
        if self.head_attached:
            if self.head.probe_multi == 0 and self.n_ctx >= 2:
                self._decode_probe(2)
                llama_memory_clear(llama_get_memory(self.ctx), False)
            self.head.mode = OUTPUT_HEAD_ON if self.head.probe_bad == 0 \
                and self.head.probe_single > 0 and self.head.probe_multi > 0 \
                else OUTPUT_HEAD_OFF

    @property
    def own_head(self) -> bool:
        """Whether the output head, not ggml, computes the logits (see warm_up)."""
        return self.head.mode == OUTPUT_HEAD_ON

    @property
    def head_rows(self) -> int:
        """Rows of logits the output head computed in ggml's place."""
        return self.head.rows

    @property
    def head_checks(self) -> tuple:
        """Rows warm_up compared with ggml: (one-row products, several-row, differing)."""
        return (self.head.probe_single, self.head.probe_multi, self.head.probe_bad)

    cdef void _decode_probe(self, int rows) except *:
        """A throw-away step of ``rows`` tokens of sequence 0, each with logits."""
        self.batch.n_tokens = 0
        for i in range(rows):
            _batch_add(&self.batch, _probe_token(i, self.model.n_vocab), i, 0, True)
        self._decode()

    cdef bint _rows_agree(self) except -1:
        """Whether ``CHECK_ROWS`` rows of a sequence decoded in one step get the very
        logits that as many one-row steps get. Which kernels llama.cpp's CPU backend
        picks depends on the machine and on the rows in a step, so this is measured."""
        cdef int n_vocab = self.model.n_vocab
        cdef int lead = CHECK_ROWS
        cdef vector[float] single
        cdef llama_batch * b = &self.batch
        cdef bint same = True
        single.resize(<size_t> CHECK_ROWS * n_vocab)
        b.n_tokens = 0
        for i in range(lead):
            _batch_add(b, _probe_token(i, n_vocab), i, 0, False)
        self._decode()
        for j in range(CHECK_ROWS):
            b.n_tokens = 0
            _batch_add(b, _probe_token(lead + j, n_vocab), lead + j, 0, True)
            self._decode()
            memcpy(&single[j * n_vocab], llama_get_logits_ith(self.ctx, 0),
                   n_vocab * sizeof(float))
        llama_memory_seq_rm(llama_get_memory(self.ctx), 0, lead, -1)
        b.n_tokens = 0
        for j in range(CHECK_ROWS):
            _batch_add(b, _probe_token(lead + j, n_vocab), lead + j, 0, True)
        self._decode()
        for j in range(CHECK_ROWS):
            same = same and memcmp(&single[j * n_vocab], llama_get_logits_ith(self.ctx, j),
                                   n_vocab * sizeof(float)) == 0
        return same

    def is_idle(self, int slot) -> bool:
        return self.slots[slot].state == IDLE

    def choose_slot(self, list prompt) -> int:
        """The idle slot whose cache saves ``prompt`` the most reading, the lowest where
        none saves ``MIN_SLOT_REUSE`` tokens (see ``_reusable``); -1 if none is idle."""
        cdef vector[llama_token] tokens = prompt
        cdef int best = -1
        cdef size_t best_len = 0, length
        for i in range(self.slots.size()):
            if self.slots[i].state != IDLE:
                continue
            length = self._reusable(&self.slots[i], tokens)
            if length < MIN_SLOT_REUSE:
                length = 0
            if best < 0 or length > best_len:
                best, best_len = i, length
        return best

    def reusable(self, int slot, list prompt) -> int:
        """How many of ``prompt``'s tokens the slot's cache would save reading (were the
        slot idle: for a busy one, what a copy of its cells would save)."""
        cdef vector[llama_token] tokens = prompt
        return self._reusable(&self.slots[slot], tokens)

    def cached(self, int slot) -> list:
        """The tokens whose cells the slot's cache holds, in order."""
        return list(self.slots[slot].cached)

    def save_cells(self, int slot) -> bytes:
        """The idle slot's cells, as llama.cpp serializes a sequence (see
        ``restore_cells``); empty if it holds none."""
        cdef vector[uint8_t] cells
        if self.slots[slot].state != IDLE:
            raise LlamaError(f"slot {slot} is busy")
        if self.slots[slot].cached.empty():
            return b""
        self._get_cells(slot, cells)
        return PyBytes_FromStringAndSize(<const char *> cells.data(), cells.size())

    def copy_cells(self, int source, int slot) -> bool:
        """Fill the idle slot with a copy of another slot's cells, busy or not: a prompt
        that slot holds a prefix of (a system prompt that requests share, say) is then
        read from there on, as after ``restore_cells``, which this is without the trip
        through Python. Between steps only; False if llama.cpp refused."""
        cdef vector[uint8_t] cells
        if source == slot or self.slots[source].cached.empty():
            raise LlamaError(f"slot {source} holds no cells for slot {slot}")
        self._get_cells(source, cells)
        return self._set_cells(slot, cells.data(), cells.size(), self.slots[source].cached)

    cdef void _get_cells(self, int slot, vector[uint8_t] & cells) noexcept:
        """The slot's cells as llama.cpp serializes a sequence, into ``cells``."""
        cdef size_t size = llama_state_seq_get_size(self.ctx, slot)
        cells.resize(size)
        with nogil:
            size = llama_state_seq_get_data(self.ctx, cells.data(), size, slot)
        cells.resize(size)

    def restore_cells(self, int slot, bytes cells, list tokens) -> bool:
        """Replace the idle slot's cache by cells from ``save_cells`` holding ``tokens``:
        exact copies, so a prompt reuses them as if they had been computed here. Only
        with ``exact_rows``, where reuse goes to the token; False if llama.cpp refused
        (the slot is then empty)."""
        cdef const uint8_t * src = cells
        return self._set_cells(slot, src, len(cells), tokens)

    cdef bint _set_cells(self, int slot, const uint8_t * src, size_t size,
                         vector[llama_token] tokens) except -1:
        cdef Slot * s = &self.slots[slot]
        cdef size_t read
        if s.state != IDLE:
            raise LlamaError(f"slot {slot} is busy")
        if not self.exact_rows:
            raise LlamaError("cells are restored only where rows round alike in any step")
        llama_memory_seq_rm(llama_get_memory(self.ctx), slot, -1, -1)
        s.cached.clear()
        s.n_read = 0
        with nogil:
            read = llama_state_seq_set_data(self.ctx, src, size, slot)
        if read == 0:
            llama_memory_seq_rm(llama_get_memory(self.ctx), slot, -1, -1)
            return False
        s.cached = tokens
        s.n_read = s.cached.size()
        return True

    cdef size_t _reusable(self, Slot * s, const vector[llama_token] & prompt) noexcept:
        """How many of ``prompt``'s tokens the slot's cache can save reading (see
        ``_reuse_cache``). Where none can, the lowest idle slot wins: llama.cpp decodes
        the rows of consecutive slots together, and a gap between busy slots costs a
        throw-away row (``_add_filler``) or a second pass over the weights."""
        cdef size_t n = _common_prefix(s.cached, prompt)
        n = min(n, prompt.size() - 1) if prompt.size() else 0
        if self.exact_rows:
            return n
        n = min(n, s.n_read)
        return n - n % self.n_batch

    def start(self, int slot, list prompt, dict sampling, list stops, int max_tokens,
              bint ignore_eos=False, int logprobs=-1, bint reuse=True,
              bint special=False) -> int:
        """Put a request into an idle slot; its prompt is read by the next steps.

        Returns how many prompt tokens were found in the slot's cache and not read
        again (none if not ``reuse``). ``logprobs`` >= 0 asks for each token's
        log-probability and that many alternatives. ``special`` hands out control
        tokens (other than end-of-generation ones) as their text.
        """
        cdef Slot * s = &self.slots[slot]
        if s.state != IDLE:
            raise LlamaError(f"slot {slot} is busy")
        s.prompt = prompt
        s.chain = self._make_chain(sampling, prompt, &s.shortcut)
        try:
            s.grammar = self._make_grammar(sampling)
        except LlamaError:
            llama_sampler_free(s.chain)
            s.chain = NULL
            raise
        cdef size_t reused = self._reuse_cache(s, slot, reuse)
        s.n_prefilled = reused
        s.n_past = reused
        s.batch_row = -1
        s.drafted.clear()
        s.draft_room = self.n_draft
        s.max_tokens = max_tokens
        s.n_generated = 0
        s.n_probs = logprobs
        s.special = special
        s.pending.clear()
        s.probs.clear()
        s.stops.clear()
        for stop in stops:
            if stop:
                s.stops.push_back((<str> stop).encode("utf-8"))
        s.ignore_eos = ignore_eos
        s.state = PREFILL
        return reused

    cdef size_t _reuse_cache(self, Slot * s, int slot, bint reuse):
        """Keep the cached prefix the prompt shares; drop the rest of the slot's cache.

        With ``exact_rows`` every shared cell is kept, generated ones included: a cell
        holds the same numbers whether its token was read in a prompt chunk or decoded
        in a step. Otherwise only cells read as prompt are, up to a multiple of
        ``n_batch``, so that the rest is read in exactly the chunks a cold start uses.
        """
        cdef llama_memory_t mem = llama_get_memory(self.ctx)
        cdef size_t n = self._reusable(s, s.prompt) if reuse else 0
        if n > 0 and self.n_swa > 0 and \
                llama_memory_seq_pos_min(mem, slot) > max(0, <long> n - self.n_swa):
            n = 0  # the sliding window the rest of the prompt needs has been dropped
        if n > 0 and not llama_memory_seq_rm(mem, slot, n, -1):
            n = 0
        if n == 0:
            llama_memory_seq_rm(mem, slot, -1, -1)
        s.cached.resize(n)
        s.n_read = n
        return n

    cdef llama_sampler * _make_grammar(self, dict p) except? NULL:
        cdef bytes gbnf
        cdef llama_sampler * grammar
        if not p.get("grammar"):
            return NULL
        gbnf = p["grammar"].encode("utf-8")
        take_log_tail()
        grammar = llama_sampler_init_grammar(self.model.vocab, gbnf, b"root")
        if grammar is NULL:
            raise LlamaError(take_log_tail() or "the grammar does not parse")
        return grammar

    cdef llama_sampler * _make_chain(self, dict p, list prompt,
                                     int32_t * shortcut) except NULL:
        """The request's sampler chain; ``shortcut`` says how its pick can be had without
        handing it all the vocabulary: -1 it cannot, 0 the best logit, k the k best.

        Without a logit bias or penalties, nothing before top-k changes a logit, so the
        k best logits are all the chain ever looks at (greedy: the best one). Gemma's
        262,144-token vocabulary made copying every logit into the chain's array the
        largest cost outside ``llama_decode``.
        """
        cdef llama_sampler * chain = llama_sampler_chain_init(llama_sampler_chain_default_params())
        cdef int n_vocab = self.model.n_vocab
        cdef float temperature = p.get("temperature", 0.7)
        cdef float repeat = p.get("repeat_penalty", 1.0)
        cdef float frequency = p.get("frequency_penalty", 0.0)
        cdef float presence = p.get("presence_penalty", 0.0)
        cdef vector[llama_logit_bias] biases
        cdef llama_logit_bias bias
        cdef int top_k = p.get("top_k", 40)
        cdef bint penalized = repeat != 1.0 or frequency != 0.0 or presence != 0.0
        for token, value in (p.get("logit_bias") or {}).items():
            bias.token = token
            bias.bias = value
            biases.push_back(bias)
        if biases.size():
            llama_sampler_chain_add(
                chain, llama_sampler_init_logit_bias(n_vocab, biases.size(), biases.data()))
        cdef bint plain = not biases.size() and not penalized  # no logit moves before top-k
        if penalized:
            llama_sampler_chain_add(chain, llama_sampler_init_penalties(
                n_vocab, p.get("penalty_last_n", 64), repeat, frequency, presence))
            for tok in prompt:   # the prompt counts toward repetition, as in llama-server
                llama_sampler_accept(chain, tok)
        if temperature <= 0.0:
            shortcut[0] = 0 if plain else -1
            llama_sampler_chain_add(chain, llama_sampler_init_greedy())
            return chain
        shortcut[0] = top_k if plain and 0 < top_k < n_vocab else -1
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(top_k))
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(p.get("top_p", 0.95), 1))
        llama_sampler_chain_add(chain, llama_sampler_init_min_p(p.get("min_p", 0.05), 1))
        llama_sampler_chain_add(chain, llama_sampler_init_temp(temperature))
        llama_sampler_chain_add(chain, llama_sampler_init_dist(<uint32_t> p["seed"]))
        return chain

    def release(self, int slot) -> None:
        """Make a slot idle now; its cache stays for a later request to reuse."""
        cdef Slot * s = &self.slots[slot]
        if s.chain is not NULL:
            llama_sampler_free(s.chain)
            s.chain = NULL
        if s.grammar is not NULL:
            llama_sampler_free(s.grammar)
            s.grammar = NULL
        s.state = IDLE
        s.pending.clear()
        s.probs.clear()

    def cached_tokens(self, int slot) -> int:
        return self.slots[slot].cached.size()

    def step(self) -> list:
        """Advance the slots; return their events.

        An event is ``(slot, text, finish_reason | None, n_generated, logprobs | None,
        stop_string | None)``; ``finish_reason`` is ``"stop"`` or ``"length"`` on a slot's
        last event, after which the slot is idle, and ``stop_string`` names the stop
        string that ended it, if one did. ``logprobs`` lists ``(token, piece, logprob, top)`` for
        the tokens behind ``text``, ``top`` being ``[(token, piece, logprob), ...]``.

        Each decoding slot (see ``_decodes``) moves by a token (a lone one by as many more
        as its guesses that hold, see ``_add_draft``), and prefilling slots read their
        next prompt chunks. With ``exact_rows`` a row's numbers do not depend on what
        else its pass holds, and all of it is one ``llama_decode`` (``_fill_step``).
        Without, one ``llama_decode`` per ``pass_rows`` decoding slots, another for one
        slot's chunk, and chunks are cut at multiples of ``n_batch``. Either way a request's
        arithmetic is the same whether it runs alone or beside others, so a seed gives
        the same text either way. Raises ``LlamaError`` if llama.cpp fails a batch.
        """
        cdef list events = []
        try:
            self._step(events)
        except StepFailed as exc:
            exc.events = events
            raise
        return events

    cdef void _step(self, list events) except *:
        if self.exact_rows:
            if self._fill_step():
                try:
                    self._decode()
                finally:
                    self._drop_fillers()
                events.extend(self._sample_all())
            return
        cdef size_t next_slot = 0
        cdef int generating = 0
        for i in range(self.slots.size()):
            generating += self._decodes(&self.slots[i])
        # as few passes as the cap allows, as even as can be (8 rows as 4 + 4, not 7 + 1)
        cdef int passes = (generating + self.pass_rows - 1) // self.pass_rows
        cdef int per_pass = (generating + passes - 1) // passes if passes else 0
        while next_slot < self.slots.size():
            next_slot = self._fill_decode(next_slot, per_pass, generating == 1)
            if self.batch.n_tokens == 0:
                break
            self._decode()
            events.extend(self._sample_all())
        if self._fill_prefill() >= 0:
            self._decode()
            events.extend(self._sample_all())

    cdef void _decode(self) except *:
        cdef int32_t status = -1
        self.n_passes += 1
        if self.n_passes == self.fail_at:  # an injected fault: as if llama.cpp failed
            self.fail_left -= 1
            self.fail_at = self.fail_at + self.fail_every if self.fail_every and \
                self.fail_left else 0
        else:
            with nogil:
                status = llama_decode(self.ctx, self.batch)
        if status != 0:
            failed = self._abandon_batch()
            raise StepFailed(f"llama_decode failed with status {status}"
                             + (" (no free KV cache cell)" if status == 1 else ""), failed)

    cdef list _abandon_batch(self):
        """After a failed decode: the busy slots with rows in the batch go DIRTY (their
        records of cached tokens ran ahead of what llama.cpp kept), then are cleared
        to IDLE with no cells, as llama-server clears its slots. Returns them."""
        cdef list failed = []
        cdef int seq
        for i in range(self.slots.size()):
            self.slots[i].batch_row = -1
        for row in range(self.batch.n_tokens):
            seq = self.batch.seq_id[row][0]
            if self.slots[seq].state in (PREFILL, GENERATE):
                self.slots[seq].state = DIRTY
                failed.append(seq)
        for seq in failed:
            self.forget(seq)
        return failed

    def forget(self, int slot) -> None:
        """Make the slot idle with no cells (and no record of any)."""
        cdef Slot * s = &self.slots[slot]
        self.release(slot)
        llama_memory_seq_rm(llama_get_memory(self.ctx), slot, -1, -1)
        s.cached.clear()
        s.drafted.clear()
        s.n_read = 0
        s.filler_at = -1

    def inject_decode_failures(self, int after, int every=0, int count=1) -> None:
        """For tests: the ``after``-th decode pass from now fails as a llama.cpp failure
        would (nothing is decoded), then every ``every``-th one, ``count`` in all (with
        ``every``); ``after`` 0 stops it."""
        self.fail_at = self.n_passes + after if after > 0 else 0
        self.fail_every = max(every, 0)
        self.fail_left = max(count, 1)

    def slot_state(self, int slot) -> str:
        """``lifecycle.SlotState``'s value for the slot: idle, busy or dirty."""
        cdef int state = self.slots[slot].state
        return "idle" if state == IDLE else ("dirty" if state == DIRTY else "busy")

    def cells_size(self, int slot) -> int:
        """Bytes ``save_cells`` would return for the slot."""
        return llama_state_seq_get_size(self.ctx, slot) if self.slots[slot].cached.size() else 0

    cdef inline bint _decodes(self, Slot * s) noexcept:
        """Whether the slot has a row in the decode passes: it generates, or (with
        ``exact_rows``) the last token of its prompt is all it has left to read."""
        return s.state == GENERATE or (self.exact_rows and s.state == PREFILL
                                       and s.n_prefilled + 1 == s.prompt.size())

    cdef size_t _fill_decode(self, size_t first_slot, int max_slots, bint lone):
        """A row for each slot from ``first_slot`` on that ``_decodes``, ``max_slots``
        at most; a ``lone`` generating one adds its guess at what follows. Returns the
        slot to go on from."""
        cdef llama_batch * b = &self.batch
        cdef Slot * s
        cdef int taken = 0
        cdef size_t i
        for i in range(self.slots.size()):
            self.slots[i].batch_row = -1
        b.n_tokens = 0
        for i in range(first_slot, self.slots.size()):
            s = &self.slots[i]
            if not self._decodes(s):
                continue
            if taken == max_slots:
                return i
            taken += 1
            self._add_row(b, s, i, lone)
        return self.slots.size()

    cdef void _add_row(self, llama_batch * b, Slot * s, int seq, bint lone) noexcept:
        """The row of a slot that ``_decodes``, and a ``lone`` one's guesses after it."""
        if s.state == PREFILL:
            s.batch_row = self._add_prompt_tokens(b, s, seq, 1)
            return
        s.batch_row = _batch_add(b, s.last_token, s.n_past, seq, True)
        s.cached.push_back(s.last_token)
        s.n_past += 1
        if lone:
            self._add_draft(b, s, seq)

    cdef int32_t _add_prompt_tokens(self, llama_batch * b, Slot * s, int seq,
                                    size_t count) noexcept:
        """The slot's next ``count`` prompt tokens; the row of the last prompt token if
        it is among them (its logits are asked for), else -1."""
        cdef int32_t row = -1
        cdef size_t end = s.n_prefilled + count
        cdef bint last
        while s.n_prefilled < end:
            last = s.n_prefilled + 1 == s.prompt.size()
            row = _batch_add(b, s.prompt[s.n_prefilled], s.n_past, seq, last)
            s.cached.push_back(s.prompt[s.n_prefilled])
            s.n_read += 1
            s.n_prefilled += 1
            s.n_past += 1
        return row if s.n_prefilled == s.prompt.size() else -1

    cdef size_t _chunk_len(self, Slot * s) noexcept:
        """The prompt tokens of the slot's next chunk: up to the next multiple of
        ``n_batch``, wherever the reused prefix ended."""
        return min(s.prompt.size(), (s.n_prefilled // self.n_batch + 1) * self.n_batch) \
            - s.n_prefilled

    cdef int _fill_step(self) except -1:
        """The whole step as one batch, for ``exact_rows``: the row of each slot that
        ``_decodes`` (``_add_row``), the next chunks of the slots that read their prompt,
        ``READ_CHUNKS`` chunks' worth at most, and for each slot between those, the next
        prompt token of one still waiting to read, or a throw-away row of an idle one
        (``_add_filler``). Returns its rows.

        Over a stream per sequence, llama.cpp splits a batch into passes of consecutive
        sequences with a row each (then two, ...), and the rest of the chunks into more:
        a gap between busy slots, or a reading slot left out, costs a pass.
        """
        cdef llama_batch * b = &self.batch
        cdef Slot * s
        cdef int first = -1, last = -1, decoding = 0, idle = 0
        cdef int n = <int> self.slots.size()
        cdef size_t budget = READ_CHUNKS * self.n_batch
        cdef vector[size_t] reading
        reading.assign(n, 0)
        b.n_tokens = 0
        for i in range(n):
            s = &self.slots[i]
            s.batch_row = -1
            if self._decodes(s):
                decoding += 1
            elif s.state == PREFILL and budget > 0:
                reading[i] = min(self._chunk_len(s), budget)
                budget -= reading[i]
            else:
                continue
            if first < 0:
                first = i
            last = i
        if first < 0:
            return 0
        for i in range(first, last + 1):
            idle += self.slots[i].state == IDLE
        for i in range(first, last + 1):
            s = &self.slots[i]
            if self._decodes(s):
                self._add_row(b, s, i, decoding == 1)
            elif reading[i]:
                s.batch_row = self._add_prompt_tokens(b, s, i, reading[i])
            elif s.state == PREFILL:
                self._add_prompt_tokens(b, s, i, 1)
            elif idle <= MAX_FILLER_ROWS:
                self._add_filler(b, s, i)
        return b.n_tokens

    cdef void _add_filler(self, llama_batch * b, Slot * s, int seq) noexcept:
        """A row without logits after the idle slot's cells, removed after the step
        (``_drop_fillers``). Only where it cannot push a cell out of the sliding window:
        a request may still reuse the slot's cells."""
        cdef llama_pos at = llama_memory_seq_pos_max(llama_get_memory(self.ctx), seq) + 1
        if at >= self.n_ctx or (self.n_swa > 0 and at >= self.n_swa):
            return
        s.filler_at = at
        self.n_filler_rows += 1
        _batch_add(b, s.cached.back() if s.cached.size() else 0, at, seq, False)

    cdef void _drop_fillers(self) noexcept:
        for i in range(self.slots.size()):
            if self.slots[i].filler_at >= 0:
                llama_memory_seq_rm(llama_get_memory(self.ctx), i, self.slots[i].filler_at, -1)
                self.slots[i].filler_at = -1

    cdef void _add_draft(self, llama_batch * b, Slot * s, int seq) noexcept:
        """Guess the slot's next tokens from its own history and decode them after
        ``last_token`` (prompt-lookup speculative decoding).

        Every guessed row's logits are the ones a plain step would compute once its
        tokens are confirmed (llama.cpp gives each row of a sequence the same result
        alone or in a batch; tests check it bit for bit), and ``_sample_all`` samples
        them in order with the slot's own chain, stopping at the first wrong guess: the
        text, log-probabilities and seed behaviour are those of plain decoding, only
        fewer passes over the weights are made when the text repeats itself.

        Only a lone generating slot guesses: llama.cpp splits a batch whose sequences
        have unequal row counts into several passes, which costs more than right guesses
        save.
        """
        cdef long room = min(<long> s.draft_room, <long> (s.max_tokens - s.n_generated - 1))
        room = min(room, <long> self.n_ctx - 2 - s.n_past)
        s.drafted.clear()
        if room <= 0:
            return
        _lookup_draft(s.cached, <int> room, s.drafted)
        for k in range(s.drafted.size()):
            _batch_add(b, s.drafted[k], s.n_past + k, seq, True)

    cdef int _fill_prefill(self):
        """The next chunk of the first slot still reading its prompt; returns that slot,
        or -1 if none is reading."""
        cdef llama_batch * b = &self.batch
        cdef Slot * s
        b.n_tokens = 0
        for i in range(self.slots.size()):
            self.slots[i].batch_row = -1
        for i in range(self.slots.size()):
            s = &self.slots[i]
            if s.state != PREFILL:
                continue
            s.batch_row = self._add_prompt_tokens(b, s, i, self._chunk_len(s))
            return i
        return -1

    cdef list _sample_all(self):
        cdef list events = []
        for i in range(self.slots.size()):
            if self.slots[i].batch_row >= 0:
                event = self._sample_slot(i, &self.slots[i])
                if event is not None:
                    events.append(event)
                    if event[2] is not None:
                        self.release(i)
        return events

    cdef object _sample_slot(self, int index, Slot * s):
        """Sample the slot's rows in order: its last token's, then each guessed
        token's while the guesses hold; one event for all the text they add."""
        cdef llama_token token
        cdef size_t n_guessed = s.drafted.size()
        cdef llama_pos confirmed_from = s.n_past
        cdef int32_t first = s.batch_row
        merged = None
        for j in range(n_guessed + 1):
            s.batch_row = first + j
            with nogil:
                token = self._sample(s)
            if s.n_probs >= 0:
                self._record_logprob(s, token)
            s.state = GENERATE
            s.last_token = token
            s.n_generated += 1
            event = self._advance_text(index, s, token)
            if event is not None:
                merged = event if merged is None else _merge_events(merged, event)
                if event[2] is not None:
                    break
            if j == n_guessed or token != s.drafted[j]:
                break
            s.cached.push_back(token)  # the guess was right: its cell stays
            s.n_past += 1
        if n_guessed:
            self._adapt_draft(s, n_guessed, s.n_past - confirmed_from)
            s.drafted.clear()  # the cells of wrong or unneeded guesses go
            llama_memory_seq_rm(llama_get_memory(self.ctx), index, s.n_past, -1)
        return merged

    cdef void _adapt_draft(self, Slot * s, size_t n_guessed, size_t n_right) noexcept:
        """Count the guesses; guess one more next time if all held, else one more than
        held this time (a wrong guess costs a row of compute and saves nothing)."""
        self.n_drafted += n_guessed
        self.n_accepted += n_right
        if n_right == n_guessed:
            s.draft_room = min(self.n_draft, s.draft_room + 1)
        else:
            s.draft_room = <int32_t> n_right + 1

    cdef llama_token _sample(self, Slot * s) noexcept nogil:
        """The chain's pick; with a grammar, checked against it and redrawn only if it
        breaks it (testing one token is far cheaper than masking the whole vocabulary)."""
        if s.grammar is NULL:
            if s.shortcut < 0:
                return llama_sampler_sample(s.chain, self.ctx, s.batch_row)
            return self._sample_best(s, llama_get_logits_ith(self.ctx, s.batch_row))
        cdef float * logits = llama_get_logits_ith(self.ctx, s.batch_row)
        cdef llama_token_data single
        cdef llama_token_data_array one
        cdef llama_token token = self._apply(s, logits, False)
        single.id = token
        single.logit = 1.0
        single.p = 0.0
        one.data = &single
        one.size = 1
        one.selected = -1
        one.sorted = False
        llama_sampler_apply(s.grammar, &one)
        if single.logit == -INFINITY:
            token = self._apply(s, logits, True)
        llama_sampler_accept(s.grammar, token)
        llama_sampler_accept(s.chain, token)
        return token

    cdef llama_token _sample_best(self, Slot * s, const float * logits) noexcept nogil:
        """The chain's pick from the ``s.shortcut`` best logits alone (see ``_make_chain``)."""
        cdef int n_vocab = llama_vocab_n_tokens(self.model.vocab)
        cdef llama_token_data_array best
        cdef llama_token token = 0
        cdef int t
        if s.shortcut == 0:  # the first best logit
            t = shimmy_next_above(logits, 1, n_vocab, logits[0])
            while t < n_vocab:
                token = t
                t = shimmy_next_above(logits, t + 1, n_vocab, logits[t])
        else:
            self.candidates.resize(s.shortcut)
            _top_logits(logits, n_vocab, self.candidates.data(), s.shortcut)
            best.data = self.candidates.data()
            best.size = s.shortcut
            best.selected = -1
            best.sorted = True
            llama_sampler_apply(s.chain, &best)
            token = best.data[best.selected].id
        llama_sampler_accept(s.chain, token)
        return token

    cdef llama_token _apply(self, Slot * s, const float * logits, cbool grammar_first) noexcept nogil:
        cdef int n_vocab = llama_vocab_n_tokens(self.model.vocab)
        cdef llama_token_data_array candidates
        self.candidates.resize(n_vocab)
        for t in range(n_vocab):
            self.candidates[t].id = t
            self.candidates[t].logit = logits[t]
            self.candidates[t].p = 0.0
        candidates.data = self.candidates.data()
        candidates.size = n_vocab
        candidates.selected = -1
        candidates.sorted = False
        if grammar_first:
            llama_sampler_apply(s.grammar, &candidates)
        llama_sampler_apply(s.chain, &candidates)
        return candidates.data[candidates.selected].id

    cdef void _record_logprob(self, Slot * s, llama_token token) noexcept:
        """Log-softmax of the raw logits: the chosen token's and the top alternatives'."""
        cdef float * logits = llama_get_logits_ith(self.ctx, s.batch_row)
        cdef int n_vocab = llama_vocab_n_tokens(self.model.vocab)
        cdef TokenProb record
        if logits is NULL:
            return
        cdef float peak = logits[0]
        cdef double total = 0.0
        for i in range(1, n_vocab):
            if logits[i] > peak:
                peak = logits[i]
        for i in range(n_vocab):
            total += expf(logits[i] - peak)
        cdef float log_total = peak + logf(<float> total)
        record.token = token
        record.logprob = logits[token] - log_total
        _top_tokens(logits, n_vocab, s.n_probs, record.top_tokens)
        for t in record.top_tokens:
            record.top_logprobs.push_back(logits[t] - log_total)
        s.probs.push_back(record)

    cdef object _take_logprobs(self, Slot * s):
        if s.n_probs < 0:
            return None
        cdef list out = []
        for r in s.probs:
            top = [(r.top_tokens[k], self._piece(r.top_tokens[k]), r.top_logprobs[k])
                   for k in range(r.top_tokens.size())]
            out.append((r.token, self._piece(r.token), r.logprob, top))
        s.probs.clear()
        return out

    cdef bytes _piece(self, llama_token token):
        cdef string piece
        _append_piece(self.model.vocab, token, piece, False)
        return piece

    cdef object _advance_text(self, int index, Slot * s, llama_token token):
        """Append the token's text; return the event that is safe to hand out now."""
        cdef size_t before = s.pending.size()
        cdef long stop_at
        cdef int which = -1
        cdef size_t ready
        cdef cbool eog = llama_vocab_is_eog(self.model.vocab, token) and not s.ignore_eos
        if eog and s.n_probs >= 0 and s.probs.size():
            s.probs.pop_back()  # the end-of-generation token is not part of the answer
        if not eog:
            _append_piece(self.model.vocab, token, s.pending, s.special)
            if s.stops.size():
                stop_at = _find_stop(s.pending, s.stops, _scan_start(before, s.stops), &which)
                if stop_at >= 0:
                    return (index, _decode(s.pending, stop_at), "stop", s.n_generated,
                            self._take_logprobs(s), _decode(s.stops[which], s.stops[which].size()))
        if eog:
            return (index, _decode_complete(s.pending), "stop", s.n_generated,
                    self._take_logprobs(s), None)
        if s.n_generated >= s.max_tokens or s.n_past + 1 >= self.n_ctx:
            return (index, _decode_complete(s.pending), "length", s.n_generated,
                    self._take_logprobs(s), None)
        ready = s.pending.size() - _stop_hold_len(s.pending, s.stops)
        if ready == 0:
            return None
        ready = _utf8_complete_len(s.pending.substr(0, ready))
        if ready == 0:
            return None
        text = _decode(s.pending, ready)
        s.pending.erase(0, ready)
        return (index, text, None, s.n_generated, self._take_logprobs(s), None)


cdef class Embedder:
    """A context that turns a token sequence into one pooled, L2-normalised vector."""

    cdef Model model
    cdef llama_context * ctx
    cdef llama_batch batch
    cdef readonly int n_ctx
    cdef readonly int n_embd

    def __cinit__(self, Model model, int n_ctx, int n_threads):
        cdef llama_context_params params = llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx  # an encoder must see the whole input in one ubatch
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = LLAMA_POOLING_TYPE_UNSPECIFIED
        self.model = model
        self.ctx = _open_context(model, params, n_threads, "an embedding context")
        if llama_get_pooling_type(self.ctx) == LLAMA_POOLING_TYPE_NONE:
            raise LlamaError("the model defines no pooling, so it produces no embeddings")
        self.n_ctx = llama_n_ctx(self.ctx)
        self.n_embd = llama_model_n_embd(model.ptr)
        self.batch = llama_batch_init(self.n_ctx, 0, 1)

    def __dealloc__(self):
        if self.ctx is not NULL:
            llama_batch_free(self.batch)
            llama_free(self.ctx)
            self.ctx = NULL

    def embed(self, list tokens) -> list:
        cdef int n = len(tokens)
        cdef int32_t status
        cdef float * vector_
        cdef double norm = 0.0
        if n == 0 or n > self.n_ctx:
            raise LlamaError(f"{n} tokens do not fit the embedding context of {self.n_ctx}")
        llama_memory_clear(llama_get_memory(self.ctx), True)
        self.batch.n_tokens = 0
        for i in range(n):
            _batch_add(&self.batch, tokens[i], i, 0, True)
        with nogil:
            status = llama_decode(self.ctx, self.batch)
        if status != 0:
            raise LlamaError(f"llama_decode failed with status {status}")
        vector_ = llama_get_embeddings_seq(self.ctx, 0)
        if vector_ is NULL:
            raise LlamaError("llama.cpp returned no pooled embedding")
        for i in range(self.n_embd):
            norm += vector_[i] * vector_[i]
        norm = sqrtf(<float> norm) if norm > 0 else 1.0
        return [vector_[i] / norm for i in range(self.n_embd)]


cdef size_t _common_prefix(const vector[llama_token] & a, const vector[llama_token] & b) noexcept nogil:
    cdef size_t n = 0
    while n < a.size() and n < b.size() and a[n] == b[n]:
        n += 1
    return n


cdef void _top_tokens(const float * logits, int n_vocab, int k,
                      vector[llama_token] & out) noexcept nogil:
    """The ``k`` highest logits, best first (insertion into a short sorted list)."""
    out.clear()
    if k <= 0:
        return
    cdef int j
    for t in range(n_vocab):
        if <int> out.size() == k and logits[t] <= logits[out.back()]:
            continue
        if <int> out.size() < k:
            out.push_back(t)
        else:
            out[k - 1] = t
        j = out.size() - 1
        while j > 0 and logits[out[j]] > logits[out[j - 1]]:
            out[j], out[j - 1] = out[j - 1], out[j]
            j -= 1


cdef void _lookup_draft(const vector[llama_token] & history, int n_max,
                        vector[llama_token] & out) noexcept nogil:
    """Up to ``n_max`` tokens that followed the latest earlier occurrence of the
    history's last ``DRAFT_NGRAM_MAX`` tokens (or fewer, down to ``DRAFT_NGRAM_MIN``).
    A continuation that runs into the end repeats itself, as a loop in the text would."""
    cdef long n = history.size()
    cdef long i, at
    cdef int g, k
    cdef const llama_token * h = history.data()
    out.clear()
    for g in range(DRAFT_NGRAM_MAX, DRAFT_NGRAM_MIN - 1, -1):
        i = n - g - 1
        while i >= 0:
            if h[i + g - 1] == h[n - 1] and \
                    memcmp(h + i, h + n - g, g * sizeof(llama_token)) == 0:
                for k in range(n_max):
                    at = i + g + k
                    out.push_back(h[at] if at < n else out[at - n])
                return
            i -= 1


cdef tuple _merge_events(tuple first, tuple then):
    """One event for two of a slot's in a row: the text joined, the latter's state."""
    logprobs = first[4] + then[4] if first[4] is not None else None
    return (first[0], first[1] + then[1], then[2], then[3], logprobs, then[5])


cdef inline size_t _scan_start(size_t before, const vector[string] & stops) noexcept nogil:
    """Stop strings can only newly end in the bytes just added, so search from there."""
    cdef size_t longest = 0
    for s in range(stops.size()):
        if stops[s].size() > longest:
            longest = stops[s].size()
    return before - longest + 1 if before + 1 > longest else 0


cdef inline str _decode_complete(const string & text):
    """The final text of a slot: a character cut off by the end is dropped, not mangled."""
    return _decode(text, _utf8_complete_len(text))


cdef inline str _decode(const string & text, size_t n):
    return PyUnicode_DecodeUTF8(text.data(), n, "replace")


cdef inline int32_t _batch_add(llama_batch * b, llama_token token, llama_pos pos,
                               llama_seq_id seq, cbool logits) noexcept nogil:
    cdef int32_t row = b.n_tokens
    b.token[row] = token
    b.pos[row] = pos
    b.n_seq_id[row] = 1
    b.seq_id[row][0] = seq
    b.logits[row] = logits
    b.n_tokens += 1
    return row
