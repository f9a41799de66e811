# Part of the shimmy.engine._engine extension (included by _engine.pyx).
# The C API of llama.cpp (llama.h), ggml's backend loader, and the small C helpers the engine
# compiles in (AMX permission, the CPU variant in use, a vector scan, the output head, the
# cache's pages).


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
    ctypedef cbool (*llama_progress_callback)(float progress, void * user_data)

    # ggml-backend.h (llama.h includes it): backends, their devices, their registries
    cdef struct ggml_backend_reg:
        pass
    ctypedef ggml_backend_reg * ggml_backend_reg_t
    cdef struct ggml_backend_device:
        pass
    ctypedef ggml_backend_device * ggml_backend_dev_t

    cdef struct llama_model_params:
        ggml_backend_dev_t * devices
        const float * tensor_split
        int32_t n_gpu_layers
        llama_load_mode load_mode
        cbool use_extra_bufts
        cbool vocab_only
        llama_progress_callback progress_callback
        void * progress_callback_user_data

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
    size_t llama_max_devices()
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


cdef extern from "cache_pages.h" nogil:
    ctypedef struct ShimmyPages:
        cbool scanning
        int n_buffers
    void shimmy_pages_attach(llama_context_params * params, ShimmyPages * pages)
    size_t shimmy_pages_release(ShimmyPages * pages)


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
