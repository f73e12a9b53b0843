#ifndef FERRY_OPENSSL_H
#define FERRY_OPENSSL_H
#include <stddef.h>
#include <stdint.h>

/// Constant-time comparison: 0 when equal.
int ferry_ct_memcmp(const void *a, const void *b, size_t len);
/// Cryptographically strong random bytes: 1 on success.
int ferry_random_bytes(unsigned char *buf, int len);
/// HMAC-SHA256 into out[32]: 1 on success.
int ferry_hmac_sha256(const unsigned char *key, size_t keylen, const unsigned char *msg, size_t len, unsigned char out[32]);
/// SHA-256 into out[32].
int ferry_sha256(const unsigned char *msg, size_t len, unsigned char out[32]);

// ---- TLS 1.3 on control connections ------------------------------------------------------
typedef struct ferry_tls_ctx ferry_tls_ctx;
typedef struct ferry_tls ferry_tls;

/// A TLS 1.3-only context. Server: presents cert/key, asks for (and verifies, when sent) a
/// client certificate. Client: verifies the server against `ca`, presents cert/key when given.
/// NULL on failure with a message in err.
ferry_tls_ctx *ferry_tls_ctx_new(int server, const char *cert, const char *key, const char *ca, char *err, size_t errlen);
void ferry_tls_ctx_free(ferry_tls_ctx *ctx);

/// Runs the handshake on a connected socket (made non-blocking here) within timeout_ms.
/// Client: `expected` is the center name or address the server's certificate must carry.
/// NULL on failure with the reason in err (for example the certificate verification result).
/// Client: `session_key` (NULL: none) names the peer exactly (center or address, and the address
/// dialled); a ticket kept under it from an earlier session is offered (TLS 1.3 resumption,
/// each ticket once) and tickets the server sends are kept under it. A resumed session's
/// certificate is checked against `expected` and its dates again.
ferry_tls *ferry_tls_handshake(ferry_tls_ctx *ctx, int fd, int server, const char *expected, const char *session_key, int timeout_ms, char *err, size_t errlen);
/// 1 when the handshake resumed an earlier session (no certificate sent again).
int ferry_tls_resumed(ferry_tls *t);
/// Handshakes this context completed: full ones, and resumed ones.
void ferry_tls_ctx_counts(ferry_tls_ctx *ctx, long long *full, long long *resumed);
/// Drops every kept ticket (a client).
void ferry_tls_ctx_forget(ferry_tls_ctx *ctx);
/// Reads up to len bytes; waits at most timeout_ms. >0 bytes, 0 the peer closed (with or
/// without close_notify), -1 error (message in err), -2 timeout, -3 the peer sent an alert
/// about certificates or access (its refusal). Safe to call while another thread writes.
long ferry_tls_read(ferry_tls *t, void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
/// 1 once a read met the peer's close_notify (a clean end), 0 before or after a bare end.
int ferry_tls_closed_cleanly(ferry_tls *t);
/// Sends close_notify (without waiting for the peer's), waiting at most timeout_ms for room
/// on the socket. 1 sent, -1 error or timeout. The process must ignore SIGPIPE.
int ferry_tls_shutdown(ferry_tls *t, int timeout_ms);
/// Writes all len bytes; waits at most timeout_ms for room. 1 ok, -1 error, -2 timeout.
int ferry_tls_write(ferry_tls *t, const void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
/// Keying material from the TLS session (RFC 8446 exporter): 1 on success.
int ferry_tls_export(ferry_tls *t, const char *label, unsigned char *out, size_t len);
/// The verified peer certificate's common name (empty when the peer sent none): 1 if present.
int ferry_tls_peer_cn(ferry_tls *t, char *out, size_t outlen);
/// When the verified peer certificate expires (Unix seconds): 1 if known.
int ferry_tls_peer_not_after(ferry_tls *t, int64_t *not_after);
/// Frees the session; does not touch or close the fd.
void ferry_tls_free(ferry_tls *t);

// ---- Federation CA and center certificates (Ed25519) -------------------------------------
/// Self-signed CA certificate and key (key file mode 0600).
int ferry_ca_init(const char *name, int days, const char *cert_out, const char *key_out, char *err, size_t errlen);
/// A center certificate signed by the CA: CN and DNS SAN = center; `hosts` is a comma-separated
/// list of extra DNS names or IP addresses; valid from now - backdate_seconds for `days`.
int ferry_ca_issue(const char *ca_cert, const char *ca_key, const char *center, const char *hosts, int days, long backdate_seconds,
                   const char *cert_out, const char *key_out, char *err, size_t errlen);
/// The raw Ed25519 private key of a PEM key file.
int ferry_ca_renew(const char *ca_cert, const char *ca_key, int days, const char *cert_out, char *err, size_t errlen);
int ferry_ca_reissue(const char *ca_cert, const char *ca_key, const char *old_cert, const char *key_in, int days,
                     const char *cert_out, const char *key_out, char *err, size_t errlen);
int ferry_key_raw_private(const char *key_path, unsigned char out[32], char *err, size_t errlen);
/// The Ed25519 public key, common name and expiry (Unix time) of a PEM certificate.
int ferry_cert_info(const char *cert_path, unsigned char pub[32], char *cn, size_t cnlen, int64_t *not_after, char *err, size_t errlen);
int ferry_cert_verify_pem(const char *pem, size_t len, const char *ca_path, unsigned char pub[32], char *cn, size_t cnlen, char *err, size_t errlen);
int ferry_ed25519_sign(const unsigned char priv[32], const unsigned char *msg, size_t len, unsigned char sig[64]);
/// 1 when the signature is valid.
int ferry_ed25519_verify(const unsigned char pub[32], const unsigned char *msg, size_t len, const unsigned char sig[64]);

// ---- AES-256-GCM, OpenSSL's -------------------------------------------------------------
// The data streams seal with BoringSSL's AES-256-GCM (CAEAD). OpenSSL's, one call per frame, is
// the independent implementation the tests check it against: same key, nonce and associated
// data, the same ciphertext and tag.
/// Encrypts buf[0..len) in place, authenticating aad too; writes the 16-byte tag. 1 on success.
int ferry_openssl_gcm_seal(const unsigned char key[32], const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, unsigned char tag[16]);
/// Decrypts in place; 1 only when the tag matches (then buf holds plaintext). On 0, buf holds
/// unauthenticated bytes: for the tests only.
int ferry_openssl_gcm_open(const unsigned char key[32], const unsigned char iv[12], const unsigned char *aad, size_t aadlen, unsigned char *buf, size_t len, const unsigned char tag[16]);
#endif
