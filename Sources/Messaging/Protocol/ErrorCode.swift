/// An smsg/1 ERROR code (PROTOCOL.md "Errors").
///
/// A struct rather than an enum so that codes this version does not know can still be carried
/// and shown.
public struct ErrorCode: Hashable, Sendable, CustomStringConvertible {
    /// The code on the wire.
    public var rawValue: UInt16

    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// Malformed frame, unknown type, bad reserved bits or flags, frame out of sequence, bad HELLO.
    public static let protocolError = ErrorCode(rawValue: 1)
    /// `length` above the receiver's `max_frame`.
    public static let frameTooLarge = ErrorCode(rawValue: 2)
    /// HELLO version not spoken.
    public static let unsupportedVersion = ErrorCode(rawValue: 3)
    /// Identity not allowed, or `node_id` does not match the certificate.
    public static let unauthorized = ErrorCode(rawValue: 4)
    /// Flow-control hard limit or rate limit exceeded.
    public static let overloaded = ErrorCode(rawValue: 5)
    /// Connection limit reached.
    public static let serverBusy = ErrorCode(rawValue: 6)
    /// No HELLO, or no traffic within the heartbeat timeout.
    public static let timeout = ErrorCode(rawValue: 7)
    /// The sender failed.
    public static let `internal` = ErrorCode(rawValue: 8)
    /// The sender is shutting down.
    public static let goingAway = ErrorCode(rawValue: 9)

    public var description: String {
        switch self.rawValue {
        case 1: "PROTOCOL_ERROR"
        case 2: "FRAME_TOO_LARGE"
        case 3: "UNSUPPORTED_VERSION"
        case 4: "UNAUTHORIZED"
        case 5: "OVERLOADED"
        case 6: "SERVER_BUSY"
        case 7: "TIMEOUT"
        case 8: "INTERNAL"
        case 9: "GOING_AWAY"
        default: "ERROR_\(self.rawValue)"
        }
    }
}

/// A breach of smsg/1 by the peer: the ERROR to send it and the reason to give.
///
/// The reason goes on the wire, so it names the problem and nothing internal.
public struct ProtocolViolation: Error, Hashable, Sendable, CustomStringConvertible {
    /// The ERROR code to send.
    public var code: ErrorCode
    /// The ERROR reason to send: 1 to 1024 bytes of UTF-8.
    public var reason: String

    public init(_ code: ErrorCode, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    static func protocolError(_ reason: String) -> ProtocolViolation {
        ProtocolViolation(.protocolError, reason)
    }

    public var description: String { "\(self.code): \(self.reason)" }
}
