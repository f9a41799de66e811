# Part of the shimmy.engine._engine extension (included by _engine.pyx).
# Sampling: a request's chain, the top-k shortcut, grammar checks and log-probabilities.


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


cdef llama_sampler * _make_grammar(BatchEngine self, dict p) except? NULL:
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


cdef llama_sampler * _make_chain(BatchEngine self, dict p, list prompt,
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


cdef llama_token _sample(BatchEngine self, Slot * s) noexcept nogil:
    """The chain's pick; with a grammar, checked against it and redrawn only if it
    breaks it (testing one token is far cheaper than masking the whole vocabulary)."""
    if s.grammar is NULL:
        if s.shortcut < 0:
            return llama_sampler_sample(s.chain, self.ctx, s.batch_row)
        return _sample_best(self, s, llama_get_logits_ith(self.ctx, s.batch_row))
    cdef float * logits = llama_get_logits_ith(self.ctx, s.batch_row)
    cdef llama_token_data single
    cdef llama_token_data_array one
    cdef llama_token token = _apply(self, s, logits, False)
    single.id = token
    single.logit = 1.0
    single.p = 0.0
    one.data = &single
    one.size = 1
    one.selected = -1
    one.sorted = False
    llama_sampler_apply(s.grammar, &one)
    if single.logit == -INFINITY:
        token = _apply(self, s, logits, True)
    llama_sampler_accept(s.grammar, token)
    llama_sampler_accept(s.chain, token)
    return token


cdef llama_token _sample_best(BatchEngine self, Slot * s, const float * logits) noexcept nogil:
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


cdef llama_token _apply(BatchEngine self, Slot * s, const float * logits, cbool grammar_first) noexcept nogil:
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


cdef void _record_logprob(BatchEngine self, Slot * s, llama_token token) noexcept:
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


cdef object _take_logprobs(BatchEngine self, Slot * s):
    if s.n_probs < 0:
        return None
    cdef list out = []
    for r in s.probs:
        top = [(r.top_tokens[k], _piece(self, r.top_tokens[k]), r.top_logprobs[k])
               for k in range(r.top_tokens.size())]
        out.append((r.token, _piece(self, r.token), r.logprob, top))
    s.probs.clear()
    return out


cdef bytes _piece(BatchEngine self, llama_token token):
    cdef string piece
    _append_piece(self.model.vocab, token, piece, False)
    return piece
