/// An error from the TLS layer: a configuration that OpenSSL refused, a handshake that failed,
/// a certificate that did not verify, or a connection that ended badly.
///
/// `TLSError` is a struct with a nested ``Code`` rather than an enum so that new codes can be
/// added without breaking clients. The ``reason`` is readable text drawn from OpenSSL's error
/// queue and verification result; it never contains key material.
public struct TLSError: Error, Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidConfiguration
            case invalidCertificate
            case invalidPrivateKey
            case invalidTrustRoots
            case handshakeFailed
            case certificateVerificationFailed
            case certificateRequired
            case certificateRejected
            case handshakeTimeout
            case alertReceived
            case noApplicationProtocol
            case truncatedConnection
            case protocolViolation
            case closedDuringHandshake
            case internalError
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// A configuration value OpenSSL refused (cipher list, groups, versions, ALPN).
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A certificate or chain could not be loaded.
        public static let invalidCertificate = Code(.invalidCertificate)
        /// A private key could not be loaded, needs a passphrase that was wrong or missing, or
        /// does not match the certificate.
        public static let invalidPrivateKey = Code(.invalidPrivateKey)
        /// Trust roots (CA file, CA directory, system store) could not be loaded.
        public static let invalidTrustRoots = Code(.invalidTrustRoots)
        /// The TLS handshake failed for a reason other than certificate verification.
        public static let handshakeFailed = Code(.handshakeFailed)
        /// The peer's certificate did not verify (unknown CA, expired, wrong host name, missing).
        public static let certificateVerificationFailed = Code(.certificateVerificationFailed)
        /// A certificate was required and none was sent: a server requiring client certificates
        /// sees this when a client sends none, and that client sees it as the server's alert.
        public static let certificateRequired = Code(.certificateRequired)
        /// The peer refused this side's certificate: it sent a certificate alert (bad, unknown,
        /// expired or revoked certificate, unknown CA, access denied). Its cause may be on
        /// either side (a peer whose CRL is out of date says "expired" or "unknown CA" too).
        public static let certificateRejected = Code(.certificateRejected)
        /// The handshake did not complete within the configured timeout.
        public static let handshakeTimeout = Code(.handshakeTimeout)
        /// The peer sent a fatal TLS alert.
        public static let alertReceived = Code(.alertReceived)
        /// The peers share no application protocol (ALPN).
        public static let noApplicationProtocol = Code(.noApplicationProtocol)
        /// The connection ended without the peer's close_notify.
        public static let truncatedConnection = Code(.truncatedConnection)
        /// The peer broke the TLS protocol after the handshake (bad record, failed decryption).
        public static let protocolViolation = Code(.protocolViolation)
        /// The connection ended before the handshake completed.
        public static let closedDuringHandshake = Code(.closedDuringHandshake)
        /// OpenSSL failed in a way that is not the peer's fault (allocation, internal state).
        public static let internalError = Code(.internalError)

        public var description: String {
            switch self.base {
            case .invalidConfiguration: "invalid configuration"
            case .invalidCertificate: "invalid certificate"
            case .invalidPrivateKey: "invalid private key"
            case .invalidTrustRoots: "invalid trust roots"
            case .handshakeFailed: "handshake failed"
            case .certificateVerificationFailed: "certificate verification failed"
            case .certificateRequired: "certificate required"
            case .certificateRejected: "certificate rejected"
            case .handshakeTimeout: "handshake timed out"
            case .alertReceived: "alert received"
            case .noApplicationProtocol: "no application protocol"
            case .truncatedConnection: "truncated connection"
            case .protocolViolation: "protocol violation"
            case .closedDuringHandshake: "closed during handshake"
            case .internalError: "internal error"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A readable explanation (from OpenSSL where it had one).
    public var reason: String

    /// Creates an error with a code and a readable reason.
    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    /// What happened, for people: "certificate verification failed: certificate has expired".
    public var description: String {
        self.reason.isEmpty ? "TLS \(self.code)" : "TLS \(self.code): \(self.reason)"
    }

    /// The error with its code, for debugging: `TLSError(handshake failed): …`.
    public var debugDescription: String {
        self.reason.isEmpty ? "TLSError(\(self.code))" : "TLSError(\(self.code)): \(self.reason)"
    }
}
