/*
 * The romana CNI plugin as installed on nodes (`romana`, `romana-ipam`): a forwarder to
 * romana-agent, built statically (`make plugin`) so that it needs nothing of the node: no
 * Python, no shared library, no program loader. It behaves exactly as romana/cni/shim.py,
 * the protocol's reference implementation (tests/test_cni_plugin.py compares the two byte
 * for byte): change both together.
 *
 * Wire format, one request per connection, each direction ending at EOF:
 *     request   "ROMANA-CNI/1\0" MODE "\0" ("CNI_NAME=value\0")* "\0" STDIN
 *     response  EXIT_CODE "\n" STDOUT
 * MODE is "ipam" when this file runs as `romana-ipam`, else "full". Answered here, without
 * the agent: VERSION, no CNI_COMMAND (code 4), a configuration over 1 MiB (code 7), and an
 * unreachable agent (code 11, 50 for STATUS) once `agent_wait_seconds` have passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef ROMANA_VERSION
#define ROMANA_VERSION "unknown"
#endif

#define DEFAULT_SOCKET "/run/romana/cni.sock"
#define LATEST "1.1.0"
#define MAX_CONFIG (1 << 20)    /* a network configuration, prevResult included, is KiBs */
#define TIMEOUT_SECONDS 55      /* per send or receive; runtimes give a call minutes */
#define DEFAULT_AGENT_WAIT 60   /* seconds to wait for a restarting agent */
#define MAX_AGENT_WAIT 600      /* config.py refuses more; a larger value means the default */
#define FIRST_RETRY_MS 50
#define LAST_RETRY_MS 1000
#define PATH_TOO_LONG (-1)      /* not an errno: Python's socket module says it in words */
enum { INVALID_ENV = 4, INVALID_CONFIG = 7, TRY_AGAIN_LATER = 11, NOT_AVAILABLE = 50 };

/* romana.wire.CNI_VERSIONS; a test checks they agree. */
static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define N_SUPPORTED (sizeof SUPPORTED / sizeof *SUPPORTED)

extern char **environ;

typedef struct { /* bytes that may hold NULs; always followed by one more NUL */
    char *data;
    size_t len, cap;
} Buf;

static void put(Buf *b, const void *bytes, size_t n) {
    if (b->data == NULL || b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) _exit(1); /* out of memory: nothing sensible can be said */
        b->data = grown, b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put_str(Buf *b, const char *text) { put(b, text, strlen(text)); }

static void read_all(int fd, Buf *b) {
    char chunk[65536];
    ssize_t n;
    put(b, "", 0);
    while ((n = read(fd, chunk, sizeof chunk)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        put(b, chunk, (size_t)n);
    }
}

static void write_out(const Buf *b) {
    for (size_t done = 0; done < b->len;) {
        ssize_t n = write(1, b->data + done, b->len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        done += (size_t)n;
    }
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

static size_t skip_space(const Buf *c, size_t i) {
    while (i < c->len && is_space(c->data[i])) i++;
    return i;
}

/* Where the value of the first `"key":` starts (blanks skipped), or -1. A `"key"` that no
 * colon follows is a string value, not the key: look further. */
static long field_value(const Buf *c, const char *key) {
    char quoted[64];
    size_t qlen = (size_t)snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *at = c->data, *end = c->data + c->len;
    while ((at = memmem(at, (size_t)(end - at), quoted, qlen)) != NULL) {
        size_t i = skip_space(c, (size_t)(at - c->data) + qlen);
        if (i < c->len && c->data[i] == ':') return (long)skip_space(c, i + 1);
        at++;
    }
    return -1;
}

static int hex4(const Buf *c, size_t i, unsigned *value) {
    *value = 0;
    for (size_t k = i; k < i + 4; k++) {
        char h = k < c->len ? c->data[k] : 0;
        int digit = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
        if (digit < 0) return 0;
        *value = *value * 16 + (unsigned)digit;
    }
    return 1;
}

/* UTF-8 of a code point; a lone surrogate too (Python's "surrogatepass"). */
static void put_utf8(Buf *out, unsigned cp) {
    static const unsigned char lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
    unsigned char u[4];
    size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (size_t k = n - 1; k > 0; k--) u[k] = (unsigned char)(0x80 | (cp & 0x3F)), cp >>= 6;
    u[0] = (unsigned char)(lead[n] | cp);
    put(out, u, n);
}

static int simple_escape(char ch, char *decoded) {
    switch (ch) {
    case '"': case '\\': case '/': *decoded = ch; return 1;
    case 'b': *decoded = '\b'; return 1;
    case 'f': *decoded = '\f'; return 1;
    case 'n': *decoded = '\n'; return 1;
    case 'r': *decoded = '\r'; return 1;
    case 't': *decoded = '\t'; return 1;
    default: return 0;
    }
}

/* The string value of the first `"key":`, found by a text search (the runtime's config has
 * it once; no JSON parser needed), JSON escapes decoded. 0: absent, not a string, or bad. */
static int string_field(const Buf *c, const char *key, Buf *out) {
    long at = field_value(c, key);
    if (at < 0 || (size_t)at >= c->len || c->data[at] != '"') return 0;
    put(out, "", 0);
    for (size_t i = (size_t)at + 1; i < c->len; i++) {
        char ch = c->data[i], decoded;
        unsigned cp, low;
        if (ch == '"') return 1;
        if (ch != '\\') {
            put(out, &ch, 1);
        } else if (++i < c->len && simple_escape(c->data[i], &decoded)) {
            put(out, &decoded, 1);
        } else if (i < c->len && c->data[i] == 'u' && hex4(c, i + 1, &cp)) {
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 2 < c->len && c->data[i + 1] == '\\' &&
                c->data[i + 2] == 'u' && hex4(c, i + 3, &low) && low >= 0xDC00 && low < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                i += 6;
            }
            put_utf8(out, cp);
        } else {
            return 0;
        }
    }
    return 0; /* unterminated */
}

/* `"key": N`, N a plain integer from 0 to `high`; anything else gives `fallback`. */
static int integer_field(const Buf *c, const char *key, int fallback, int high) {
    long at = field_value(c, key);
    if (at < 0) return fallback;
    size_t i = (size_t)at;
    long value = 0;
    while (i < c->len && c->data[i] >= '0' && c->data[i] <= '9' && value <= high)
        value = value * 10 + (c->data[i++] - '0');
    int more = i < c->len && (c->data[i] == '.' || c->data[i] == 'e' || c->data[i] == 'E' ||
                              (c->data[i] >= '0' && c->data[i] <= '9'));
    return i == (size_t)at || value > high || more ? fallback : (int)value;
}

/* A JSON string: `"`, `\` and control characters escaped; invalid UTF-8 becomes U+FFFD, one
 * per maximal invalid subpart, as Python's bytes.decode("utf-8", "replace") does. */
static void put_quoted(Buf *out, const Buf *text) {
    const unsigned char *s = (const unsigned char *)text->data;
    size_t len = text->len;
    put(out, "\"", 1);
    for (size_t i = 0; i < len;) {
        unsigned char ch = s[i];
        if (ch == '"' || ch == '\\') {
            put(out, "\\", 1), put(out, &ch, 1), i++;
        } else if (ch < 0x20) {
            char escaped[8];
            snprintf(escaped, sizeof escaped, "\\u%04x", ch);
            put_str(out, escaped), i++;
        } else if (ch < 0x80) {
            put(out, &ch, 1), i++;
        } else {
            size_t need = ch >= 0xC2 && ch <= 0xDF   ? 2
                          : ch >= 0xE0 && ch <= 0xEF ? 3
                          : ch >= 0xF0 && ch <= 0xF4 ? 4
                                                     : 0;
            unsigned char low = ch == 0xE0 ? 0xA0 : ch == 0xF0 ? 0x90 : 0x80;
            unsigned char high = ch == 0xED ? 0x9F : ch == 0xF4 ? 0x8F : 0xBF;
            size_t k = 1;
            while (k < need && i + k < len && s[i + k] >= (k == 1 ? low : 0x80) &&
                   s[i + k] <= (k == 1 ? high : 0xBF))
                k++;
            if (need && k == need) put(out, s + i, need);
            else put_str(out, "\xEF\xBF\xBD");
            i += need ? k : 1;
        }
    }
    put(out, "\"", 1);
}

static Buf version; /* the configuration's cniVersion, echoed in error objects */

static int fail(int code, const Buf *msg, const Buf *details) {
    Buf out = {0};
    char number[32];
    put_str(&out, "{\"cniVersion\":");
    put_quoted(&out, &version);
    snprintf(number, sizeof number, ",\"code\":%d,\"msg\":", code);
    put_str(&out, number);
    put_quoted(&out, msg);
    put_str(&out, ",\"details\":");
    put_quoted(&out, details);
    put_str(&out, "}\n");
    write_out(&out);
    return 1;
}

static int fail_text(int code, const char *msg, const char *details) {
    Buf m = {0}, d = {0};
    put_str(&m, msg), put_str(&d, details);
    return fail(code, &m, &d);
}

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A connected socket, or -1 with errno set. A missing or refusing socket (the agent is
 * restarting or being upgraded) is tried again, 50 ms doubling to 1 s between tries,
 * until wait_seconds have passed. */
static int connect_agent(const Buf *path, int wait_seconds) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int abstract = path->len > 0 && path->data[0] == '\0';
    if (path->len > sizeof addr.sun_path - !abstract) { /* as Python: room for the NUL */
        errno = PATH_TOO_LONG;
        return -1;
    }
    memcpy(addr.sun_path, path->data, path->len);
    socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path->len);
    struct timeval timeout = {.tv_sec = TIMEOUT_SECONDS};
    long long deadline = now_ms() + (long long)wait_seconds * 1000, delay = FIRST_RETRY_MS;
    for (;;) {
        /* Non-blocking connect, as Python's with a timeout: a full backlog is EAGAIN now. */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&addr, addr_len) == 0) {
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
            return fd;
        }
        int error = errno;
        close(fd);
        long long left = deadline - now_ms();
        if ((error != ENOENT && error != ECONNREFUSED && error != EAGAIN) || left <= 0) {
            errno = error;
            return -1;
        }
        long long pause = delay < left ? delay : left;
        struct timespec nap = {.tv_sec = pause / 1000, .tv_nsec = (pause % 1000) * 1000000};
        while (nanosleep(&nap, &nap) != 0 && errno == EINTR) {}
        delay = delay * 2 < LAST_RETRY_MS ? delay * 2 : LAST_RETRY_MS;
    }
}

/* Send the request, close our half, read the whole answer; -1 with errno on failure. */
static int exchange(int fd, const Buf *request, Buf *reply) {
    for (size_t sent = 0; sent < request->len;) {
        ssize_t n = send(fd, request->data + sent, request->len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN ? (errno = ETIMEDOUT, -1) : -1;
        sent += (size_t)n;
    }
    if (shutdown(fd, SHUT_WR) != 0) return -1;
    char chunk[65536];
    put(reply, "", 0);
    for (;;) {
        ssize_t n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno == EAGAIN ? (errno = ETIMEDOUT, -1) : -1;
        if (n == 0) return 0;
        put(reply, chunk, (size_t)n);
    }
}

static const char *error_text(int error) { /* as Python's socket module words them */
    if (error == PATH_TOO_LONG) return "AF_UNIX path too long";
    if (error == ETIMEDOUT) return "timed out";
    return strerror(error);
}

static int is_supported(const Buf *v) {
    for (size_t i = 0; i < N_SUPPORTED; i++)
        if (strlen(SUPPORTED[i]) == v->len && memcmp(SUPPORTED[i], v->data, v->len) == 0) return 1;
    return 0;
}

static int run(const char *mode) {
    Buf config = {0}, path = {0}, request = {0}, reply = {0}, msg = {0}, details = {0};
    read_all(0, &config);
    const char *command = getenv("CNI_COMMAND");
    if (command == NULL) command = "";
    if (!string_field(&config, "cniVersion", &version) || version.len == 0) {
        version.len = 0;
        put_str(&version, LATEST);
    }
    if (strcmp(command, "VERSION") == 0) {
        Buf out = {0};
        put_str(&out, "{\"cniVersion\":\"");
        put_str(&out, is_supported(&version) ? version.data : LATEST);
        put_str(&out, "\",\"supportedVersions\":[");
        for (size_t i = 0; i < N_SUPPORTED; i++) {
            put_str(&out, i ? ",\"" : "\""), put_str(&out, SUPPORTED[i]), put_str(&out, "\"");
        }
        put_str(&out, "]}\n");
        write_out(&out);
        return 0;
    }
    if (!*command)
        return fail_text(INVALID_ENV, "CNI_COMMAND is not set",
                         "this program is a CNI plugin: a container runtime runs it");
    if (config.len > MAX_CONFIG) {
        char text[96];
        snprintf(text, sizeof text, "the network configuration is %zu bytes, over %d",
                 config.len, MAX_CONFIG);
        return fail_text(INVALID_CONFIG, text,
                         "a CNI network configuration is a small JSON document");
    }
    if (!string_field(&config, "agent_socket", &path) || path.len == 0) {
        path.len = 0;
        put_str(&path, DEFAULT_SOCKET);
    }
    int is_status = strcmp(command, "STATUS") == 0;
    /* STATUS asks whether the network is ready now: answer at once, never after a wait. */
    int wait = is_status ? 0
                         : integer_field(&config, "agent_wait_seconds", DEFAULT_AGENT_WAIT,
                                         MAX_AGENT_WAIT);
    put(&request, "ROMANA-CNI/1\0", 13);
    put(&request, mode, strlen(mode) + 1);
    for (char **entry = environ; *entry; entry++) {
        const char *equals = strchr(*entry, '=');
        if (equals == NULL || strncmp(*entry, "CNI_", 4) != 0) continue;
        int seen = 0; /* of a name given twice, Python's os.environ keeps the first */
        for (char **before = environ; before < entry && !seen; before++)
            seen = strncmp(*before, *entry, (size_t)(equals - *entry + 1)) == 0;
        if (!seen) put(&request, *entry, strlen(*entry) + 1);
    }
    put(&request, "", 1);
    put(&request, config.data, config.len);
    int unavailable = is_status ? NOT_AVAILABLE : TRY_AGAIN_LATER;
    int fd = connect_agent(&path, wait);
    if (fd < 0 || exchange(fd, &request, &reply) != 0) {
        put_str(&msg, "romana-agent is not reachable at "), put(&msg, path.data, path.len);
        put_str(&details, error_text(errno));
        put_str(&details, "; is romana-agent running with --cni-socket?");
        return fail(unavailable, &msg, &details);
    }
    char *newline = memchr(reply.data, '\n', reply.len);
    size_t digits = newline ? (size_t)(newline - reply.data) : reply.len;
    int code = 0;
    for (size_t i = 0; i < digits; i++) {
        if (reply.data[i] < '0' || reply.data[i] > '9') digits = 0;
        else code = (code * 10 + (reply.data[i] - '0')) & 0xFFFF; /* exit keeps 8 bits */
    }
    if (digits == 0) {
        put_str(&msg, "romana-agent closed the connection without an answer");
        put_str(&details, "socket "), put(&details, path.data, path.len);
        put_str(&details, "; the agent may have restarted: try again");
        return fail(unavailable, &msg, &details);
    }
    if (newline) {
        Buf out = {.data = newline + 1, .len = reply.len - digits - 1};
        write_out(&out);
    }
    return code & 0xFF;
}

int main(int argc, char **argv) {
    const char *slash = strrchr(argv[0], '/');
    const char *name = slash ? slash + 1 : argv[0];
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("%s %s\n", name, ROMANA_VERSION);
        return 0;
    }
    return run(strcmp(name, "romana-ipam") == 0 ? "ipam" : "full");
}
