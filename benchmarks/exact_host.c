/* An exact-timing OpenAI-compatible streaming host for the client-ceiling benchmark (bench_ceiling.py).
 *
 * One thread, one epoll loop, keep-alive HTTP/1.1. `POST /v1/chat/completions` answers with the
 * headers and an empty role chunk at once, then token k (k = 0..n-1) at exactly
 * receive + ttft + k * itl (from the request's arrival, so lateness never accumulates); the last
 * token carries the finish chunk, usage and [DONE] in the same write. n = the request's max_tokens
 * (else --tokens). `GET /v1/models` lists one model; anything else is 404.
 *
 * Truth: one line per streamed request in --truth, written as it ends:
 *   recv_unix_ns first_token_sent_unix_ns last_token_sent_unix_ns tokens
 * (CLOCK_REALTIME: the kernel's receive stamp of the request's last segment, SO_TIMESTAMPNS, so a
 * host descheduled on a shared CPU still knows when the request came; and the time right before
 * each write), so the benchmark compares the client's stamps with what the host really did. The
 * schedule runs from that kernel stamp too.
 *
 * Build: gcc -O2 -o exact_host exact_host.c   Run: exact_host PORT TTFT_MS ITL_MS TOKENS TRUTH_FILE
 * (PORT 0: any free port; the chosen one is printed as "PORT n").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXC 65536
#define INBUF 16384

typedef struct {
    int fd, used, streaming, k, n, gen;
    char in[INBUF];
    char *out; size_t out_len, out_cap;  /* bytes the kernel did not take yet */
    int64_t recv_mono, recv_unix, first_unix, last_unix, rx_unix;
    unsigned long id;
} conn_t;

typedef struct { int64_t due; int fd, gen; } timer_t_;

static conn_t *conns[MAXC];
static timer_t_ *heap; static size_t heap_n, heap_cap;
static int64_t ttft_ns, itl_ns; static int def_tokens;
static FILE *truth; static int ep; static volatile sig_atomic_t stop;
static unsigned long next_id; static int next_gen;

static int64_t now_ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec; }

static void heap_push(int64_t due, int fd, int gen) {
    if (heap_n == heap_cap) { heap_cap = heap_cap ? heap_cap * 2 : 1024; heap = realloc(heap, heap_cap * sizeof *heap); }
    size_t i = heap_n++;
    while (i && heap[(i - 1) / 2].due > due) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
    heap[i] = (timer_t_){due, fd, gen};
}
static timer_t_ heap_pop(void) {
    timer_t_ top = heap[0], last = heap[--heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= heap_n) break;
        if (c + 1 < heap_n && heap[c + 1].due < heap[c].due) c++;
        if (heap[c].due >= last.due) break;
        heap[i] = heap[c]; i = c;
    }
    if (heap_n) heap[i] = last;
    return top;
}

static void close_conn(conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->out); free(c);
}

/* Write now; what the kernel does not take waits for EPOLLOUT (never happens at these sizes). */
static int send_all(conn_t *c, const char *p, size_t len) {
    if (c->out_len == 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) return -1;
        if (w < 0) w = 0;
        p += w; len -= (size_t)w;
        if (!len) return 0;
    }
    if (c->out_len + len > c->out_cap) { c->out_cap = (c->out_len + len) * 2; c->out = realloc(c->out, c->out_cap); }
    memcpy(c->out + c->out_len, p, len); c->out_len += len;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static size_t chunk(char *dst, const char *payload, size_t len) {
    int h = sprintf(dst, "%zx\r\n", len);
    memcpy(dst + h, payload, len); memcpy(dst + h + len, "\r\n", 2);
    return (size_t)h + len + 2;
}

static size_t event(char *dst, conn_t *c, const char *choice_or_usage, int usage) {
    char ev[512];
    int n = usage ? snprintf(ev, sizeof ev, "data: {\"id\":\"chatcmpl-%lu\",\"object\":\"chat.completion.chunk\",\"model\":\"exact\",\"choices\":[],\"usage\":%s}\n\n", c->id, choice_or_usage)
                  : snprintf(ev, sizeof ev, "data: {\"id\":\"chatcmpl-%lu\",\"object\":\"chat.completion.chunk\",\"model\":\"exact\",\"choices\":[%s]}\n\n", c->id, choice_or_usage);
    return chunk(dst, ev, (size_t)n);
}

static void token(conn_t *c) {
    char buf[4096]; size_t len = 0;
    len += event(buf, c, "{\"index\":0,\"delta\":{\"content\":\" tok\"},\"finish_reason\":null}", 0);
    int64_t t = now_ns(CLOCK_REALTIME);
    if (c->k == 0) c->first_unix = t;
    c->last_unix = t;
    c->k++;
    if (c->k >= c->n) {
        char usage[160];
        snprintf(usage, sizeof usage, "{\"prompt_tokens\":8,\"completion_tokens\":%d,\"total_tokens\":%d}", c->n, c->n + 8);
        len += event(buf + len, c, "{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}", 0);
        len += event(buf + len, c, usage, 1);
        len += chunk(buf + len, "data: [DONE]\n\n", 14);
        memcpy(buf + len, "0\r\n\r\n", 5); len += 5;
        c->streaming = 0;
        fprintf(truth, "%lld %lld %lld %d\n", (long long)c->recv_unix, (long long)c->first_unix, (long long)c->last_unix, c->n);
    }
    if (send_all(c, buf, len) < 0) { close_conn(c); return; }
    if (c->streaming) heap_push(c->recv_mono + ttft_ns + (int64_t)c->k * itl_ns, c->fd, c->gen);
}

static int handle_request(conn_t *c, char *req, size_t head_len, size_t body_len) {
    if (!strncmp(req, "POST /v1/chat/completions ", 26)) {
        int64_t mono = now_ns(CLOCK_MONOTONIC), real = now_ns(CLOCK_REALTIME);
        c->recv_unix = c->rx_unix && c->rx_unix <= real ? c->rx_unix : real;
        c->recv_mono = mono - (real - c->recv_unix);
        char *body = req + head_len, save = body[body_len];
        body[body_len] = 0;
        char *mt = strstr(body, "\"max_tokens\":");
        c->n = mt ? atoi(mt + 13) : def_tokens;
        body[body_len] = save;
        if (c->n <= 0) c->n = def_tokens;
        c->k = 0; c->streaming = 1; c->gen = ++next_gen; c->id = ++next_id;
        char buf[2048];
        size_t len = (size_t)sprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                                          "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nServer: exact-host\r\n\r\n");
        len += event(buf + len, c, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}", 0);
        if (send_all(c, buf, len) < 0) return -1;
        heap_push(c->recv_mono + ttft_ns, c->fd, c->gen);
        return 0;
    }
    const char *body = "{\"error\":{\"message\":\"no route\"}}", *status = "404 Not Found";
    if (!strncmp(req, "GET /v1/models ", 15)) { body = "{\"object\":\"list\",\"data\":[{\"id\":\"exact\",\"object\":\"model\",\"owned_by\":\"exact-host\"}]}"; status = "200 OK"; }
    char buf[1024];
    int len = snprintf(buf, sizeof buf, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", status, strlen(body), body);
    return send_all(c, buf, (size_t)len);
}

static void on_readable(conn_t *c) {
    for (;;) {
        char ctl[CMSG_SPACE(sizeof(struct timespec))];
        struct iovec iov = {c->in + c->used, INBUF - 1 - (size_t)c->used};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
        ssize_t r = recvmsg(c->fd, &mh, 0);
        for (struct cmsghdr *cm = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts; memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                c->rx_unix = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            }
        if (r == 0 || (r < 0 && errno != EAGAIN)) { close_conn(c); return; }
        if (r < 0) return;
        c->used += (int)r;
        for (;;) {
            c->in[c->used] = 0;
            char *end = strstr(c->in, "\r\n\r\n");
            if (!end) break;
            size_t head = (size_t)(end - c->in) + 4, body = 0;
            char *cl = strcasestr(c->in, "\r\ncontent-length:");
            if (cl && cl < end) body = (size_t)atol(cl + 17);
            if (head + body > (size_t)c->used) break;
            if (c->streaming) { close_conn(c); return; } /* no pipelining over a stream */
            if (handle_request(c, c->in, head, body) < 0) { close_conn(c); return; }
            memmove(c->in, c->in + head + body, (size_t)c->used - head - body);
            c->used -= (int)(head + body);
        }
        if (c->used >= INBUF - 1) { close_conn(c); return; }
    }
}

static void on_stop(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s PORT TTFT_MS ITL_MS TOKENS TRUTH_FILE\n", argv[0]); return 2; }
    ttft_ns = (int64_t)(atof(argv[2]) * 1e6); itl_ns = (int64_t)(atof(argv[3]) * 1e6); def_tokens = atoi(argv[4]);
    truth = fopen(argv[5], "w");
    if (!truth) { perror("truth file"); return 2; }
    prctl(PR_SET_TIMERSLACK, 1UL);  /* wake on time, not up to 50 us late */
    signal(SIGTERM, on_stop); signal(SIGINT, on_stop); signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 2; }
    socklen_t al = sizeof a; getsockname(ls, (struct sockaddr *)&a, &al);
    printf("PORT %d\n", ntohs(a.sin_port)); fflush(stdout);
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    int64_t next_flush = now_ns(CLOCK_MONOTONIC) + 1000000000LL;
    while (!stop) {
        struct timespec to = {0, 200000000}, *top = &to;
        if (heap_n) {
            int64_t wait = heap[0].due - now_ns(CLOCK_MONOTONIC);
            if (wait < 0) wait = 0;
            if (wait < 200000000) { to.tv_sec = 0; to.tv_nsec = wait; }
        }
        int n = epoll_pwait2(ep, evs, 512, top, NULL);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int cfd;
                while ((cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (cfd >= MAXC) { close(cfd); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    setsockopt(cfd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
                    conn_t *c = calloc(1, sizeof *c); c->fd = cfd; conns[cfd] = c;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                }
                continue;
            }
            conn_t *c = conns[fd];
            if (!c) continue;
            if (evs[i].events & EPOLLOUT && c->out_len) {
                ssize_t w = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
                if (w > 0) { memmove(c->out, c->out + w, c->out_len - (size_t)w); c->out_len -= (size_t)w; }
                if (!c->out_len) { struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd}; epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce); }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
        int64_t now = now_ns(CLOCK_MONOTONIC);
        while (heap_n && heap[0].due <= now) {
            timer_t_ t = heap_pop();
            conn_t *c = conns[t.fd];
            if (c && c->gen == t.gen && c->streaming) token(c);
        }
        if (now >= next_flush) { fflush(truth); next_flush = now + 1000000000LL; }
    }
    fclose(truth);
    return 0;
}
