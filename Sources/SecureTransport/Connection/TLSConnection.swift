internal import COpenSSL
import NIOCore

/// One TLS connection: an OpenSSL `SSL` over in-memory ciphertext, with no socket.
///
/// Ciphertext from the peer goes in with ``receiveCiphertext(_:)``; ciphertext for the peer
/// comes out of ``takeOutboundCiphertext()``. Plaintext goes in with ``writePlaintext(_:)``
/// and comes out of ``readPlaintext(into:)``. Whoever owns it moves the bytes: the
/// ``TLSHandler`` to and from a channel, a test between two connections.
///
/// Not thread safe: use it from one thread (a channel's event loop) at a time.
final class TLSConnection {
    enum HandshakeResult {
        case complete
        case inProgress
        case failed(TLSError)
    }

    enum ReadResult {
        /// No more plaintext until more ciphertext arrives.
        case wantMoreCiphertext
        /// The buffer has no room left; call again with more.
        case bufferFull
        /// The peer sent close_notify: no more plaintext will come.
        case closeNotify
        case failed(TLSError)
    }

    let context: TLSContext
    let ssl: OpaquePointer
    let resumptionKey: String?
    private let allocator: ByteBufferAllocator
    @exclusivity(unchecked) private var inbound: ByteBuffer?
    @exclusivity(unchecked) private var outbound: ByteBuffer?
    /// The transport delivered its last byte: an empty read now means end of file.
    private(set) var transportEnded = false

    /// Creates a connection for `context`'s role.
    ///
    /// - Parameters:
    ///   - serverHostname: for a client, the server's DNS name or IP address, checked against
    ///     its certificate and (for a DNS name) sent as SNI. Required when the client verifies.
    ///   - resumptionKey: for a client with session resumption, the key under which sessions
    ///     for this server are kept and offered (normally "host:port").
    init(
        context: TLSContext,
        allocator: ByteBufferAllocator,
        serverHostname: String? = nil,
        resumptionKey: String? = nil
    ) throws {
        TLSError.clearErrorQueue()
        guard let ssl = SSL_new(context.sslContext) else {
            throw TLSError.fromErrorQueue(.internalError, "cannot create an SSL connection")
        }
        self.context = context
        self.ssl = ssl
        self.allocator = allocator
        self.resumptionKey = context.configuration.sessionResumption ? resumptionKey : nil
        context.connectionCreated()

        guard let bio = ByteBufferBIO.make(for: self) else {
            throw TLSError.fromErrorQueue(.internalError, "cannot create the connection's BIO")
        }
        SSL_set_bio(ssl, bio, bio)
        _ = smsg_SSL_set_app_data(ssl, Unmanaged.passUnretained(self).toOpaque())

        switch context.configuration.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            try self.configureClient(serverHostname: serverHostname)
            SSL_set_connect_state(ssl)
        }
    }

    deinit {
        SSL_free(self.ssl)
        self.context.connectionFreed()
    }

    private func configureClient(serverHostname: String?) throws {
        let config = self.context.configuration
        guard let name = serverHostname, !name.isEmpty else {
            if config.verifyPeer {
                throw TLSError(.invalidConfiguration, "a client that verifies the server needs the server's name")
            }
            return
        }
        let isIPAddress: Bool
        if config.verifyPeer {
            let param = SSL_get0_param(self.ssl)
            X509_VERIFY_PARAM_set_hostflags(param, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            if X509_VERIFY_PARAM_set1_ip_asc(param, name) == 1 {
                isIPAddress = true
            } else {
                TLSError.clearErrorQueue()
                isIPAddress = false
                guard SSL_set1_host(self.ssl, name) == 1 else {
                    throw TLSError.fromErrorQueue(.invalidConfiguration, "invalid server name")
                }
            }
        } else {
            isIPAddress = name.contains(":") || name.allSatisfy { $0.isNumber || $0 == "." }
        }
        // SNI carries DNS names only, never addresses (RFC 6066).
        if !isIPAddress {
            guard smsg_SSL_set_tlsext_host_name(self.ssl, name) == 1 else {
                throw TLSError.fromErrorQueue(.invalidConfiguration, "invalid server name for SNI")
            }
        }
        if let key = self.resumptionKey {
            self.context.sessionCache.offer(for: key, on: self.ssl)
        }
    }

    // MARK: - Ciphertext in and out

    /// Hands ciphertext from the peer to the connection.
    func receiveCiphertext(_ buffer: ByteBuffer) {
        if var pending = self.inbound, pending.readableBytes > 0 {
            var incoming = buffer
            pending.writeBuffer(&incoming)
            self.inbound = pending
        } else {
            self.inbound = buffer
        }
    }

    /// Tells the connection that the transport will deliver nothing more.
    func markTransportEnded() {
        self.transportEnded = true
    }

    /// Ciphertext waiting to be read by OpenSSL.
    var pendingCiphertextCount: Int {
        self.inbound?.readableBytes ?? 0
    }

    /// Ciphertext produced for the peer since the last call, if any.
    func takeOutboundCiphertext() -> ByteBuffer? {
        guard let buffer = self.outbound, buffer.readableBytes > 0 else { return nil }
        self.outbound = nil
        return buffer
    }

    /// Whether ciphertext for the peer is waiting.
    var hasOutboundCiphertext: Bool {
        (self.outbound?.readableBytes ?? 0) > 0
    }

    /// Makes room in the outbound buffer for the records of `plaintextCount` bytes.
    private func reserveOutbound(forPlaintext plaintextCount: Int) {
        let records = plaintextCount / 16_384 + 1
        let needed = plaintextCount + records * 32
        if self.outbound == nil {
            self.outbound = self.allocator.buffer(capacity: max(needed, 256))
        } else {
            self.outbound!.reserveCapacity(minimumWritableBytes: needed)
        }
    }

    /// Called by the BIO when OpenSSL writes ciphertext.
    func appendCiphertext(_ bytes: UnsafeRawBufferPointer) {
        if self.outbound == nil {
            self.outbound = self.allocator.buffer(capacity: max(bytes.count, 1024))
        }
        self.outbound!.writeBytes(bytes)
    }

    /// Called by the BIO when OpenSSL reads ciphertext; returns the number of bytes copied.
    func takeCiphertext(into destination: UnsafeMutableRawBufferPointer) -> Int {
        guard var buffer = self.inbound, buffer.readableBytes > 0 else { return 0 }
        let count = min(destination.count, buffer.readableBytes)
        buffer.withUnsafeReadableBytes { source in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source.prefix(count)))
        }
        buffer.moveReaderIndex(forwardBy: count)
        self.inbound = buffer.readableBytes > 0 ? buffer : nil
        return count
    }

    // MARK: - TLS operations

    /// Advances the handshake as far as the ciphertext received so far allows.
    func handshake() -> HandshakeResult {
        TLSError.clearErrorQueue()
        let result = SSL_do_handshake(self.ssl)
        if result == 1 {
            return .complete
        }
        let error = SSL_get_error(self.ssl, result)
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .inProgress
        default:
            return .failed(self.classify(error, duringHandshake: true))
        }
    }

    /// Decrypts as much plaintext as fits into `buffer`'s writable space.
    func readPlaintext(into buffer: inout ByteBuffer) -> ReadResult {
        TLSError.clearErrorQueue()
        while buffer.writableBytes > 0 {
            // Nothing to decrypt: asking anyway would make OpenSSL allocate its read buffer
            // for the next record and keep it while the connection is idle (about 16 KiB
            // a connection, despite SSL_MODE_RELEASE_BUFFERS).
            if self.inbound == nil, !self.transportEnded, SSL_has_pending(self.ssl) == 0 {
                return .wantMoreCiphertext
            }
            var result: CInt = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
                var count = 0
                result = SSL_read_ex(self.ssl, space.baseAddress, space.count, &count)
                return result == 1 ? count : 0
            }
            if result == 1 {
                continue
            }
            let error = SSL_get_error(self.ssl, result)
            switch error {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                return .wantMoreCiphertext
            case SSL_ERROR_ZERO_RETURN:
                return .closeNotify
            default:
                return .failed(self.classify(error, duringHandshake: false))
            }
        }
        return .bufferFull
    }

    /// Encrypts all of `plaintext` into records for the peer. The BIO never refuses bytes,
    /// so one call writes everything or fails.
    func writePlaintext(_ plaintext: ByteBuffer) -> TLSError? {
        guard plaintext.readableBytes > 0 else { return nil }
        TLSError.clearErrorQueue()
        self.reserveOutbound(forPlaintext: plaintext.readableBytes)
        return plaintext.withUnsafeReadableBytes { bytes -> TLSError? in
            var offset = 0
            while offset < bytes.count {
                // SSL_write_ex takes a size_t, but keep each call well inside an int anyway.
                let chunk = min(bytes.count - offset, 1 << 30)
                var written = 0
                let result = SSL_write_ex(self.ssl, bytes.baseAddress! + offset, chunk, &written)
                guard result == 1 else {
                    let error = SSL_get_error(self.ssl, result)
                    return self.classify(error, duringHandshake: false)
                }
                offset += written
            }
            return nil
        }
    }

    /// Queues close_notify for the peer (once; later calls do nothing).
    func sendCloseNotify() {
        guard SSL_get_shutdown(self.ssl) & SSL_SENT_SHUTDOWN == 0 else { return }
        TLSError.clearErrorQueue()
        _ = SSL_shutdown(self.ssl)
        TLSError.clearErrorQueue()
    }

    /// Whether the peer's close_notify has arrived.
    var receivedCloseNotify: Bool {
        SSL_get_shutdown(self.ssl) & SSL_RECEIVED_SHUTDOWN != 0
    }

    // MARK: - Errors

    /// The alerts that say the peer refused our certificate: bad, unsupported, revoked,
    /// expired, unknown certificate; unknown CA; access denied. (Certificate required, 116,
    /// is ``TLSError/Code/certificateRequired``.)
    private static let certificateAlerts: Set<Int32> = [42, 43, 44, 45, 46, 48, 49]

    private func classify(_ error: CInt, duringHandshake: Bool) -> TLSError {
        let packed = ERR_peek_error()
        let reason = packed == 0 ? 0 : ERR_GET_REASON(packed)
        let fromSSL = packed != 0 && ERR_GET_LIB(packed) == ERR_LIB_SSL
        let endOfFile =
            error == SSL_ERROR_SYSCALL || (fromSSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        if endOfFile {
            TLSError.clearErrorQueue()
            return duringHandshake
                ? TLSError(.closedDuringHandshake, "the connection closed during the TLS handshake")
                : TLSError(.truncatedConnection, "the connection ended without close_notify")
        }
        let verifyResult = SSL_get_verify_result(self.ssl)
        if fromSSL, reason == SSL_R_CERTIFICATE_VERIFY_FAILED, verifyResult != X509_V_OK {
            TLSError.clearErrorQueue()
            let text = X509_verify_cert_error_string(verifyResult).map { String(cString: $0) } ?? "unknown"
            return TLSError(.certificateVerificationFailed, "peer certificate not trusted: \(text)")
        }
        if fromSSL, reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE {
            return TLSError.fromErrorQueue(.certificateRequired, "the client sent no certificate")
        }
        if fromSSL,
            reason == SSL_R_NO_APPLICATION_PROTOCOL || reason == SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL
        {
            return TLSError.fromErrorQueue(.noApplicationProtocol, "no common application protocol (ALPN)")
        }
        if fromSSL, reason == SSL_AD_REASON_OFFSET + 116 {
            return TLSError.fromErrorQueue(.certificateRequired, "the peer requires a certificate and none was sent")
        }
        if fromSSL, reason >= SSL_AD_REASON_OFFSET, Self.certificateAlerts.contains(reason - SSL_AD_REASON_OFFSET) {
            return TLSError.fromErrorQueue(.certificateRejected, "the peer refused our certificate")
        }
        if fromSSL, reason >= SSL_AD_REASON_OFFSET {
            return TLSError.fromErrorQueue(.alertReceived, "the peer sent a fatal alert")
        }
        if duringHandshake {
            return TLSError.fromErrorQueue(.handshakeFailed, "TLS handshake failed")
        }
        return TLSError.fromErrorQueue(.protocolViolation, "TLS record layer failed")
    }
}
