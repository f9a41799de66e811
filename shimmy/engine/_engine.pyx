# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The one boundary to llama.cpp: model, context, slots and the per-token loop.

Everything that runs once per generated token lives here, in C: batch fill,
``llama_decode`` with the GIL released, per-slot sampler chains, token to bytes,
UTF-8 completion and stop strings. Python sees one list of finished pieces per step.

One extension, a file per concern (Cython's ``include``; a cdef class's methods must
sit in one file, so what is moved out takes the engine as its first argument):

- ``llama_h.pxi``: the declarations of llama.h and the small C helpers compiled in
- ``backend.pxi``: llama.cpp's set-up and log, ``Model``, ``Embedder``
- ``steps.pxi``: slots and how a step's batch is composed (chunks, fillers, drafts)
- ``sampling.pxi``: sampler chains, the top-k shortcut, grammar, log-probabilities
- ``text.pxi``: token bytes to text, stop strings, the events a slot hands out
- this file: ``BatchEngine``, the slots' owner: warm-up checks, cells, start, step,
  and what a failed decode leaves (slot states as in ``lifecycle.SlotState``); over
  600 lines because those are the class's methods, which Cython keeps in one file
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport fflush, fputs, stderr
from libc.math cimport INFINITY, expf, logf, sqrtf
from libc.string cimport memcmp, memcpy, strcmp, strstr
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.vector cimport vector


from shimmy.engine.lifecycle import StepFailed

cdef class BatchEngine  # defined below; the included files' functions take it

include "llama_h.pxi"
include "backend.pxi"
include "rpc.pxi"
include "steps.pxi"
include "sampling.pxi"
include "text.pxi"


cdef void _set_kv_type(llama_context_params * params, str kv_type,
                       bint flash_f16=False) except *:
    """The KV cache's element type, and the attention that keeps results batch-invariant
    with it.

    llama.cpp's CPU flash attention splits one sequence's cells across threads, or tiles
    them, only for f16/f32 caches, and only for some batch shapes (one row of one stream
    over 512+ cells): with f16 it would round differently alone than beside others. For
    bf16 and q8_0 it always runs the same per-row loop, so those caches get flash
    attention (faster decoding, but long prompts read slower: the loop is no matrix
    product); the invariant profile gives f16 the plain attention. ``flash_f16`` (the
    fast profile's default, ``--flash-attn``) runs flash attention over f16 too, as
    llama-server does: long prompts read faster and small models decode faster, and
    what it changes in the answers is the size of what llama.cpp's own kernels change
    between a prompt pass and a one-token step (docs/BENCHMARKS.md).
    """
    if kv_type not in ("f16", "bf16", "q8_0"):
        raise ValueError(f"KV cache type {kv_type!r}: choose bf16, f16 or q8_0")
    if kv_type == "f16":
        params.type_k = params.type_v = GGML_TYPE_F16
        params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_f16 \
            else LLAMA_FLASH_ATTN_TYPE_DISABLED
    elif kv_type in ("bf16", "q8_0"):
        params.type_k = params.type_v = GGML_TYPE_BF16 if kv_type == "bf16" else GGML_TYPE_Q8_0
        params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED


cdef class BatchEngine:
    """A llama.cpp context with ``n_slots`` sequences, each able to hold ``n_ctx`` tokens.

    Every slot has a KV stream of its own (not one unified buffer), and attention is
    chosen by ``kv_type`` to run per row (see ``_set_kv_type``): a sequence's cells then
    sit at the same places, and its sums run in the same order, whatever the other
    slots hold. Together with
    ``step()``'s prompt chunks, cut at fixed positions, this makes generation batch-
    invariant. In the invariant profile sliding-window layers keep full-size caches
    too: a window cache is a ring whose cell order depends on history (once it wraps,
    a reused prefix leaves its cells elsewhere than a cold start would), and its old
    cells are gone when a later prompt wants to reuse the prefix. The fast profile
    caches those layers at their window (``swa_window``) and reuses what the window
    still holds (``_reusable``). A finished slot keeps its cache, so a request that
    shares a prefix with it (the next turn of a chat) reads only the rest of its
    prompt.
    """

    cdef Model model
    cdef llama_context * ctx
    cdef llama_batch batch
    cdef vector[Slot] slots
    cdef readonly int n_ctx
    cdef readonly int n_batch
    cdef readonly int n_ubatch      # rows of one pass over the weights at most
    cdef readonly size_t read_budget  # prompt rows per step at most (packed steps)
    cdef readonly int n_slots
    cdef readonly int n_threads
    cdef int n_swa
    cdef readonly bint swa_window  # sliding-window layers cache their window alone
    cdef vector[llama_token_data] candidates  # scratch for grammar-checked sampling
    cdef readonly int n_draft       # most tokens guessed ahead per step; 0: none
    cdef readonly uint64_t n_drafted   # guessed tokens decoded, and how many were right
    cdef readonly uint64_t n_accepted
    cdef readonly uint64_t n_passes    # llama_decode calls
    cdef readonly uint64_t n_filler_rows  # throw-away rows of idle slots (_add_filler)
    cdef readonly int pass_rows     # generating slots per llama_decode at most
    cdef readonly bint exact_rows   # a row rounds alike whatever else its step holds
    cdef readonly bint invariant    # the profile asks for batch-invariant text
    # a step is one llama_decode of every busy slot's rows (and a lone one guesses
    # ahead): with exact rows, or where invariance is not asked for
    cdef readonly bint packed
    cdef bint per_row_attention     # the cache type runs attention row by row
    cdef readonly int rows_checked  # rows warm_up compared, one step against one by one
    cdef readonly str kv_type
    cdef readonly bint flash_attention  # llama.cpp's flash attention, else the plain one
    cdef readonly bint exact_weights  # the caller vouched: no row-shaped weight matrices
    cdef ShimmyHead * head          # the output layer's product (output_head.h)
    cdef uint64_t fail_at           # debug: the decode pass that fails (0: none)
    cdef uint64_t fail_every        # debug: and every this many passes after it
    cdef uint64_t fail_left         # debug: failures still to inject
    cdef bint head_attached         # this CPU runs it: warm_up() checks it against ggml
    cdef ShimmyPages pages          # the cache's buffers (cache_pages.h)
    # bytes of cache handed back to the kernel after warm-up: resident again as cells fill
    cdef readonly size_t cache_released

    def __cinit__(self, Model model, int n_ctx, int n_slots, int n_threads, int n_batch=64,
                  str kv_type="f16", int n_draft=0, bint exact_weights=False,
                  bint own_head=True, bint invariant=True, int n_ubatch=0,
                  bint flash_f16=False, bint cache_on_use=True):
        cdef llama_context_params params = llama_context_default_params()
        cdef vector[float] scales
        self.head = shimmy_head_new(n_threads)
        self.head_attached = own_head and shimmy_head_attach(&params, self.head)
        if cache_on_use:  # else (bench/profiles.py) the whole cache stays resident
            shimmy_pages_attach(&params, &self.pages)
        params.n_ctx = n_ctx * n_slots
        # a pass reads up to n_ubatch prompt rows (n_batch, the unit of chunks and of
        # reuse, by default): one pass over the weights for more rows reads prompts
        # faster, and a row's numbers do not depend on how many rows share its pass
        # once it is one of 8 or more (see _read_len)
        self.n_ubatch = max(n_ubatch, n_batch)
        self.read_budget = max(READ_CHUNKS * n_batch, self.n_ubatch)
        params.n_ubatch = max(self.n_ubatch, n_slots)
        # packed, a step is one batch: its prompt rows, a row of every other slot and
        # a lone slot's guesses
        params.n_batch = self.read_budget + n_slots + MAX_SEQ_ROWS
        params.n_seq_max = n_slots
        params.kv_unified = False
        if flash_f16 and invariant:
            raise ValueError("flash attention over an f16 cache is not batch-invariant: "
                             "the fast profile only")
        _set_kv_type(&params, kv_type, flash_f16)
        self.flash_attention = kv_type != "f16" or flash_f16
        # the fast profile caches sliding-window layers at their window, as llama-server
        # does: long prompts read faster and cells cost less; the invariant one keeps them
        # whole (see the class's docstring)
        params.swa_full = invariant
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
            if not invariant or (exact_weights and kv_type != "f16") else 0
        self.n_drafted = self.n_accepted = self.n_passes = self.n_filler_rows = 0
        self.fail_at = self.fail_every = self.fail_left = 0
        self.pass_rows = n_slots
        self.exact_rows = False
        self.invariant = invariant
        self.packed = False
        self.per_row_attention = kv_type != "f16"
        self.rows_checked = 0
        self.kv_type = kv_type
        self.exact_weights = exact_weights
        self.n_swa = llama_model_n_swa(model.ptr)
        self.swa_window = self.n_swa > 0 and not invariant
        self.batch = llama_batch_init(params.n_batch, 0, 1)
        self.slots.resize(n_slots)
        for i in range(n_slots):
            self.slots[i].state = IDLE
            self.slots[i].chain = NULL
            self.slots[i].grammar = NULL
            self.slots[i].n_read = 0
            self.slots[i].read_from = 0
            self.slots[i].n_cold = 0
            self.slots[i].read_stop = 0
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
        ``FALLBACK_PASS_ROWS`` to a pass and nothing is guessed. Without ``invariant``
        the engine runs ``packed`` either way, as llama-server does, and the check
        decides only how far a cached prefix is reused (to the token, or in chunks).

        The same decodes check the output head (``output_head.h``) against ggml's
        product, row by row and bit by bit; it computes the logits from then on only
        where every row agreed, in one-row and in several-row products."""
        if self.head_attached:
            self.head.mode = OUTPUT_HEAD_PROBE
        self.pages.scanning = True
        # the invariant profile does not count on f16's plain attention (one row and
        # several may go through different kernels, and rows of several sequences are
        # not checked); the fast one asks only that a request alone reuse cells as a cold
        # start computes them, which the check shows for any cache type on this CPU.
        # Flash attention over f16 fails it past 512 cells (one row splits the cells
        # over the threads), further than a check at load can afford to go.
        cdef int lead = min(CHECK_LEAD, self.n_ctx - CHECK_ROWS, self.read_budget)
        if (self.per_row_attention or not self.invariant) and lead >= CHECK_ROWS \
                and not (self.flash_attention and not self.per_row_attention):
            self.exact_rows = self._rows_agree(lead)
            self.rows_checked = CHECK_ROWS
        else:  # no check (flash attention over f16, or too small a context): one decode
            self._decode_probe(1)
        self.packed = self.exact_rows or not self.invariant
        if not self.packed:
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
        self.pages.scanning = False
        # every cell is clear: the cache's pages go back to the kernel, and read as the
        # zeros llama.cpp cleared them to until a cell on them is written
        self.cache_released = shimmy_pages_release(&self.pages)

    def profile_facts(self) -> dict:
        """What warm_up decided and what it checked (``profile.EngineProfile`` reads it)."""
        return {"exact_rows": bool(self.exact_rows), "rows_per_pass": self.pass_rows,
                "invariant": bool(self.invariant), "packed": bool(self.packed),
                "draft": self.n_draft, "reuse_unit": 1 if self.exact_rows else self.n_batch,
                "prompt_rows": self.n_ubatch,
                "own_head": self.own_head, "head_checks": self.head_checks,
                "rows_checked": self.rows_checked, "kv_type": self.kv_type,
                "attention": "flash" if self.flash_attention else "plain",
                "exact_weights": bool(self.exact_weights),
                "swa_cache": ("window" if self.swa_window else "full") if self.n_swa > 0
                else None}

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

    cdef bint _rows_agree(self, int lead) except -1:
        """Whether ``CHECK_ROWS`` rows of a sequence decoded in one step, after ``lead``
        tokens, get the very logits that as many one-row steps get. Which kernels
        llama.cpp's CPU backend picks depends on the machine, on the rows in a step and
        on the cells attended to, so this is measured."""
        cdef int n_vocab = self.model.n_vocab
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
            length = self._reusable(&self.slots[i], i, tokens)
            if length < MIN_SLOT_REUSE:
                length = 0
            if best < 0 or length > best_len:
                best, best_len = i, length
        return best

    def reusable(self, int slot, list prompt) -> int:
        """How many of ``prompt``'s tokens the slot's cache would save reading, were the
        slot idle."""
        cdef vector[llama_token] tokens = prompt
        return self._reusable(&self.slots[slot], slot, tokens)

    def donates(self, int source, list prompt) -> int:
        """How many of ``prompt``'s tokens a copy of the slot's cells (busy or not, see
        ``copy_cells``) would save reading. Out of a sliding-window ring, a copy holds
        only the cells within a window of the newest, so it serves only where those
        still reach back as far as the rest of the prompt attends."""
        cdef vector[llama_token] tokens = prompt
        cdef Slot * s = &self.slots[source]
        cdef size_t n = self._reusable(s, source, tokens)
        if self.swa_window and n > 0 and \
                <long> s.cached.size() - 1 - max(0, <long> n - self.n_swa) >= self.n_swa:
            return 0
        return n

    def read_ahead(self, int slot, list prompt) -> int:
        """Where a copy of the slot's cells would serve ``prompt`` once the slot has read
        that far into its own prompt: their shared prefix in whole chunks, short of the
        prompt's last token, and past what it has read; else 0."""
        cdef vector[llama_token] tokens = prompt
        cdef Slot * s = &self.slots[slot]
        cdef size_t shared
        if s.state != PREFILL or not self.packed or tokens.size() < 2 or s.prompt.size() < 2:
            return 0
        shared = min(_common_prefix(s.prompt, tokens), tokens.size() - 1, s.prompt.size() - 2)
        shared -= shared % self.n_batch
        return shared if shared > s.n_prefilled else 0

    def hold_read(self, int slot, size_t at) -> None:
        """Pause the slot's prompt read once it has read ``at`` tokens, until called
        again with 0: another slot then copies its cells from there (``read_ahead``)."""
        if at and not self.packed:
            raise LlamaError("a read pauses only where a step holds every slot's rows")
        self.slots[slot].read_stop = at

    def cached(self, int slot) -> list:
        """The tokens whose cells the slot's cache holds, in order."""
        return list(self.slots[slot].cached)

    def marks(self, int slot) -> tuple:
        """How the slot's cells came about, for ``restore_cells`` and ``reusable_copy``:
        ``(n_cold, read_from, n_read)`` (see ``_reusable``)."""
        cdef Slot * s = &self.slots[slot]
        return (s.n_cold, s.read_from, s.n_read)

    def reusable_copy(self, list tokens, tuple marks, list prompt) -> int:
        """How many of ``prompt``'s tokens cells from ``save_cells`` holding ``tokens``,
        with the slot's ``marks`` then, would save reading once restored (none without
        marks, where ``restore_cells`` needs them)."""
        cdef vector[llama_token] held = tokens
        cdef vector[llama_token] wanted = prompt
        if marks is None:
            if not self.exact_rows:
                return 0
            marks = (held.size(), 0, held.size())
        return self._reuse_of(held, marks[0], marks[1], marks[2], wanted)

    @property
    def copies_cells(self) -> bool:
        """Whether cells may go from slot to slot: where rows round alike, or in the
        fast profile, whose copies carry their marks (out of a sliding-window ring,
        only where ``donates`` says so)."""
        return self.exact_rows or not self.invariant

    @property
    def caches_cells(self) -> bool:
        """Whether the prompt cache may keep slots' cells: as ``copies_cells``, but
        not a sliding-window ring's, which holds only its window when kept."""
        return self.copies_cells and not self.swa_window

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
        return self._set_cells(slot, cells.data(), cells.size(), self.slots[source].cached,
                               self.marks(source))

    cdef void _get_cells(self, int slot, vector[uint8_t] & cells) noexcept:
        """The slot's cells as llama.cpp serializes a sequence, into ``cells``."""
        cdef size_t size = llama_state_seq_get_size(self.ctx, slot)
        cells.resize(size)
        with nogil:
            size = llama_state_seq_get_data(self.ctx, cells.data(), size, slot)
        cells.resize(size)

    def restore_cells(self, int slot, bytes cells, list tokens, tuple marks=None) -> bool:
        """Replace the idle slot's cache by cells from ``save_cells`` holding ``tokens``
        (with the slot's ``marks`` then, which only ``exact_rows`` can do without):
        exact copies, so a prompt reuses them as if they had been computed here. Where
        rows round alike, or in the fast profile; False if llama.cpp refused (the slot
        is then empty)."""
        cdef const uint8_t * src = cells
        if marks is None and self.exact_rows:
            marks = (len(tokens), 0, len(tokens))
        return self._set_cells(slot, src, len(cells), tokens, marks)

    cdef bint _set_cells(self, int slot, const uint8_t * src, size_t size,
                         vector[llama_token] tokens, tuple marks) except -1:
        cdef Slot * s = &self.slots[slot]
        cdef size_t read
        if s.state != IDLE:
            raise LlamaError(f"slot {slot} is busy")
        if self.invariant and not self.exact_rows:
            raise LlamaError("cells are restored only where rows round alike in any step, "
                             "or in the fast profile")
        if marks is None:
            raise LlamaError("cells are restored here only with their marks")
        llama_memory_seq_rm(llama_get_memory(self.ctx), slot, -1, -1)
        s.cached.clear()
        s.n_read = s.read_from = s.n_cold = 0
        with nogil:
            read = llama_state_seq_set_data(self.ctx, src, size, slot)
        if read == 0:
            llama_memory_seq_rm(llama_get_memory(self.ctx), slot, -1, -1)
            return False
        s.cached = tokens
        s.n_cold, s.read_from, s.n_read = marks
        return True

    cdef size_t _reusable(self, Slot * s, int seq, const vector[llama_token] & prompt) noexcept:
        """How many of ``prompt``'s tokens the slot's cache can save reading (see
        ``_reuse_cache``). Where none can, the lowest idle slot wins: llama.cpp decodes
        the rows of consecutive slots together, and a gap between busy slots costs a
        throw-away row (``_add_filler``) or a second pass over the weights.

        With ``exact_rows`` every shared cell counts. Otherwise a prefix of cells as a
        cold start reads them (``n_cold``) counts in whole chunks, so that the rest is
        read in a cold start's chunks and gives its text. The invariant profile stops
        there. The fast profile goes on as llama-server does, to the token, where the
        prompt shares more: past the last prompt read (a chat's next turn repeats the
        answer, whose cells were generated one row a step and so never equal a cold
        read's), or inside the older history before it; inside the last read, back to
        where it began, so that the same request asked again reads the rest in the
        passes it did the first time (``_free_read_len``) and gives the same text.

        Where sliding-window layers cache their window alone (``swa_window``), the cells
        the rest of the prompt attends to must still be there: if they are not for the
        whole chunks of prompt-read cells, the prefix is reused to the token (generated
        cells included), and if not even then, not at all."""
        cdef size_t n = self._reuse_of(s.cached, s.n_cold, s.read_from, s.n_read, prompt)
        cdef size_t shared
        if self.swa_window and n > 0 and not self._window_kept(seq, n):
            shared = min(_common_prefix(s.cached, prompt), prompt.size() - 1)
            n = shared if self._window_kept(seq, shared) else 0
        return n

    cdef size_t _reuse_of(self, const vector[llama_token] & cached, size_t n_cold,
                          size_t read_from, size_t n_read,
                          const vector[llama_token] & prompt) noexcept:
        """``_reusable`` for cells holding ``cached`` with those marks, the window aside."""
        cdef size_t shared = _common_prefix(cached, prompt)
        cdef size_t n
        shared = min(shared, prompt.size() - 1) if prompt.size() else 0
        if self.exact_rows:
            n = shared
        elif shared <= n_cold or self.invariant:
            n = min(shared, n_cold)
            n -= n % self.n_batch
        elif shared >= n_read or shared < read_from:
            n = shared
        else:
            n = read_from
        return n

    cdef bint _window_kept(self, int seq, size_t n) noexcept:
        """Whether the slot's window cache still holds what position ``n`` attends to."""
        return llama_memory_seq_pos_min(llama_get_memory(self.ctx), seq) \
            <= max(0, <long> n - self.n_swa)

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
        s.chain = _make_chain(self, sampling, prompt, &s.shortcut)
        try:
            s.grammar = _make_grammar(self, sampling)
        except LlamaError:
            llama_sampler_free(s.chain)
            s.chain = NULL
            raise
        cdef size_t reused = self._reuse_cache(s, slot, reuse)
        s.n_prefilled = reused
        s.read_stop = 0
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
        in a step. Otherwise ``_reusable`` says how far, and the cells a cold start
        would compute alike (``n_cold``) go on growing as the prompt is read only if
        the read begins where a cold start's chunk does.
        """
        cdef llama_memory_t mem = llama_get_memory(self.ctx)
        cdef size_t n = self._reusable(s, slot, s.prompt) if reuse else 0
        if n > 0 and self.n_swa > 0 and not self._window_kept(slot, n):
            n = 0  # the sliding window the rest of the prompt needs has been dropped
        if n > 0 and not llama_memory_seq_rm(mem, slot, n, -1):
            n = 0
        if n == 0:
            llama_memory_seq_rm(mem, slot, -1, -1)
        s.cached.resize(n)
        if n % self.n_batch or n > s.n_cold:
            s.n_cold = min(s.n_cold, n - n % self.n_batch)
        else:
            s.n_cold = n
        s.n_read = s.read_from = n
        return n


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
        next prompt chunks. ``packed`` (exact rows, or the fast profile), all of it is
        one ``llama_decode`` (``_fill_step``). Otherwise one ``llama_decode`` per
        ``pass_rows`` decoding slots, another for one slot's chunk. Chunks are cut at
        multiples of ``n_batch``. With exact rows, or unpacked, a request's arithmetic is
        the same whether it runs alone or beside others, so a seed gives the same text
        either way; the fast profile promises that only alone. Raises ``LlamaError`` if
        llama.cpp fails a batch.
        """
        cdef list events = []
        try:
            self._step(events)
        except StepFailed as exc:
            exc.events = events
            raise
        return events

    cdef void _step(self, list events) except *:
        if self.packed:
            if _fill_step(self):
                try:
                    self._decode()
                finally:
                    _drop_fillers(self)
                events.extend(self._sample_all())
            return
        cdef size_t next_slot = 0
        cdef int generating = 0
        for i in range(self.slots.size()):
            generating += _decodes(self, &self.slots[i])
        # as few passes as the cap allows, as even as can be (8 rows as 4 + 4, not 7 + 1)
        cdef int passes = (generating + self.pass_rows - 1) // self.pass_rows
        cdef int per_pass = (generating + passes - 1) // passes if passes else 0
        while next_slot < self.slots.size():
            next_slot = _fill_decode(self, next_slot, per_pass, generating == 1)
            if self.batch.n_tokens == 0:
                break
            self._decode()
            events.extend(self._sample_all())
        if _fill_prefill(self) >= 0:
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
        s.n_read = s.read_from = s.n_cold = s.read_stop = 0
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
                token = _sample(self, s)
            if s.n_probs >= 0:
                _record_logprob(self, s, token)
            s.state = GENERATE
            s.last_token = token
            s.n_generated += 1
            event = _advance_text(self, index, s, token)
            if event is not None:
                merged = event if merged is None else _merge_events(merged, event)
                if event[2] is not None:
                    break
            if j == n_guessed or token != s.drafted[j]:
                break
            s.cached.push_back(token)  # the guess was right: its cell stays
            s.n_past += 1
        if n_guessed:
            _adapt_draft(self, s, n_guessed, s.n_past - confirmed_from)
            s.drafted.clear()  # the cells of wrong or unneeded guesses go
            llama_memory_seq_rm(llama_get_memory(self.ctx), index, s.n_past, -1)
        return merged


