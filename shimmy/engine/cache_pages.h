/* The KV cache's memory made resident as cells are used, not when the context is made.

   llama.cpp allocates a context's cache for every cell it may hold (slots x context) and
   clears it to zeros, which writes, and so makes resident, every page at once: a server
   for agents (4 slots of 32k cells) holds gigabytes before a prompt arrives. Pages that
   a process has never written read as zeros, so handing the cleared pages back to the
   kernel (MADV_DONTNEED) leaves the cache exactly as cleared, and a page comes back,
   zeroed, when a cell on it is first written. Huge pages are turned off on those ranges
   first (MADV_NOHUGEPAGE): a 2 MiB page would make a whole slot's rows of a layer
   resident for its first cell.

   llama.cpp's API gives no address of the cache, so the context's graph callback
   (cb_eval) looks at the graph's tensors during the engine's warm-up: the cache's
   tensors are named cache_*, and the buffers holding them are the cache's. Only
   ggml's plain CPU buffers are touched (not GPU memory, nor pinned host memory). The
   callback passes every question on to the one it wraps (the output head's), if any. */
#pragma once

#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "ggml-backend.h"
#include "llama.h"

#define SHIMMY_CACHE_BUFFERS 16

typedef struct ShimmyPages {
    bool scanning;  /* warm-up: note the buffers the cache tensors live in */
    int n_buffers;
    ggml_backend_buffer_t buffers[SHIMMY_CACHE_BUFFERS];
    ggml_backend_sched_eval_callback next;
    void * next_data;
} ShimmyPages;

static void shimmy_pages_note(ShimmyPages * p, const struct ggml_tensor * t) {
    const struct ggml_tensor * root = t->view_src ? t->view_src : t;
    ggml_backend_buffer_t buffer = root->buffer;
    if (buffer == NULL || strncmp(root->name, "cache_", 6) != 0) return;
    for (int i = 0; i < p->n_buffers; i++) {
        if (p->buffers[i] == buffer) return;
    }
    if (p->n_buffers < SHIMMY_CACHE_BUFFERS) p->buffers[p->n_buffers++] = buffer;
}

static bool shimmy_pages_eval(struct ggml_tensor * t, bool ask, void * user_data) {
    ShimmyPages * p = (ShimmyPages *) user_data;
    if (p->scanning && ask) {
        shimmy_pages_note(p, t);
        for (int i = 0; i < GGML_MAX_SRC; i++) {
            if (t->src[i] != NULL) shimmy_pages_note(p, t->src[i]);
        }
    }
    return p->next != NULL ? p->next(t, ask, p->next_data) : false;
}

/* Route the context's graph through the scan, in front of the callback already set. */
static void shimmy_pages_attach(llama_context_params * params, ShimmyPages * p) {
    p->next = params->cb_eval;
    p->next_data = params->cb_eval_user_data;
    params->cb_eval = shimmy_pages_eval;
    params->cb_eval_user_data = p;
}

/* Hand the cache's whole pages back; the bytes handed back (none but on Linux, where
   MADV_DONTNEED drops a private page's data). Call it only while no cell holds data that
   matters (after the warm-up's cells were cleared) and nothing decodes. */
static size_t shimmy_pages_release(ShimmyPages * p) {
#if !defined(__linux__)
    (void) p;
    return 0;
#else
    size_t page = (size_t) sysconf(_SC_PAGESIZE), released = 0;
    for (int i = 0; i < p->n_buffers; i++) {
        ggml_backend_buffer_t buffer = p->buffers[i];
        if (ggml_backend_buffer_get_type(buffer) != ggml_backend_cpu_buffer_type()) continue;
        size_t base = (size_t) ggml_backend_buffer_get_base(buffer);
        size_t start = (base + page - 1) / page * page;
        size_t end = (base + ggml_backend_buffer_get_size(buffer)) / page * page;
        if (end <= start) continue;
        madvise((void *) start, end - start, MADV_NOHUGEPAGE);
        if (madvise((void *) start, end - start, MADV_DONTNEED) == 0) released += end - start;
    }
    return released;
#endif
}
