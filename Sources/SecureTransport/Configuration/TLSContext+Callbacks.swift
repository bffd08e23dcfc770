internal import COpenSSL
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension TLSContext {
    /// Installs the C callbacks that need this context: ALPN selection on a server, the
    /// new-session hook that fills the client session cache.
    func installCallbacks() {
        let ctx = self.sslContext
        switch self.configuration.role {
        case .server:
            if !self.alpnWireFormat.isEmpty {
                SSL_CTX_set_alpn_select_cb(ctx, alpnSelectCallback, Unmanaged.passUnretained(self).toOpaque())
            }
        case .client:
            if self.configuration.sessionResumption {
                SSL_CTX_sess_set_new_cb(ctx, newSessionCallback)
            }
        }
        if self.keyLog != nil {
            SSL_CTX_set_keylog_callback(ctx, keyLogCallback)
        }
    }

    /// Picks the first of our protocols that the client offered, or `nil` when none is.
    func selectApplicationProtocol(offered: UnsafeBufferPointer<UInt8>) -> UnsafeBufferPointer<UInt8>? {
        var ours = self.alpnWireFormat[...]
        while let length = ours.first {
            let wanted = ours.dropFirst().prefix(Int(length))
            ours = ours.dropFirst(1 + Int(length))
            var index = 0
            while index < offered.count {
                let offeredLength = Int(offered[index])
                let start = index + 1
                let end = start + offeredLength
                guard end <= offered.count else { return nil }
                if offeredLength == wanted.count, offered[start..<end].elementsEqual(wanted) {
                    return UnsafeBufferPointer(rebasing: offered[start..<end])
                }
                index = end
            }
        }
        return nil
    }
}

/// Server side ALPN: a client that offers ALPN without any of our protocols is refused with
/// the `no_application_protocol` alert; a client that offers no ALPN never reaches this.
private let alpnSelectCallback:
    @convention(c) (
        OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
        UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
    ) -> CInt = { _, out, outLength, offered, offeredLength, arg in
        guard let out, let outLength, let offered, let arg else { return SSL_TLSEXT_ERR_ALERT_FATAL }
        let context = Unmanaged<TLSContext>.fromOpaque(arg).takeUnretainedValue()
        let offeredBuffer = UnsafeBufferPointer(start: offered, count: Int(offeredLength))
        guard let chosen = context.selectApplicationProtocol(offered: offeredBuffer) else {
            return SSL_TLSEXT_ERR_ALERT_FATAL
        }
        // `chosen` points into `offered`, which OpenSSL copies once the callback returns.
        out.pointee = chosen.baseAddress
        outLength.pointee = UInt8(chosen.count)
        return SSL_TLSEXT_ERR_OK
    }

/// Client side: a session (or TLS 1.3 ticket) arrived; keep it for the connection's
/// resumption key. Returning 1 tells OpenSSL that we took its reference.
private let newSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> CInt = { ssl, session in
    guard let ssl, let session, let data = smsg_SSL_get_app_data(ssl) else { return 0 }
    let connection = Unmanaged<TLSConnection>.fromOpaque(data).takeUnretainedValue()
    guard let key = connection.resumptionKey, SSL_SESSION_is_resumable(session) == 1 else { return 0 }
    connection.context.sessionCache.store(session, for: key)
    return 1
}

/// The client's resumable sessions, one per resumption key (normally "host:port"), bounded.
final class TLSSessionCache: @unchecked Sendable {
    // @unchecked Sendable: every access to `sessions` holds `lock`; SSL_SESSION reference
    // counting is thread safe in OpenSSL.
    private let lock = NIOLock()
    private var sessions: [String: OpaquePointer] = [:]
    private let capacity: Int

    init(capacity: Int = 1024) {
        self.capacity = capacity
    }

    deinit {
        for session in self.sessions.values {
            SSL_SESSION_free(session)
        }
    }

    /// Keeps `session` (taking over the caller's reference) as the one to offer for `key`.
    func store(_ session: OpaquePointer, for key: String) {
        let replaced: OpaquePointer? = self.lock.withLock {
            if self.sessions[key] == nil, self.sessions.count >= self.capacity,
                let evicted = self.sessions.keys.first
            {
                SSL_SESSION_free(self.sessions.removeValue(forKey: evicted))
            }
            return self.sessions.updateValue(session, forKey: key)
        }
        if let replaced {
            SSL_SESSION_free(replaced)
        }
    }

    /// Offers the session kept for `key`, if any, on `ssl`.
    func offer(for key: String, on ssl: OpaquePointer) {
        self.lock.withLock {
            if let session = self.sessions[key] {
                // SSL_set_session takes its own reference.
                _ = SSL_set_session(ssl, session)
            }
        }
    }

    /// The number of sessions kept.
    var count: Int {
        self.lock.withLock { self.sessions.count }
    }
}

/// OpenSSL hands over each secret as one line of the NSS key log format.
private func keyLogCallback(ssl: OpaquePointer?, line: UnsafePointer<CChar>?) {
    guard let ssl, let line, let data = smsg_SSL_get_app_data(ssl) else { return }
    let connection = Unmanaged<TLSConnection>.fromOpaque(data).takeUnretainedValue()
    connection.context.keyLog?.append(line)
}

/// Appends key log lines to a file (created with mode 0600), one whole line per write.
final class KeyLogWriter: Sendable {
    let path: String
    private let descriptor: CInt
    private let lock = NIOLock()

    init(path: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw TLSError(.invalidConfiguration, "cannot open the key log file \(path) (errno \(errno))")
        }
        self.path = path
        self.descriptor = descriptor
        var warning =
            "WARNING: TLS key logging is ON: the secrets of every connection are written to \(path). "
            + "Anyone with that file can decrypt the traffic. Use it only to debug, never in production.\n"
        warning.withUTF8 { bytes in
            _ = write(2, bytes.baseAddress, bytes.count)
        }
    }

    deinit {
        close(self.descriptor)
    }

    func append(_ line: UnsafePointer<CChar>) {
        let length = strlen(line)
        var bytes = [UInt8](repeating: 0, count: length + 1)
        bytes.withUnsafeMutableBytes { buffer in
            buffer.copyMemory(from: UnsafeRawBufferPointer(start: line, count: length))
            buffer[length] = UInt8(ascii: "\n")
        }
        self.lock.withLock {
            _ = bytes.withUnsafeBytes { write(self.descriptor, $0.baseAddress, $0.count) }
        }
    }
}
