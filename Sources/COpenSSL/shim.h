// The system OpenSSL (3.0 or later) as seen from Swift.
//
// Swift imports OpenSSL's functions directly but not its function-like macros, so each macro
// the project needs has a `static inline` wrapper here, named after the macro with a `smsg_`
// prefix. No logic lives in this file beyond what the macros themselves expand to.
#ifndef SMSG_COPENSSL_SHIM_H
#define SMSG_COPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>

#if OPENSSL_VERSION_MAJOR < 3
#error "smsg needs OpenSSL 3.0 or later"
#endif

// MARK: - Constants built from macros Swift cannot evaluate

static const uint64_t smsg_SSL_OP_NO_COMPRESSION = SSL_OP_NO_COMPRESSION;
static const uint64_t smsg_SSL_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;
static const uint64_t smsg_SSL_OP_NO_TICKET = SSL_OP_NO_TICKET;
static const unsigned long smsg_XN_FLAG_RFC2253 = XN_FLAG_RFC2253;

// MARK: - SSL_CTX

static inline int smsg_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

static inline int smsg_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}

static inline long smsg_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}

static inline long smsg_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}

static inline int smsg_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}

static inline int smsg_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *cert) {
    return (int)SSL_CTX_add1_chain_cert(ctx, cert);
}

// MARK: - SSL

static inline int smsg_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline int smsg_SSL_set_app_data(SSL *ssl, void *data) {
    return SSL_set_app_data(ssl, data);
}

static inline void *smsg_SSL_get_app_data(const SSL *ssl) {
    return SSL_get_app_data(ssl);
}

// MARK: - BIO

static inline void smsg_BIO_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}

static inline void smsg_BIO_clear_retry_flags(BIO *bio) {
    BIO_clear_retry_flags(bio);
}

static inline long smsg_BIO_get_mem_data(BIO *bio, char **data) {
    return BIO_get_mem_data(bio, data);
}

// MARK: - Stacks of X.509 names

static inline int smsg_sk_GENERAL_NAME_num(const GENERAL_NAMES *names) {
    return sk_GENERAL_NAME_num(names);
}

static inline GENERAL_NAME *smsg_sk_GENERAL_NAME_value(const GENERAL_NAMES *names, int index) {
    return sk_GENERAL_NAME_value(names, index);
}

static inline void smsg_GENERAL_NAMES_free(GENERAL_NAMES *names) {
    sk_GENERAL_NAME_pop_free(names, GENERAL_NAME_free);
}

static inline int smsg_sk_X509_num(const STACK_OF(X509) *certs) {
    return sk_X509_num(certs);
}

static inline X509 *smsg_sk_X509_value(const STACK_OF(X509) *certs, int index) {
    return sk_X509_value(certs, index);
}

// MARK: - GENERAL_NAME accessors (its union cannot be read from Swift)

static inline int smsg_GENERAL_NAME_type(const GENERAL_NAME *name) {
    return name->type;
}

static inline const ASN1_STRING *smsg_GENERAL_NAME_string(const GENERAL_NAME *name) {
    switch (name->type) {
    case GEN_DNS: return name->d.dNSName;
    case GEN_IPADD: return name->d.iPAddress;
    case GEN_EMAIL: return name->d.rfc822Name;
    case GEN_URI: return name->d.uniformResourceIdentifier;
    default: return NULL;
    }
}

#endif
