# Part of the shimmy.engine._engine extension (included by _engine.pyx).
# Text hand-off: token bytes to UTF-8 text, stop strings, and the events a slot hands out.


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


cdef object _advance_text(BatchEngine self, int index, Slot * s, llama_token token):
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
                        _take_logprobs(self, s), _decode(s.stops[which], s.stops[which].size()))
    if eog:
        return (index, _decode_complete(s.pending), "stop", s.n_generated,
                _take_logprobs(self, s), None)
    if s.n_generated >= s.max_tokens or s.n_past + 1 >= self.n_ctx:
        return (index, _decode_complete(s.pending), "length", s.n_generated,
                _take_logprobs(self, s), None)
    ready = s.pending.size() - _stop_hold_len(s.pending, s.stops)
    if ready == 0:
        return None
    ready = _utf8_complete_len(s.pending.substr(0, ready))
    if ready == 0:
        return None
    text = _decode(s.pending, ready)
    s.pending.erase(0, ready)
    return (index, text, None, s.n_generated, _take_logprobs(self, s), None)
