# Part of the shimmy.engine._engine extension (included by _engine.pyx).
# llama.cpp's RPC backend (libggml-rpc.so, a loadable ggml module beside the CPU variants):
# other machines' devices for a model, and this machine's CPU served to others. See
# docs/RPC.md; shimmy/engine/rpc.py checks a worker before anything here connects to it.

from libc.stdint cimport uintptr_t


cdef extern from "ggml-backend.h" nogil:
    cdef enum ggml_dev_kind "ggml_backend_dev_type":
        GGML_BACKEND_DEVICE_TYPE_CPU
        GGML_BACKEND_DEVICE_TYPE_ACCEL
    ggml_backend_reg_t ggml_backend_reg_by_name(const char * name)
    ggml_backend_reg_t ggml_backend_load(const char * path)
    void ggml_backend_register(ggml_backend_reg_t reg)
    const char * ggml_backend_reg_name(ggml_backend_reg_t reg)
    void * ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name)
    size_t ggml_backend_reg_dev_count(ggml_backend_reg_t reg)
    ggml_backend_dev_t ggml_backend_reg_dev_get(ggml_backend_reg_t reg, size_t index)
    size_t ggml_backend_dev_count()
    ggml_backend_dev_t ggml_backend_dev_get(size_t index)
    ggml_backend_dev_t ggml_backend_dev_by_type(ggml_dev_kind kind)
    ggml_dev_kind ggml_backend_dev_type(ggml_backend_dev_t device)
    ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device)
    const char * ggml_backend_dev_name(ggml_backend_dev_t device)
    const char * ggml_backend_dev_description(ggml_backend_dev_t device)
    void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total)


cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <netdb.h>
    #include <poll.h>
    #include <stdio.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <unistd.h>
    #include "ggml.h"
    #include "ggml-backend.h"

    typedef ggml_backend_reg_t (*shimmy_rpc_add_server_t)(const char * endpoint);
    typedef void (*shimmy_rpc_start_server_t)(const char * endpoint, const char * cache_dir,
        size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices);

    #define SHIMMY_RPC_MAX 16
    #define SHIMMY_RPC_LOST_EXIT 75 /* EX_TEMPFAIL: a worker went away; retry when it is back */
    static char shimmy_rpc_names[SHIMMY_RPC_MAX][256];
    static int shimmy_rpc_count = 0;

    static void shimmy_rpc_note(const char * endpoint) {
        for (int i = 0; i < shimmy_rpc_count; i++) {
            if (strcmp(shimmy_rpc_names[i], endpoint) == 0) return;
        }
        if (shimmy_rpc_count < SHIMMY_RPC_MAX) {
            snprintf(shimmy_rpc_names[shimmy_rpc_count++], 256, "%s", endpoint);
        }
    }

    /* 1 when a TCP connection to HOST:PORT opens within timeout_ms, -1 when it is refused,
       0 when it times out (or the name does not resolve) */
    static int shimmy_tcp_opens(const char * endpoint, int timeout_ms) {
        char host[256];
        const char * colon = strrchr(endpoint, ':');
        struct addrinfo hints, * found = NULL;
        int fd, result = 0, error = 0;
        socklen_t size = sizeof error;
        if (colon == NULL || colon - endpoint >= 256) return 0;
        memcpy(host, endpoint, colon - endpoint);
        host[colon - endpoint] = 0;
        if (host[0] == '[') {  /* [v6]:port */
            memmove(host, host + 1, strlen(host));
            host[strcspn(host, "]")] = 0;
        }
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, colon + 1, &hints, &found) != 0 || found == NULL) return 0;
        fd = socket(found->ai_family, SOCK_STREAM, 0);
        if (fd >= 0) {
            fcntl(fd, F_SETFL, O_NONBLOCK);
            if (connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
                result = 1;
            } else if (errno == ECONNREFUSED) {
                result = -1;
            } else if (errno == EINPROGRESS) {
                struct pollfd wait = {fd, POLLOUT, 0};
                if (poll(&wait, 1, timeout_ms) == 1
                        && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) == 0) {
                    result = error == 0 ? 1 : error == ECONNREFUSED ? -1 : 0;
                }
            }
            close(fd);
        }
        freeaddrinfo(found);
        return result;
    }

    /* Whether a worker is gone: it refuses connections, or never accepted one. A worker
       killed a moment ago may still accept for a few milliseconds, so it is asked a few
       times; a live one that is busy stops accepting once its queue is full (a timeout
       after it accepted once: not gone). */
    static const char * shimmy_rpc_gone(const char * endpoint) {
        for (int attempt = 0; attempt < 5; attempt++) {
            int opened = shimmy_tcp_opens(endpoint, 1000);
            if (opened < 0) return "refuses connections";
            if (opened == 0) return attempt ? NULL : "does not answer";
            usleep(200 * 1000);
        }
        return NULL;
    }

    /* ggml's RPC client aborts the process when a worker stops answering. Say which worker,
       last; where one is gone, exit with SHIMMY_RPC_LOST_EXIT rather than dump core. Any
       other abort goes on to abort() (SIGABRT, status 134). */
    static void shimmy_on_abort(const char * message) {
        char lost[SHIMMY_RPC_MAX * 300] = "";
        int n_lost = 0;
        fprintf(stderr, "%s\\n", message);
        for (int i = 0; i < shimmy_rpc_count; i++) {
            const char * why = shimmy_rpc_gone(shimmy_rpc_names[i]);
            if (why != NULL) {
                if (n_lost++) strcat(lost, ", ");
                strcat(lost, shimmy_rpc_names[i]);
                strcat(lost, " ");
                strcat(lost, why);
            }
        }
        if (n_lost) {
            fprintf(stderr, "shimmy: exiting with status %d: lost RPC worker %s "
                    "(llama.cpp cannot go on without it)\\n", SHIMMY_RPC_LOST_EXIT, lost);
            fflush(stderr);
            _exit(SHIMMY_RPC_LOST_EXIT);
        }
        if (shimmy_rpc_count && (strstr(message, "RPC server crashed") != NULL
                                 || strstr(message, "Failed to connect to") != NULL
                                 || strstr(message, "RPC handshake failed") != NULL)) {
            /* a connection broke, yet every worker accepts connections: restarted since */
            fprintf(stderr, "shimmy: exiting with status %d: lost the connection to %s",
                    SHIMMY_RPC_LOST_EXIT,
                    shimmy_rpc_count > 1 ? "one of the RPC workers" : "RPC worker");
            for (int i = 0; i < shimmy_rpc_count; i++) {
                fprintf(stderr, "%s %s", i ? "," : "", shimmy_rpc_names[i]);
            }
            fprintf(stderr, " (%s accepts connections again: restarted?)\\n",
                    shimmy_rpc_count > 1 ? "each" : "it");
            fflush(stderr);
            _exit(SHIMMY_RPC_LOST_EXIT);
        }
        fprintf(stderr, "shimmy: llama.cpp aborted (SIGABRT, exit status 134) while using "
                "RPC workers; each still accepts connections:");
        for (int i = 0; i < shimmy_rpc_count; i++) {
            fprintf(stderr, "%s %s", i ? "," : "", shimmy_rpc_names[i]);
        }
        fprintf(stderr, "\\n");
        fflush(stderr);
    }

    static void shimmy_rpc_watch(const char * endpoint) {
        shimmy_rpc_note(endpoint);
        ggml_set_abort_callback(shimmy_on_abort);
    }
    """
    ctypedef ggml_backend_reg_t (*shimmy_rpc_add_server_t)(const char * endpoint) noexcept nogil
    ctypedef void (*shimmy_rpc_start_server_t)(
        const char * endpoint, const char * cache_dir, size_t n_threads, size_t n_devices,
        ggml_backend_dev_t * devices) noexcept nogil
    int SHIMMY_RPC_LOST_EXIT
    void shimmy_rpc_watch(const char * endpoint) nogil


# endpoint -> its devices (ggml_backend_dev_t as integers), registered once per process
_rpc_servers = {}


cdef ggml_backend_reg_t _rpc_reg() except NULL:
    cdef ggml_backend_reg_t reg = ggml_backend_reg_by_name(b"RPC")
    if reg is NULL:
        raise LlamaError("llama.cpp's RPC backend (libggml-rpc.so) is not installed: "
                         "scripts/setup.sh builds it (scripts/rpc_backend.sh)")
    return reg


def rpc_available() -> bool:
    """Whether llama.cpp's RPC backend module is loaded."""
    return ggml_backend_reg_by_name(b"RPC") is not NULL


def load_rpc_backend(str path) -> bool:
    """Load libggml-rpc.so from ``path`` unless an RPC backend is loaded already."""
    if not rpc_available():
        ggml_backend_load(path.encode())
    return rpc_available()


def rpc_lost_exit_status() -> int:
    """The exit status of a process that lost an RPC worker while computing."""
    return SHIMMY_RPC_LOST_EXIT


def rpc_add_server(str endpoint) -> list:
    """Register a worker's devices with ggml, once per endpoint; returns them.

    This connects to the worker: ggml aborts the process if it does not answer, so
    check it first (``shimmy.engine.rpc.check_worker``).
    """
    cdef bytes name = endpoint.encode()
    cdef const char * cname = name
    cdef shimmy_rpc_add_server_t add
    cdef ggml_backend_reg_t server
    if endpoint in _rpc_servers:
        return _rpc_servers[endpoint]
    add = <shimmy_rpc_add_server_t> ggml_backend_reg_get_proc_address(
        _rpc_reg(), b"ggml_backend_rpc_add_server")
    if add is NULL:
        raise LlamaError("this RPC backend has no ggml_backend_rpc_add_server")
    shimmy_rpc_watch(cname)
    with nogil:
        server = add(cname)
    if server is NULL:
        raise LlamaError(f"RPC worker {endpoint} offers no devices")
    ggml_backend_register(server)
    devices = [<uintptr_t> ggml_backend_reg_dev_get(server, i)
               for i in range(ggml_backend_reg_dev_count(server))]
    _rpc_servers[endpoint] = devices
    return devices


def rpc_device_facts(str endpoint) -> list:
    """Name, description and memory (free, total bytes) of a registered worker's devices."""
    cdef ggml_backend_dev_t device
    cdef size_t free = 0, total = 0
    facts = []
    for handle in _rpc_servers.get(endpoint, ()):
        device = <ggml_backend_dev_t> <uintptr_t> handle
        with nogil:
            ggml_backend_dev_memory(device, &free, &total)
        facts.append({"endpoint": endpoint,
                      "name": ggml_backend_dev_name(device).decode("utf-8", "replace"),
                      "description":
                          ggml_backend_dev_description(device).decode("utf-8", "replace"),
                      "free_bytes": free, "total_bytes": total})
    return facts


cdef vector[ggml_backend_dev_t] _model_devices(list rpc_devices) except *:
    """The devices a model is given: its RPC devices, or, once RPC workers are registered
    in this process, the local accelerators only (llama.cpp would otherwise take every
    registered worker for every model). Ends with NULL."""
    cdef vector[ggml_backend_dev_t] devices
    cdef ggml_backend_dev_t device
    cdef ggml_dev_kind kind
    if rpc_devices:
        for handle in rpc_devices:
            devices.push_back(<ggml_backend_dev_t> <uintptr_t> handle)
    else:
        for i in range(ggml_backend_dev_count()):
            device = ggml_backend_dev_get(i)
            kind = ggml_backend_dev_type(device)
            if kind == GGML_BACKEND_DEVICE_TYPE_CPU or kind == GGML_BACKEND_DEVICE_TYPE_ACCEL:
                continue
            if strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(device)), "RPC") != 0:
                devices.push_back(device)
    devices.push_back(NULL)
    return devices


def local_gpu_count() -> int:
    """GPUs of this machine that ggml loaded (RPC workers' devices not counted)."""
    return _model_devices([]).size() - 1


def rpc_serve(str endpoint, int n_threads, str cache_dir=None) -> None:
    """Serve this machine's CPU to RPC clients at ``endpoint``; blocks for good, except
    that it returns at once when the address cannot be bound (ggml prints why)."""
    cdef bytes name = endpoint.encode()
    cdef bytes cache = cache_dir.encode() if cache_dir else b""
    cdef const char * cname = name
    cdef const char * ccache = <const char *> cache if cache_dir else NULL
    cdef ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    cdef shimmy_rpc_start_server_t start = <shimmy_rpc_start_server_t> \
        ggml_backend_reg_get_proc_address(_rpc_reg(), b"ggml_backend_rpc_start_server")
    if start is NULL or cpu is NULL:
        raise LlamaError("no RPC server function or no CPU device in this llama.cpp")
    with nogil:
        start(cname, ccache, n_threads, 1, &cpu)
