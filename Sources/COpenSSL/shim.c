#include "ferry_openssl.h"
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ferry_ct_memcmp(const void *a, const void *b, size_t len) { return CRYPTO_memcmp(a, b, len); }
int ferry_random_bytes(unsigned char *buf, int len) { return RAND_bytes(buf, len); }

int ferry_hmac_sha256(const unsigned char *key, size_t keylen, const unsigned char *msg, size_t len, unsigned char out[32]) {
    unsigned int n = 32;
    return HMAC(EVP_sha256(), key, (int)keylen, msg, len, out, &n) != NULL && n == 32;
}

int ferry_sha256(const unsigned char *msg, size_t len, unsigned char out[32]) {
    return SHA256(msg, len, out) != NULL;
}

/// Formats "what: reason" with the first queued OpenSSL error, and clears the queue.
static void fail(char *err, size_t errlen, const char *what) {
    unsigned long e = ERR_get_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (err && errlen) snprintf(err, errlen, "%s%s%s", what, e ? ": " : "", reason);
}

// ---- TLS ---------------------------------------------------------------------------------
/* Client-side session cache (TLS 1.3 resumption, issue 14 item 6). A daemon that runs many
   small jobs to one peer would otherwise pay a full handshake (certificate chain verified,
   signatures made and checked) per job. Tickets the server sends are kept here, per cache
   key, and each is offered once (RFC 8446 C.4: a ticket is not reused). The key is chosen by
   the caller and names the peer exactly (the center name or address the server's certificate
   must carry, and the address dialled); the cache lives in one context, i.e. one set of
   credentials: a session is never offered to another peer or under other credentials. Every
   lookup is bounded (FERRY_SESS_KEYS keys, FERRY_SESS_PER_KEY tickets each), and a ticket is
   dropped once older than FERRY_SESS_SECONDS. A resumed session is still checked: the peer
   certificate it carries must name what the caller expects and still be within its dates. */
#define FERRY_SESS_KEYS 64
#define FERRY_SESS_PER_KEY 8
#define FERRY_SESS_SECONDS 300
#define FERRY_SESS_KEY_BYTES 256
struct sess_slot { char key[FERRY_SESS_KEY_BYTES]; SSL_SESSION *s[FERRY_SESS_PER_KEY]; int n; long long used; };
struct ferry_tls_ctx {
    SSL_CTX *ctx; int server;
    pthread_mutex_t mu;                        /* guards slots and the counters */
    struct sess_slot slots[FERRY_SESS_KEYS];
    long long full, resumed, clock;
};
/* closed_cleanly: the peer ended with close_notify (not a bare end of the stream). Ferry's
   own protocol frames its messages and needs no such proof; an HTTP answer that runs to the
   connection's end does (a cut answer would otherwise look complete). */
struct ferry_tls { SSL *ssl; int fd; pthread_mutex_t mu; ferry_tls_ctx *owner; char key[FERRY_SESS_KEY_BYTES]; int resumed; int closed_cleanly; };

void ferry_tls_free(ferry_tls *t);

static int session_fresh(SSL_SESSION *s) {
    long long age = (long long)time(NULL) - (long long)SSL_SESSION_get_time(s);
    long life = SSL_SESSION_get_timeout(s);
    if (life > FERRY_SESS_SECONDS) life = FERRY_SESS_SECONDS;
    return SSL_SESSION_is_resumable(s) && age >= 0 && age < life;
}

/* The slot of `key`, or (when `make`) a free or least recently used one taken over for it.
   Called with c->mu held. */
static struct sess_slot *session_slot(ferry_tls_ctx *c, const char *key, int make) {
    struct sess_slot *victim = NULL;
    for (int i = 0; i < FERRY_SESS_KEYS; i++) {
        struct sess_slot *e = &c->slots[i];
        if (e->key[0] && strcmp(e->key, key) == 0) { e->used = ++c->clock; return e; }
        if (!victim || (!e->key[0] && victim->key[0]) || (e->key[0] && victim->key[0] && e->used < victim->used)) victim = e;
    }
    if (!make || !victim) return NULL;
    for (int j = 0; j < victim->n; j++) SSL_SESSION_free(victim->s[j]);
    victim->n = 0;
    snprintf(victim->key, sizeof victim->key, "%s", key);
    victim->used = ++c->clock;
    return victim;
}

/* OpenSSL calls this on the client when a ticket arrives (inside SSL_read, after the
   handshake). A copy is kept: the session OpenSSL passes stays attached to the connection,
   and a connection freed without close_notify (as ours are: the protocol ends with its own
   END exchange) marks its attached session unresumable. Returns 0: OpenSSL keeps its own
   reference. */
static int new_session(SSL *ssl, SSL_SESSION *sess) {
    ferry_tls *t = SSL_get_app_data(ssl);
    ferry_tls_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (!t || !c || !t->key[0] || !SSL_SESSION_is_resumable(sess)) return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (!copy) return 0;
    pthread_mutex_lock(&c->mu);
    struct sess_slot *e = session_slot(c, t->key, 1);
    if (e->n == FERRY_SESS_PER_KEY) {          // full: the oldest ticket goes
        SSL_SESSION_free(e->s[0]);
        memmove(&e->s[0], &e->s[1], sizeof e->s[0] * (FERRY_SESS_PER_KEY - 1));
        e->n--;
    }
    e->s[e->n++] = copy;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Takes the newest fresh ticket of `key` out of the cache (NULL: none); stale ones are freed. */
static SSL_SESSION *session_take(ferry_tls_ctx *c, const char *key) {
    SSL_SESSION *found = NULL;
    pthread_mutex_lock(&c->mu);
    struct sess_slot *e = session_slot(c, key, 0);
    while (e && e->n > 0 && !found) {
        SSL_SESSION *s = e->s[--e->n];
        if (session_fresh(s)) found = s; else SSL_SESSION_free(s);
    }
    pthread_mutex_unlock(&c->mu);
    return found;
}

/* A resumed session's peer certificate (restored from the ticket, not sent again) must still
   be what the caller expects: within its dates, verified when first seen, and (client) naming
   `expected`. The cache key already ties a ticket to one peer; this holds even if it did not. */
static int resumed_peer_ok(SSL *ssl, int server, const char *expected, char *err, size_t errlen) {
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer) {
        if (server) return 1;   // a client without a certificate (a user with a token)
        snprintf(err, errlen, "TLS handshake failed: a resumed session without the server's certificate");
        return 0;
    }
    if (SSL_get_verify_result(ssl) != X509_V_OK) {
        snprintf(err, errlen, "TLS handshake failed: a resumed session of an unverified certificate");
        return 0;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(peer)) <= 0 || X509_cmp_current_time(X509_get0_notBefore(peer)) >= 0) {
        snprintf(err, errlen, "TLS handshake failed: the peer's certificate is no longer valid");
        return 0;
    }
    if (!server && expected && *expected) {
        int ip = X509_check_ip_asc(peer, expected, 0);   // -2: `expected` is not an address
        if (!(ip == 1 || (ip == -2 && X509_check_host(peer, expected, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1))) {
            snprintf(err, errlen, "TLS handshake failed: a resumed session's certificate does not name '%s'", expected);
            return 0;
        }
    }
    return 1;
}

ferry_tls_ctx *ferry_tls_ctx_new(int server, const char *cert, const char *key, const char *ca, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) { fail(err, errlen, "cannot create a TLS context"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);   // a server keeps no sessions: its tickets are stateless
    SSL_CTX_set_num_tickets(ctx, 0);   // none unless resumption is set up below
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (cert && *cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            char what[600]; snprintf(what, sizeof what, "cannot load certificate '%s'", cert);
            fail(err, errlen, what); SSL_CTX_free(ctx); return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            char what[600]; snprintf(what, sizeof what, "cannot load key '%s'", key);
            fail(err, errlen, what); SSL_CTX_free(ctx); return NULL;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            fail(err, errlen, "the key does not match the certificate"); SSL_CTX_free(ctx); return NULL;
        }
    } else if (server) {
        snprintf(err, errlen, "a server needs a certificate and key"); SSL_CTX_free(ctx); return NULL;
    }
    if (!ca || !*ca || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        char what[600]; snprintf(what, sizeof what, "cannot load CA certificate '%s'", ca ? ca : "");
        fail(err, errlen, what); SSL_CTX_free(ctx); return NULL;
    }
    // Server: a client certificate is optional (users authenticate with tokens), but one that
    // is sent must verify. Client: the server must present a valid one.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT), NULL);
    SSL_CTX_set_verify_depth(ctx, 4);
    ferry_tls_ctx *c = calloc(1, sizeof *c);
    c->ctx = ctx;
    c->server = server;
    pthread_mutex_init(&c->mu, NULL);
    SSL_CTX_set_app_data(ctx, c);
    // Resumption: the server issues stateless tickets (encrypted with a key of this process
    // only: a restart invalidates them, and the client then falls back to a full handshake);
    // the client keeps them per peer (see the cache above). A resumed handshake still runs a
    // fresh (EC)DHE exchange (psk_dhe_ke; OpenSSL never offers psk_ke unless told to), so
    // each connection has its own keys and exported data keys; no early data.
    SSL_CTX_set_timeout(ctx, FERRY_SESS_SECONDS);
    if (server) {
        // Required with client certificates: the ticket carries the client's verified
        // certificate, and it is accepted only by the context that issued it.
        static const unsigned char sid[] = "ferry-transfer-1";
        SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
        SSL_CTX_set_num_tickets(ctx, 2);   // written inside SSL_accept: reads still never write
        SSL_CTX_set_max_early_data(ctx, 0);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session);
    }
    return c;
}

void ferry_tls_ctx_free(ferry_tls_ctx *c) {
    if (!c) return;
    for (int i = 0; i < FERRY_SESS_KEYS; i++)
        for (int j = 0; j < c->slots[i].n; j++) SSL_SESSION_free(c->slots[i].s[j]);
    pthread_mutex_destroy(&c->mu);
    SSL_CTX_free(c->ctx);
    free(c);
}

void ferry_tls_ctx_counts(ferry_tls_ctx *c, long long *full, long long *resumed) {
    pthread_mutex_lock(&c->mu);
    *full = c->full; *resumed = c->resumed;
    pthread_mutex_unlock(&c->mu);
}

void ferry_tls_ctx_forget(ferry_tls_ctx *c) {
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < FERRY_SESS_KEYS; i++) {
        for (int j = 0; j < c->slots[i].n; j++) SSL_SESSION_free(c->slots[i].s[j]);
        c->slots[i].n = 0; c->slots[i].key[0] = 0;
    }
    pthread_mutex_unlock(&c->mu);
}

static long long now_ms(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/// Waits for the socket; 1 ready, 0 timeout, -1 error.
static int wait_fd(int fd, short events, long long deadline) {
    for (int spins = 0; spins < 1000000; spins++) {
        long long left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -1;
    }
    return 0;
}

static void verify_fail(SSL *ssl, char *err, size_t errlen, const char *what) {
    long v = SSL_get_verify_result(ssl);
    unsigned long e = ERR_peek_error();
    if (v != X509_V_OK) {
        snprintf(err, errlen, "%s: certificate verification failed: %s", what, X509_verify_cert_error_string(v));
        ERR_clear_error();
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        /* OpenSSL 3 reports an end of stream in the middle of the handshake as an SSL error,
           not as SSL_ERROR_SYSCALL with an empty queue: the same "peer closed" for Ferry. */
        snprintf(err, errlen, "%s: the peer closed the connection", what);
        ERR_clear_error();
#endif
#ifdef ERR_SYSTEM_ERROR
    } else if (e && ERR_SYSTEM_ERROR(e)) {
        /* A socket error (a reset: the peer's process killed) queued by OpenSSL 3. */
        snprintf(err, errlen, "TLS handshake: %s", strerror(ERR_GET_REASON(e)));
        ERR_clear_error();
#endif
    } else if (e) {
        fail(err, errlen, what);
    } else {
        snprintf(err, errlen, "%s: the peer closed the connection", what);
    }
}

ferry_tls *ferry_tls_handshake(ferry_tls_ctx *c, int fd, int server, const char *expected, const char *session_key, int timeout_ms, char *err, size_t errlen) {
    ERR_clear_error();
    SSL *ssl = SSL_new(c->ctx);
    if (!ssl) { fail(err, errlen, "cannot create a TLS session"); return NULL; }
    ferry_tls *t = calloc(1, sizeof *t);
    if (!t) { SSL_free(ssl); snprintf(err, errlen, "out of memory"); return NULL; }
    t->ssl = ssl; t->fd = fd; t->owner = c;
    pthread_mutex_init(&t->mu, NULL);
    SSL_set_app_data(ssl, t);   // the new-ticket callback finds the cache key here
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    SSL_set_fd(ssl, fd);
    if (!server && expected && *expected) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = X509_VERIFY_PARAM_set1_ip_asc(param, expected);
        if (!ok) {
            ok = X509_VERIFY_PARAM_set1_host(param, expected, 0);
            SSL_set_tlsext_host_name(ssl, expected);
        }
        if (!ok) { snprintf(err, errlen, "bad center name '%s'", expected); ferry_tls_free(t); return NULL; }
    }
    // A client offers a ticket of this exact key (peer and address) when it holds one; without
    // a key (or an expected name to check it by) it never resumes nor keeps tickets.
    if (!server && session_key && *session_key && expected && *expected && strlen(session_key) < sizeof t->key) {
        snprintf(t->key, sizeof t->key, "%s", session_key);
        SSL_SESSION *sess = session_take(c, t->key);
        if (sess) { SSL_set_session(ssl, sess); SSL_SESSION_free(sess); }
    }
    long long deadline = now_ms() + timeout_ms;
    for (int rounds = 0; rounds < 100000; rounds++) {
        int r = server ? SSL_accept(ssl) : SSL_connect(ssl);
        if (r == 1) {
            t->resumed = SSL_session_reused(ssl) == 1;
            if (t->resumed && !resumed_peer_ok(ssl, server, expected, err, errlen)) { ferry_tls_free(t); return NULL; }
            pthread_mutex_lock(&c->mu);
            if (t->resumed) c->resumed++; else c->full++;
            pthread_mutex_unlock(&c->mu);
            return t;
        }
        int e = SSL_get_error(ssl, r);
        int w = 0;
        if (e == SSL_ERROR_WANT_READ) w = wait_fd(fd, POLLIN, deadline);
        else if (e == SSL_ERROR_WANT_WRITE) w = wait_fd(fd, POLLOUT, deadline);
        else { verify_fail(ssl, err, errlen, "TLS handshake failed"); ferry_tls_free(t); return NULL; }
        if (w == 0) { snprintf(err, errlen, "TLS handshake timed out after %d ms", timeout_ms); ferry_tls_free(t); return NULL; }
        if (w < 0) { snprintf(err, errlen, "TLS handshake: %s", strerror(errno)); ferry_tls_free(t); return NULL; }
    }
    snprintf(err, errlen, "TLS handshake did not finish"); ferry_tls_free(t); return NULL;
}

int ferry_tls_resumed(ferry_tls *t) { return t->resumed; }

long ferry_tls_read(ferry_tls *t, void *buf, size_t len, int timeout_ms, char *err, size_t errlen) {
    long long deadline = now_ms() + timeout_ms;
    for (int rounds = 0; rounds < 1000000; rounds++) {
        pthread_mutex_lock(&t->mu);
        ERR_clear_error();
        errno = 0;  // an EAGAIN left by an earlier would-block read must not pass for an end
        size_t got = 0;
        int r = SSL_read_ex(t->ssl, buf, len, &got);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_ZERO_RETURN) {
            unsigned long q = ERR_peek_error();
            long out = -1;
            if (e == SSL_ERROR_SYSCALL && q == 0) {
                if (errno == 0) { pthread_mutex_unlock(&t->mu); return 0; }  // EOF without close_notify
                snprintf(err, errlen, "%s", strerror(errno));
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
            } else if (ERR_GET_LIB(q) == ERR_LIB_SSL && ERR_GET_REASON(q) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                /* OpenSSL 3's name for the same end of stream without close_notify (a peer
                   killed, or one that never sends close_notify, as Ferry's sides do not): an
                   end of stream; the protocol's frames and END exchange tell a cut session. */
                ERR_clear_error();
                pthread_mutex_unlock(&t->mu);
                return 0;
#endif
#ifdef ERR_SYSTEM_ERROR
            } else if (ERR_SYSTEM_ERROR(q)) {
                snprintf(err, errlen, "%s", strerror(ERR_GET_REASON(q)));  // a reset, queued by OpenSSL 3
                ERR_clear_error();
#endif
            } else {
                /* A received alert (reason = SSL_AD_REASON_OFFSET + the alert's code) about
                   certificates or access is the peer's verdict on who we are, e.g. the client
                   certificate it refused right after a TLS 1.3 handshake: told apart (-3) from
                   a broken link. Other alerts (a bad record MAC) stay link trouble. */
                if (ERR_GET_LIB(q) == ERR_LIB_SSL && ERR_GET_REASON(q) > SSL_AD_REASON_OFFSET) {
                    switch (ERR_GET_REASON(q) - SSL_AD_REASON_OFFSET) {
                    case SSL_AD_HANDSHAKE_FAILURE: case SSL_AD_BAD_CERTIFICATE: case SSL_AD_UNSUPPORTED_CERTIFICATE:
                    case SSL_AD_CERTIFICATE_REVOKED: case SSL_AD_CERTIFICATE_EXPIRED: case SSL_AD_CERTIFICATE_UNKNOWN:
                    case SSL_AD_UNKNOWN_CA: case SSL_AD_ACCESS_DENIED: case SSL_AD_INSUFFICIENT_SECURITY:
                    case SSL_AD_CERTIFICATE_REQUIRED:
                        out = -3; break;
                    default: break;
                    }
                }
                fail(err, errlen, "TLS read failed");
            }
            pthread_mutex_unlock(&t->mu);
            return out;
        }
        if (e == SSL_ERROR_ZERO_RETURN) t->closed_cleanly = 1;
        pthread_mutex_unlock(&t->mu);
        if (e == SSL_ERROR_NONE) return (long)got;
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        int w = wait_fd(t->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
        if (w == 0) return -2;
        if (w < 0) { snprintf(err, errlen, "%s", strerror(errno)); return -1; }
    }
    return -2;
}

int ferry_tls_closed_cleanly(ferry_tls *t) {
    pthread_mutex_lock(&t->mu);
    int c = t->closed_cleanly;
    pthread_mutex_unlock(&t->mu);
    return c;
}

int ferry_tls_shutdown(ferry_tls *t, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    for (int rounds = 0; rounds < 1000; rounds++) {
        pthread_mutex_lock(&t->mu);
        ERR_clear_error();
        int r = SSL_shutdown(t->ssl);  // sends close_notify; does not wait for the peer's
        int e = r >= 0 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        ERR_clear_error();
        pthread_mutex_unlock(&t->mu);
        if (e == SSL_ERROR_NONE) return 1;
        if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) return -1;
        if (wait_fd(t->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline) <= 0) return -1;
    }
    return -1;
}

int ferry_tls_write(ferry_tls *t, const void *buf, size_t len, int timeout_ms, char *err, size_t errlen) {
    long long deadline = now_ms() + timeout_ms;
    size_t done = 0;
    for (int rounds = 0; rounds < 1000000 && done < len; rounds++) {
        pthread_mutex_lock(&t->mu);
        ERR_clear_error();
        size_t n = 0;
        int r = SSL_write_ex(t->ssl, (const char *)buf + done, len - done, &n);
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) snprintf(err, errlen, "%s", errno ? strerror(errno) : "connection closed");
            else fail(err, errlen, "TLS write failed");
            pthread_mutex_unlock(&t->mu);
            return -1;
        }
        pthread_mutex_unlock(&t->mu);
        if (e == SSL_ERROR_NONE) { done += n; continue; }
        int w = wait_fd(t->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
        if (w == 0) return -2;
        if (w < 0) { snprintf(err, errlen, "%s", strerror(errno)); return -1; }
    }
    return done == len ? 1 : -2;
}

int ferry_tls_export(ferry_tls *t, const char *label, unsigned char *out, size_t len) {
    pthread_mutex_lock(&t->mu);
    int r = SSL_export_keying_material(t->ssl, out, len, label, strlen(label), NULL, 0, 0);
    pthread_mutex_unlock(&t->mu);
    return r;
}

int ferry_tls_peer_cn(ferry_tls *t, char *out, size_t outlen) {
    if (outlen) out[0] = 0;
    X509 *x = SSL_get1_peer_certificate(t->ssl);
    if (!x) return 0;
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)outlen);
    X509_free(x);
    return n > 0;
}

int ferry_tls_peer_not_after(ferry_tls *t, int64_t *not_after) {
    *not_after = 0;
    X509 *x = SSL_get1_peer_certificate(t->ssl);
    if (!x) return 0;
    struct tm tm;
    int ok = ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1;
    if (ok) *not_after = (int64_t)timegm(&tm);
    X509_free(x);
    return ok;
}

void ferry_tls_free(ferry_tls *t) {
    if (!t) return;
    // No close_notify: the fd may already be closed (and its number reused) when the last
    // reference goes; the protocol ends sessions with its own END/END_ACK exchange.
    pthread_mutex_lock(&t->mu);
    SSL_free(t->ssl);
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_destroy(&t->mu);
    ERR_clear_error();
    free(t);
}

// ---- certificates ------------------------------------------------------------------------
static EVP_PKEY *new_ed25519(void) {
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (pc && EVP_PKEY_keygen_init(pc) == 1) EVP_PKEY_keygen(pc, &k);
    EVP_PKEY_CTX_free(pc);
    return k;
}

static int write_key(EVP_PKEY *k, const char *path, char *err, size_t errlen) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { snprintf(err, errlen, "cannot write '%s': %s", path, strerror(errno)); return 0; }
    fchmod(fd, 0600);
    FILE *f = fdopen(fd, "w");
    int ok = f && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
    if (f) ok = (fclose(f) == 0) && ok; else close(fd);
    if (!ok) fail(err, errlen, "cannot write the key");
    return ok;
}

static int write_cert(X509 *x, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "w");
    if (!f) { snprintf(err, errlen, "cannot write '%s': %s", path, strerror(errno)); return 0; }
    int ok = PEM_write_X509(f, x) == 1;
    ok = (fclose(f) == 0) && ok;
    if (!ok) fail(err, errlen, "cannot write the certificate");
    return ok;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX v;
    X509V3_set_ctx_nodb(&v);
    X509V3_set_ctx(&v, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
    if (!e) return 0;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

static int random_serial(X509 *x) {
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1) return 0;
    b[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok;
}

/* A new certificate: version 3, a random serial, valid from `backdate_seconds` ago (less five
   minutes for clocks that lag) for `days` days from now, less the backdate. NULL on failure. */
static X509 *new_cert(int days, long backdate_seconds) {
    X509 *x = X509_new();
    int ok = x && X509_set_version(x, 2) && random_serial(x);
    ok = ok && X509_gmtime_adj(X509_getm_notBefore(x), -backdate_seconds - 300)
            && X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400 - backdate_seconds);
    if (!ok) { X509_free(x); return NULL; }
    return x;
}

/* A CA's extensions (self-signed: `x` is its own issuer). */
static int add_ca_extensions(X509 *x) {
    return add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0")
        && add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign")
        && add_ext(x, x, NID_subject_key_identifier, "hash");
}

/* A center certificate's extensions: server and client use, its names (`san`, as text, or
   `san_ext`, copied from an earlier certificate), the key identifiers. */
static int add_center_extensions(X509 *x, X509 *ca, const char *san, X509_EXTENSION *san_ext) {
    return add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE")
        && add_ext(x, ca, NID_key_usage, "critical,digitalSignature")
        && add_ext(x, ca, NID_ext_key_usage, "serverAuth,clientAuth")
        && (san_ext ? X509_add_ext(x, san_ext, -1) == 1 : add_ext(x, ca, NID_subject_alt_name, san))
        && add_ext(x, ca, NID_subject_key_identifier, "hash")
        && add_ext(x, ca, NID_authority_key_identifier, "keyid:always");
}

int ferry_ca_init(const char *name, int days, const char *cert_out, const char *key_out, char *err, size_t errlen) {
    EVP_PKEY *k = new_ed25519();
    X509 *x = new_cert(days, 0);
    int ok = k && x;
    X509_NAME *n = x ? X509_get_subject_name(x) : NULL;
    ok = ok && X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"Ferry federation", -1, -1, 0);
    ok = ok && X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1, 0);
    ok = ok && X509_set_issuer_name(x, n) && X509_set_pubkey(x, k);
    ok = ok && add_ca_extensions(x);
    ok = ok && X509_sign(x, k, NULL) > 0;
    if (!ok) fail(err, errlen, "cannot create the CA certificate");
    ok = ok && write_key(k, key_out, err, errlen) && write_cert(x, cert_out, err, errlen);
    X509_free(x); EVP_PKEY_free(k);
    return ok;
}

static X509 *read_cert(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno)); return NULL; }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) { char what[600]; snprintf(what, sizeof what, "'%s' is not a PEM certificate", path); fail(err, errlen, what); }
    return x;
}

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno)); return NULL; }
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k) { char what[600]; snprintf(what, sizeof what, "'%s' is not a PEM private key", path); fail(err, errlen, what); }
    return k;
}

int ferry_ca_issue(const char *ca_cert, const char *ca_key, const char *center, const char *hosts, int days, long backdate_seconds,
                   const char *cert_out, const char *key_out, char *err, size_t errlen) {
    X509 *ca = read_cert(ca_cert, err, errlen);
    if (!ca) return 0;
    EVP_PKEY *cak = read_key(ca_key, err, errlen);
    if (!cak) { X509_free(ca); return 0; }
    if (X509_check_private_key(ca, cak) != 1) {
        snprintf(err, errlen, "'%s' is not the key of '%s'", ca_key, ca_cert);
        X509_free(ca); EVP_PKEY_free(cak); ERR_clear_error(); return 0;
    }
    EVP_PKEY *k = new_ed25519();
    X509 *x = new_cert(days, backdate_seconds);
    int ok = k && x;
    X509_NAME *n = x ? X509_get_subject_name(x) : NULL;
    ok = ok && X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"Ferry federation", -1, -1, 0);
    ok = ok && X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)center, -1, -1, 0);
    ok = ok && X509_set_issuer_name(x, X509_get_subject_name(ca)) && X509_set_pubkey(x, k);
    char san[4096];
    int at = snprintf(san, sizeof san, "DNS:%s", center);
    if (hosts && *hosts) {
        char copy[2048]; snprintf(copy, sizeof copy, "%s", hosts);
        char *save = NULL;
        for (char *h = strtok_r(copy, ",", &save); h && at < (int)sizeof san - 64; h = strtok_r(NULL, ",", &save)) {
            unsigned char tmp[16];
            ASN1_OCTET_STRING *ip = a2i_IPADDRESS(h);
            int isip = ip != NULL; ASN1_OCTET_STRING_free(ip); (void)tmp;
            at += snprintf(san + at, sizeof san - at, ",%s:%s", isip ? "IP" : "DNS", h);
        }
    }
    ok = ok && add_center_extensions(x, ca, san, NULL);
    ok = ok && X509_sign(x, cak, NULL) > 0;
    if (!ok) fail(err, errlen, "cannot issue the certificate");
    ok = ok && write_key(k, key_out, err, errlen) && write_cert(x, cert_out, err, errlen);
    X509_free(x); EVP_PKEY_free(k); X509_free(ca); EVP_PKEY_free(cak);
    return ok;
}

/* Renews the CA certificate: the same subject and key, a new serial and validity (from now,
   `days` long). Certificates the old one issued verify against the new one (same name, same
   key, same key identifier), so a renewed CA needs no re-issue and no flag day. */
int ferry_ca_renew(const char *ca_cert, const char *ca_key, int days, const char *cert_out, char *err, size_t errlen) {
    X509 *ca = read_cert(ca_cert, err, errlen);
    if (!ca) return 0;
    EVP_PKEY *k = read_key(ca_key, err, errlen);
    if (!k) { X509_free(ca); return 0; }
    int ok = X509_check_private_key(ca, k) == 1;
    if (!ok) snprintf(err, errlen, "'%s' is not the key of '%s'", ca_key, ca_cert);
    ok = ok && X509_check_ca(ca) >= 1;
    if (!ok && !err[0]) snprintf(err, errlen, "'%s' is not a CA certificate", ca_cert);
    X509 *x = ok ? new_cert(days, 0) : NULL;
    ok = ok && x;
    ok = ok && X509_set_subject_name(x, X509_get_subject_name(ca)) && X509_set_issuer_name(x, X509_get_subject_name(ca)) && X509_set_pubkey(x, k);
    ok = ok && add_ca_extensions(x);
    ok = ok && X509_sign(x, k, NULL) > 0;
    if (!ok && !err[0]) fail(err, errlen, "cannot renew the CA certificate");
    ok = ok && write_cert(x, cert_out, err, errlen);
    X509_free(x); X509_free(ca); EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

/* Re-issues a center certificate: the names of `old_cert` (subject and subjectAltName, copied
   as they are), signed by the CA, valid from now for `days`. With `key_in` the certificate
   keeps that key (it must be `old_cert`'s); without, a new key goes to `key_out`. `old_cert`
   must have been issued by this CA (its issuer's name and signature). */
int ferry_ca_reissue(const char *ca_cert, const char *ca_key, const char *old_cert, const char *key_in, int days,
                     const char *cert_out, const char *key_out, char *err, size_t errlen) {
    X509 *ca = read_cert(ca_cert, err, errlen);
    if (!ca) return 0;
    EVP_PKEY *cak = read_key(ca_key, err, errlen);
    if (!cak) { X509_free(ca); return 0; }
    X509 *old = read_cert(old_cert, err, errlen);
    if (!old) { X509_free(ca); EVP_PKEY_free(cak); return 0; }
    int ok = X509_check_private_key(ca, cak) == 1;
    if (!ok) snprintf(err, errlen, "'%s' is not the key of '%s'", ca_key, ca_cert);
    if (ok && (X509_NAME_cmp(X509_get_issuer_name(old), X509_get_subject_name(ca)) != 0 || X509_verify(old, X509_get0_pubkey(ca)) != 1)) {
        snprintf(err, errlen, "'%s' was not issued by the CA '%s'", old_cert, ca_cert);
        ok = 0;
    }
    EVP_PKEY *k = NULL;
    if (ok && key_in) {
        k = read_key(key_in, err, errlen);
        ok = k != NULL;
        if (ok && X509_check_private_key(old, k) != 1) { snprintf(err, errlen, "'%s' is not the key of '%s'", key_in, old_cert); ok = 0; }
    } else if (ok) {
        k = new_ed25519();
        ok = k != NULL;
    }
    int san = ok ? X509_get_ext_by_NID(old, NID_subject_alt_name, -1) : -1;
    if (ok && san < 0) { snprintf(err, errlen, "'%s' has no subjectAltName: not a center certificate", old_cert); ok = 0; }
    X509 *x = ok ? new_cert(days, 0) : NULL;
    ok = ok && x;
    ok = ok && X509_set_subject_name(x, X509_get_subject_name(old)) && X509_set_issuer_name(x, X509_get_subject_name(ca)) && X509_set_pubkey(x, k);
    ok = ok && add_center_extensions(x, ca, NULL, X509_get_ext(old, san));
    ok = ok && X509_sign(x, cak, NULL) > 0;
    if (!ok && !err[0]) fail(err, errlen, "cannot re-issue the certificate");
    if (ok && !key_in) ok = write_key(k, key_out, err, errlen);
    ok = ok && write_cert(x, cert_out, err, errlen);
    X509_free(x); X509_free(old); X509_free(ca); EVP_PKEY_free(cak); EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

int ferry_key_raw_private(const char *key_path, unsigned char out[32], char *err, size_t errlen) {
    EVP_PKEY *k = read_key(key_path, err, errlen);
    if (!k) return 0;
    size_t n = 32;
    int ok = EVP_PKEY_get_id(k) == EVP_PKEY_ED25519 && EVP_PKEY_get_raw_private_key(k, out, &n) == 1 && n == 32;
    if (!ok) snprintf(err, errlen, "'%s' is not an Ed25519 key", key_path);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

int ferry_cert_info(const char *cert_path, unsigned char pub[32], char *cn, size_t cnlen, int64_t *not_after, char *err, size_t errlen) {
    X509 *x = read_cert(cert_path, err, errlen);
    if (!x) return 0;
    EVP_PKEY *k = X509_get0_pubkey(x);
    size_t n = 32;
    int ok = k && EVP_PKEY_get_id(k) == EVP_PKEY_ED25519 && EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == 32;
    if (!ok) snprintf(err, errlen, "'%s' does not hold an Ed25519 key", cert_path);
    if (cnlen) cn[0] = 0;
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, (int)cnlen);
    struct tm tm;
    if (ok && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) *not_after = (int64_t)timegm(&tm);
    X509_free(x);
    ERR_clear_error();
    return ok;
}

/* Verifies a PEM certificate held in memory against the CA file (chain, validity dates) and
   returns its Ed25519 public key and common name. Used for centers calling a peer's API. */
int ferry_cert_verify_pem(const char *pem, size_t len, const char *ca_path, unsigned char pub[32], char *cn, size_t cnlen,
                          char *err, size_t errlen) {
    int ok = 0;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    X509 *ca = read_cert(ca_path, err, errlen);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!x) { snprintf(err, errlen, "the certificate is not PEM"); goto out; }
    if (!ca || !store || !ctx) goto out;
    X509_STORE_add_cert(store, ca);
    if (X509_STORE_CTX_init(ctx, store, x, NULL) != 1) { fail(err, errlen, "cannot check the certificate"); goto out; }
    if (X509_verify_cert(ctx) != 1) {
        snprintf(err, errlen, "the certificate does not chain to the federation CA (%s)", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    EVP_PKEY *k = X509_get0_pubkey(x);
    size_t n = 32;
    if (!(k && EVP_PKEY_get_id(k) == EVP_PKEY_ED25519 && EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == 32)) {
        snprintf(err, errlen, "the certificate does not hold an Ed25519 key");
        goto out;
    }
    if (cnlen) cn[0] = 0;
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, (int)cnlen) <= 0) { snprintf(err, errlen, "the certificate names no center"); goto out; }
    ok = 1;
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(ca);
    X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
    return ok;
}

int ferry_ed25519_sign(const unsigned char priv[32], const unsigned char *msg, size_t len, unsigned char sig[64]) {
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, priv, 32);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t n = 64;
    int ok = k && m && EVP_DigestSignInit(m, NULL, NULL, NULL, k) == 1 && EVP_DigestSign(m, sig, &n, msg, len) == 1 && n == 64;
    EVP_MD_CTX_free(m); EVP_PKEY_free(k);
    return ok;
}

int ferry_ed25519_verify(const unsigned char pub[32], const unsigned char *msg, size_t len, const unsigned char sig[64]) {
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    int ok = k && m && EVP_DigestVerifyInit(m, NULL, NULL, NULL, k) == 1 && EVP_DigestVerify(m, sig, 64, msg, len) == 1;
    EVP_MD_CTX_free(m); EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

// ---- AES-256-GCM (the tests' reference; the streams use CAEAD) ---------------------------
static int gcm_once(const unsigned char key[32], const unsigned char iv[12], const unsigned char *aad, size_t aadlen,
                    unsigned char *buf, size_t len, unsigned char *tag, int enc) {
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    unsigned char fin[16];  // GCM's final step writes nothing; never buf + len (buf may be NULL)
    int n = 0, ok = c && len <= INT_MAX && aadlen <= INT_MAX
        && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv, enc) == 1
        && (!aadlen || EVP_CipherUpdate(c, NULL, &n, aad, (int)aadlen) == 1)
        && (!len || EVP_CipherUpdate(c, buf, &n, buf, (int)len) == 1)
        && (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1)
        && EVP_CipherFinal_ex(c, fin, &n) == 1
        && (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1);
    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();
    return ok;
}

int ferry_openssl_gcm_seal(const unsigned char key[32], const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, unsigned char tag[16]) {
    return gcm_once(key, iv, aad, aadlen, buf, len, tag, 1);
}

int ferry_openssl_gcm_open(const unsigned char key[32], const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, const unsigned char tag[16]) {
    return gcm_once(key, iv, aad, aadlen, buf, len, (unsigned char *)tag, 0);
}
