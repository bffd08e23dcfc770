public import SecureTransport

/// An error the messaging API reports to the application.
public struct MessagingError: Error, Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String

        private init(_ name: String) {
            self.name = name
        }

        /// The session is not open yet.
        public static let notOpen = Code("not open")
        /// The session is closing (GOODBYE sent or received) or closed.
        public static let closing = Code("closing")
        /// The connection ended.
        public static let connectionClosed = Code("connection closed")
        /// The payload would exceed the peer's max_frame.
        public static let payloadTooLarge = Code("payload too large")
        /// The topic is longer than 255 bytes.
        public static let topicTooLong = Code("topic too long")
        /// No RESPONSE came within the request's timeout.
        public static let requestTimedOut = Code("request timed out")
        /// There is no REQUEST to answer with that id.
        public static let noSuchRequest = Code("no such request")
        /// The peer sent ERROR (see ``MessagingError/errorCode``).
        public static let peerError = Code("peer error")
        /// We sent ERROR to the peer because it broke the protocol or timed out.
        public static let protocolViolation = Code("protocol violation")
        /// The connection could not be set up (TCP, TLS or HELLO).
        public static let connectFailed = Code("connect failed")
        /// The server or client is shutting down.
        public static let shuttingDown = Code("shutting down")
        /// A reconnecting client has no connection now and does not wait for one.
        public static let notConnected = Code("not connected")
        /// A reconnecting client stopped trying (its policy ran out of attempts).
        public static let gaveUp = Code("gave up")
        /// Too many sends are already waiting for a connection.
        public static let outboxFull = Code("outbox full")
        /// No pooled connection became free within the acquire timeout.
        public static let acquireTimedOut = Code("acquire timed out")
        /// A header with an invalid or reserved name, or headers over 16,384 bytes.
        public static let invalidHeader = Code("invalid header")
        /// The peer does not have the extension the call needs (see ``Session/extensions``).
        public static let extensionNotInForce = Code("extension not in force")
        /// The topic is one the protocol reserves (`smsg.interest`, for a leader and its
        /// collaborators).
        public static let reservedTopic = Code("reserved topic")
        /// `run()` was called on a service that is already running, or has run and ended: each
        /// runs once.
        public static let alreadyRunning = Code("already running")
        /// Settings that cannot work together (the reason names the one to change).
        public static let invalidConfiguration = Code("invalid configuration")

        public var description: String { self.name }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A readable explanation.
    public var reason: String
    /// The smsg/1 ERROR code involved, when an ERROR was sent or received.
    public var errorCode: ErrorCode?
    /// The TLS failure underneath, when TLS failed (a certificate that did not verify, a
    /// certificate the peer refused, a handshake timeout): catch it by its code.
    public var tlsError: TLSError?

    /// Makes an error.
    ///
    /// - Parameters:
    ///   - code: What kind of failure this is.
    ///   - reason: A readable explanation.
    ///   - errorCode: The smsg/1 ERROR code involved, if any.
    ///   - tlsError: The TLS failure underneath, if any.
    public init(_ code: Code, _ reason: String, errorCode: ErrorCode? = nil, tlsError: TLSError? = nil) {
        self.code = code
        self.reason = reason
        self.errorCode = errorCode
        self.tlsError = tlsError
    }

    /// Whether the server refused who this side is, for good: ERROR UNAUTHORIZED (a node_id
    /// that is not its certificate's, a node off the allow-list), or a certificate required and
    /// none sent. Trying again with the same certificate and node_id cannot succeed.
    ///
    /// Other certificate failures are not counted: a certificate the server rejected
    /// (`TLSError.Code.certificateRejected`) may be the server's fault (an out-of-date CRL),
    /// and a server certificate this side did not trust may be renewed.
    public var isIdentityRefusal: Bool {
        self.errorCode == .unauthorized || self.tlsError?.code == .certificateRequired
    }

    /// What happened, as a sentence for people: the reason, and for an ERROR sent or received,
    /// which side ended the session and the protocol's name of the code.
    public var description: String {
        switch (self.code, self.errorCode) {
        case (.peerError, let errorCode?):
            return "the peer ended the session: \(self.reason) (\(errorCode))"
        case (.protocolViolation, let errorCode?):
            return "this side ended the session: \(self.reason) (\(errorCode))"
        default:
            return self.reason
        }
    }

    /// The error with its code, for debugging: `MessagingError(gave up, UNAUTHORIZED): …`.
    public var debugDescription: String {
        if let errorCode {
            return "MessagingError(\(self.code), \(errorCode)): \(self.reason)"
        }
        return "MessagingError(\(self.code)): \(self.reason)"
    }
}

extension MessagingError {
    init(_ refusal: SessionStateMachine.SendRefusal) {
        switch refusal {
        case .notOpen:
            self.init(.notOpen, "the session is not open yet")
        case .closing:
            self.init(.closing, "the session is closing")
        case .tooLarge(let limit):
            self.init(.payloadTooLarge, "the payload exceeds the peer's max_frame of \(limit) bytes")
        case .topicTooLong:
            self.init(.topicTooLong, "a topic is at most 255 bytes")
        case .noSuchRequest:
            self.init(.noSuchRequest, "no REQUEST with that id is waiting for a response")
        case .headersNotInForce:
            self.init(.extensionNotInForce, "the peer does not have the headers extension: headers cannot be sent")
        }
    }
}
