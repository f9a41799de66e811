# Part of the shimmy.engine._engine extension (included by _engine.pyx).
# llama.cpp's set-up and log, the model (weights and vocabulary) and the embedding context.


class LlamaError(RuntimeError):
    """llama.cpp refused: a model that does not load, a context that cannot be made."""


# ---------------------------------------------------------------- logging


cdef string _log_tail          # the last error lines, to explain a failure


cdef cbool _log_verbose = False
cdef string _log_placement     # where a load put the weights and caches (buffer sizes)


cdef void _on_log(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    global _log_tail
    if _log_verbose:
        fputs(text, stderr)
        fflush(stderr)
    if level == GGML_LOG_LEVEL_INFO and (strstr(text, b" buffer size = ") != NULL
                                         or strstr(text, b"layers to GPU") != NULL):
        _log_placement.append(text)
        if _log_placement.size() > 8192:
            _log_placement.erase(0, _log_placement.size() - 8192)
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


def take_placement_log() -> str:
    """llama.cpp's lines on buffer sizes per device and offloaded layers since the last call."""
    global _log_placement
    text = _log_placement.decode("utf-8", "replace")
    _log_placement.clear()
    return text


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


# ---------------------------------------------------------------- load progress


cdef struct _progress_track:
    double latest  # the last fraction; read by other threads while a load runs
    vector[float] * seen  # every fraction, in order; read once the load returned


cdef cbool _on_progress(float progress, void * user_data) noexcept nogil:
    cdef _progress_track * track = <_progress_track *> user_data
    track.seen.push_back(progress)
    track.latest = progress  # an aligned double: a reader sees the old or the new value
    return True  # go on loading


cdef class LoadTracker:
    """The share of a model's weights llama.cpp has read, as its progress callback
    reports it (per tensor, then 1.0). ``fraction`` may be read from any thread during
    the load; ``fractions`` once the load has returned."""

    cdef _progress_track track
    cdef vector[float] seen

    def __cinit__(self):
        self.track.latest = 0.0
        self.track.seen = &self.seen

    @property
    def fraction(self) -> float:
        return self.track.latest

    @property
    def fractions(self) -> list:
        return [value for value in self.seen]


# ---------------------------------------------------------------- model


def vocabulary_problem(str path) -> str | None:
    """Why llama.cpp refuses the GGUF at ``path`` (an architecture it does not know,
    hyperparameters it misses), read from its metadata and vocabulary alone; None if
    those load. Fast: no weights are read."""
    cdef llama_model_params params = llama_model_default_params()
    cdef bytes bpath = path.encode()
    cdef const char * cpath = bpath
    cdef llama_model * model
    params.vocab_only = True
    take_log_tail()
    with nogil:
        model = llama_model_load_from_file(cpath, params)
    if model is NULL:
        return take_log_tail() or "llama.cpp could not read it"
    llama_model_free(model)
    return None


cdef class Model:
    """Weights and vocabulary of one GGUF, loaded through the C API."""

    cdef llama_model * ptr
    cdef const llama_vocab * vocab
    cdef vector[llama_adapter_lora *] loras
    cdef readonly str path

    def __cinit__(self, str path, int gpu_layers=0, bint use_mmap=True, list loras=None,
                  extra_buffers=None, list rpc_devices=None, list tensor_split=None,
                  LoadTracker progress=None):
        cdef llama_model_params params = llama_model_default_params()
        cdef vector[ggml_backend_dev_t] devices
        cdef vector[float] split
        cdef bytes bpath = path.encode()
        cdef const char * cpath = bpath
        cdef llama_adapter_lora * lora
        params.n_gpu_layers = gpu_layers
        params.load_mode = LLAMA_LOAD_MODE_MMAP if use_mmap else LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = (not amx_in_build()) if extra_buffers is None else extra_buffers
        if progress is not None:
            # also keeps llama.cpp's own callback, which prints dots, out of the way
            params.progress_callback = _on_progress
            params.progress_callback_user_data = &progress.track
        if _rpc_servers:  # RPC workers are registered: name this model's devices
            devices = _model_devices(rpc_devices or [])
            params.devices = devices.data()
        if tensor_split:
            split.resize(max(llama_max_devices(), <size_t> len(tensor_split)))
            for i, share in enumerate(tensor_split):
                split[i] = share
            params.tensor_split = split.data()
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
