internal import COpenSSL
import Synchronization

/// One OpenSSL `SSL_CTX`, built once from a ``TLSConfiguration`` and shared by every connection
/// that uses it, on any number of event loops.
///
/// Building a context loads and checks the certificate, key and trust roots, so a bad
/// configuration fails here, with a ``TLSError``, rather than at the first handshake. To
/// reload certificates, build a new context and hand it to new connections; connections that
/// already exist keep the context they started with.
public final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: the SSL_CTX is configured entirely in `init` and only read after
    // that (OpenSSL allows concurrent SSL_new on a configured SSL_CTX); the one mutable part,
    // the client session cache, is behind its own lock.

    /// The configuration this context was built from.
    public let configuration: TLSConfiguration

    let sslContext: OpaquePointer
    /// ALPN protocols in wire format (each prefixed by its length), for both roles.
    let alpnWireFormat: [UInt8]
    let sessionCache: TLSSessionCache
    /// Where connection secrets go, when key logging is on.
    let keyLog: KeyLogWriter?
    private let liveConnections = Atomic<Int>(0)

    /// Builds the OpenSSL context for `configuration`.
    ///
    /// - Throws: ``TLSError`` when a certificate, key, trust store or setting cannot be used.
    public init(configuration: TLSConfiguration) throws {
        TLSError.clearErrorQueue()
        guard let ctx = SSL_CTX_new(TLS_method()) else {
            throw TLSError.fromErrorQueue(.internalError, "cannot create an SSL context")
        }
        self.configuration = configuration
        self.sslContext = ctx
        self.alpnWireFormat = try Self.wireFormat(configuration.applicationProtocols)
        self.sessionCache = TLSSessionCache()
        do {
            self.keyLog = try configuration.keyLogFile.map { try KeyLogWriter(path: $0) }
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        // From here on, `deinit` frees `ctx` whatever fails below.
        try self.applyProtocolSettings()
        try self.applyIdentity()
        try self.applyTrust()
        self.applySessionSettings()
        self.installCallbacks()
    }

    deinit {
        SSL_CTX_free(self.sslContext)
    }

    /// The number of connections made from this context that are still alive. A connection
    /// counts from its creation until it is deallocated (its `SSL` freed).
    public var activeConnectionCount: Int {
        self.liveConnections.load(ordering: .relaxed)
    }

    func connectionCreated() {
        self.liveConnections.add(1, ordering: .relaxed)
    }

    func connectionFreed() {
        self.liveConnections.subtract(1, ordering: .relaxed)
    }

    // MARK: - Settings

    private func applyProtocolSettings() throws {
        let ctx = self.sslContext
        let options = smsg_SSL_OP_NO_COMPRESSION | smsg_SSL_OP_NO_RENEGOTIATION
        SSL_CTX_set_options(ctx, options)
        _ = smsg_SSL_CTX_set_mode(ctx, Int(SSL_MODE_RELEASE_BUFFERS))
        // Read ahead: OpenSSL takes all the ciphertext waiting in one BIO read instead of a
        // header and a body per record.
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_READ_AHEAD, 1, nil)

        let config = self.configuration
        guard config.minimumVersion <= config.maximumVersion else {
            throw TLSError(.invalidConfiguration, "minimum version is above maximum version")
        }
        guard smsg_SSL_CTX_set_min_proto_version(ctx, config.minimumVersion.openSSLValue) == 1,
            smsg_SSL_CTX_set_max_proto_version(ctx, config.maximumVersion.openSSLValue) == 1
        else {
            throw TLSError.fromErrorQueue(.invalidConfiguration, "cannot set protocol versions")
        }
        guard SSL_CTX_set_cipher_list(ctx, config.tls12CipherSuites) == 1 else {
            throw TLSError.fromErrorQueue(.invalidConfiguration, "no usable TLS 1.2 cipher suite")
        }
        guard SSL_CTX_set_ciphersuites(ctx, config.tls13CipherSuites) == 1 else {
            throw TLSError.fromErrorQueue(.invalidConfiguration, "no usable TLS 1.3 cipher suite")
        }
        guard smsg_SSL_CTX_set1_groups_list(ctx, config.groups) == 1 else {
            throw TLSError.fromErrorQueue(.invalidConfiguration, "no usable key-exchange group")
        }
        if config.role == .client, !self.alpnWireFormat.isEmpty {
            let failed = self.alpnWireFormat.withUnsafeBufferPointer {
                SSL_CTX_set_alpn_protos(ctx, $0.baseAddress, UInt32($0.count))
            }
            // SSL_CTX_set_alpn_protos returns 0 on success.
            guard failed == 0 else {
                throw TLSError.fromErrorQueue(.invalidConfiguration, "cannot set ALPN protocols")
            }
        }
    }

    private func applyIdentity() throws {
        let config = self.configuration
        switch (config.certificateChain, config.privateKey) {
        case (nil, nil):
            if config.role == .server {
                throw TLSError(.invalidCertificate, "a server needs a certificate chain and a private key")
            }
        case (.some, nil):
            throw TLSError(.invalidPrivateKey, "a certificate chain was given without its private key")
        case (nil, .some):
            throw TLSError(.invalidCertificate, "a private key was given without its certificate chain")
        case (.some(let chain), .some(let key)):
            try self.useCertificateChain(chain)
            try self.usePrivateKey(key, passphrase: config.privateKeyPassphrase)
            guard SSL_CTX_check_private_key(self.sslContext) == 1 else {
                throw TLSError.fromErrorQueue(.invalidPrivateKey, "the private key does not match the certificate")
            }
        }
    }

    private func useCertificateChain(_ source: TLSConfiguration.CertificateSource) throws {
        let certificates = try PEMReader.certificates(from: source.pemSource, what: "certificate chain")
        defer { PEMReader.free(certificates) }
        guard let leaf = certificates.first else {
            throw TLSError(.invalidCertificate, "the certificate chain holds no certificate")
        }
        guard SSL_CTX_use_certificate(self.sslContext, leaf) == 1 else {
            throw TLSError.fromErrorQueue(.invalidCertificate, "cannot use the certificate")
        }
        for intermediate in certificates.dropFirst() {
            guard smsg_SSL_CTX_add1_chain_cert(self.sslContext, intermediate) == 1 else {
                throw TLSError.fromErrorQueue(.invalidCertificate, "cannot add an intermediate certificate")
            }
        }
    }

    private func usePrivateKey(_ source: TLSConfiguration.PrivateKeySource, passphrase: String?) throws {
        let key = try PEMReader.privateKey(from: source.pemSource, passphrase: passphrase)
        defer { EVP_PKEY_free(key) }
        guard SSL_CTX_use_PrivateKey(self.sslContext, key) == 1 else {
            let packed = ERR_peek_error()
            if ERR_GET_LIB(packed) == ERR_LIB_X509, ERR_GET_REASON(packed) == X509_R_KEY_VALUES_MISMATCH {
                TLSError.clearErrorQueue()
                throw TLSError(.invalidPrivateKey, "the private key does not match the certificate")
            }
            throw TLSError.fromErrorQueue(.invalidPrivateKey, "cannot use the private key")
        }
    }

    private func applyTrust() throws {
        let ctx = self.sslContext
        let config = self.configuration
        if let roots = config.trustRoots {
            try self.loadTrustRoots(roots)
        }
        if let crlFile = config.crlFile {
            guard config.trustRoots != nil else {
                throw TLSError(.invalidTrustRoots, "a CRL file needs trust roots to check against")
            }
            try self.loadRevocationLists(crlFile)
        }
        switch config.role {
        case .client:
            if config.verifyPeer {
                guard config.trustRoots != nil else {
                    throw TLSError(.invalidTrustRoots, "a client that verifies the server needs trust roots")
                }
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            } else {
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
            }
        case .server:
            switch config.clientAuthentication {
            case .none:
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
            case .optional, .required:
                guard config.trustRoots != nil else {
                    throw TLSError(.invalidTrustRoots, "verifying client certificates needs trust roots")
                }
                let required = config.clientAuthentication == .required
                let mode = SSL_VERIFY_PEER | (required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0)
                SSL_CTX_set_verify(ctx, mode, nil)
            }
        }
    }

    /// Adds every CRL in the PEM file at `path` to the trust store and turns on revocation
    /// checking of the peer's leaf certificate.
    private func loadRevocationLists(_ path: String) throws {
        guard let bio = BIO_new_file(path, "r") else {
            throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot read CRL file \(path)")
        }
        defer { BIO_free(bio) }
        let store = SSL_CTX_get_cert_store(self.sslContext)
        var count = 0
        while let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) {
            defer { X509_CRL_free(crl) }
            guard X509_STORE_add_crl(store, crl) == 1 else {
                throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot add a CRL from \(path)")
            }
            count += 1
        }
        // The loop ends on the "no start line" error of the end of the file.
        TLSError.clearErrorQueue()
        guard count > 0 else {
            throw TLSError(.invalidTrustRoots, "no CRL in \(path)")
        }
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_CRL_CHECK))
    }

    /// The certificate this context presents, if it has one.
    public var localCertificate: PeerCertificate? {
        SSL_CTX_get0_certificate(self.sslContext).map { PeerCertificate(x509: $0) }
    }

    private func loadTrustRoots(_ roots: TLSConfiguration.TrustRoots) throws {
        let ctx = self.sslContext
        switch roots {
        case .system:
            guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot load the system trust store")
            }
        case .file(let path):
            guard SSL_CTX_load_verify_locations(ctx, path, nil) == 1 else {
                throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot load CA file \(path)")
            }
            if self.configuration.role == .server, let names = SSL_load_client_CA_file(path) {
                SSL_CTX_set_client_CA_list(ctx, names)
            }
        case .directory(let path):
            guard SSL_CTX_load_verify_locations(ctx, nil, path) == 1 else {
                throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot use CA directory \(path)")
            }
        case .pem(let bytes):
            let certificates = try PEMReader.certificates(from: .bytes(bytes), what: "trust roots")
            defer { PEMReader.free(certificates) }
            guard !certificates.isEmpty else {
                throw TLSError(.invalidTrustRoots, "the trust roots hold no certificate")
            }
            let store = SSL_CTX_get_cert_store(ctx)
            for certificate in certificates {
                guard X509_STORE_add_cert(store, certificate) == 1 else {
                    throw TLSError.fromErrorQueue(.invalidTrustRoots, "cannot add a CA certificate")
                }
                if self.configuration.role == .server {
                    _ = SSL_CTX_add_client_CA(ctx, certificate)
                }
            }
        }
        TLSError.clearErrorQueue()
    }

    private func applySessionSettings() {
        let ctx = self.sslContext
        let sessionIDContext: [UInt8] = Array("smsg".utf8)
        _ = sessionIDContext.withUnsafeBufferPointer {
            SSL_CTX_set_session_id_context(ctx, $0.baseAddress, UInt32($0.count))
        }
        switch (self.configuration.role, self.configuration.sessionResumption) {
        case (.server, true):
            // Stateless tickets (TLS 1.3 and 1.2) from keys owned by this SSL_CTX; no server cache.
            _ = smsg_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
        case (.client, true):
            _ = smsg_SSL_CTX_set_session_cache_mode(
                ctx,
                Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE)
            )
        case (_, false):
            _ = smsg_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
            SSL_CTX_set_options(ctx, smsg_SSL_OP_NO_TICKET)
            _ = SSL_CTX_set_num_tickets(ctx, 0)
        }
    }

    /// The ALPN list in wire format: each protocol preceded by its length in one byte.
    private static func wireFormat(_ protocols: [String]) throws -> [UInt8] {
        var bytes: [UInt8] = []
        for name in protocols {
            let utf8 = Array(name.utf8)
            guard (1...255).contains(utf8.count) else {
                throw TLSError(.invalidConfiguration, "an ALPN protocol name must be 1 to 255 bytes")
            }
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
        }
        return bytes
    }
}

extension TLSConfiguration.Version {
    var openSSLValue: CInt {
        switch self {
        case .tls12: TLS1_2_VERSION
        case .tls13: TLS1_3_VERSION
        }
    }
}
