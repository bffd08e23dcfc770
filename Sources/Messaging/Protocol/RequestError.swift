import NIOCore

/// A request that was not served: the outcome a FAILED RESPONSE carries (PROTOCOL.md
/// "`status`"). A handler throws one to choose the code and message its requester sees; any
/// other error a handler throws is answered as ``Code/failed`` with a generic message.
/// `request` throws one when the answer is FAILED.
public struct RequestError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The outcome's code: 1 to 8 are the protocol's, 1000 and above the application's.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code on the wire.
        public let rawValue: UInt16

        /// A code as received: any code below 1000 that the protocol does not define (0
        /// included) is ``failed``.
        init(received rawValue: UInt16) {
            self.rawValue = (1...8).contains(rawValue) || rawValue >= 1000 ? rawValue : Self.failed.rawValue
        }

        private init(protocol rawValue: UInt16) {
            self.rawValue = rawValue
        }

        /// An application's code: 1,000 to 65,535.
        public static func application(_ code: UInt16) -> Code {
            precondition(code >= 1000, "application codes are 1000 to 65535")
            return Code(protocol: code)
        }

        /// Nothing on the responder serves the topic.
        public static let noHandler = Code(protocol: 1)
        /// The handler failed.
        public static let failed = Code(protocol: 2)
        /// The responder gave up at the request's deadline.
        public static let deadlineExceeded = Code(protocol: 3)
        /// The requester cancelled.
        public static let cancelled = Code(protocol: 4)
        /// The responder cannot serve now (draining, not the active leader).
        public static let unavailable = Code(protocol: 5)
        /// The handler refused the request's body or headers.
        public static let invalidArgument = Code(protocol: 6)
        /// The requester may not make this request.
        public static let permissionDenied = Code(protocol: 7)
        /// A limit on concurrent requests or a quota was reached.
        public static let resourceExhausted = Code(protocol: 8)

        public var isApplication: Bool { self.rawValue >= 1000 }

        public var description: String {
            switch self.rawValue {
            case 1: "NO_HANDLER"
            case 2: "FAILED"
            case 3: "DEADLINE_EXCEEDED"
            case 4: "CANCELLED"
            case 5: "UNAVAILABLE"
            case 6: "INVALID_ARGUMENT"
            case 7: "PERMISSION_DENIED"
            case 8: "RESOURCE_EXHAUSTED"
            default: "APPLICATION_\(self.rawValue)"
            }
        }
    }

    /// The longest message, in bytes of UTF-8.
    public static let maximumMessageBytes = 1024

    public var code: Code
    /// What the responder says of it (at most 1,024 bytes; longer ones are cut at a character).
    public var message: String

    public init(_ code: Code, _ message: String = "") {
        self.code = code
        self.message = Self.truncated(message)
    }

    public var description: String {
        self.message.isEmpty ? "RequestError(\(self.code))" : "RequestError(\(self.code)): \(self.message)"
    }

    static func truncated(_ message: String) -> String {
        guard message.utf8.count > Self.maximumMessageBytes else { return message }
        var cut = ""
        for character in message {
            guard cut.utf8.count + character.utf8.count <= Self.maximumMessageBytes else { break }
            cut.append(character)
        }
        return cut
    }

    /// The FAILED body: `code` (u16), then the message.
    func body(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var body = allocator.buffer(capacity: 2 + self.message.utf8.count)
        body.writeInteger(self.code.rawValue)
        body.writeString(self.message)
        return body
    }

    /// Checks a FAILED body (after the topic and any header block): a code and at most 1,024
    /// bytes of UTF-8.
    static func validate(body: ByteBuffer) throws(ProtocolViolation) {
        guard body.readableBytes >= 2 else { throw .protocolError("FAILED body shorter than its code") }
        guard body.readableBytes - 2 <= Self.maximumMessageBytes else {
            throw .protocolError("FAILED message longer than 1024 bytes")
        }
        guard body.getSlice(at: body.readerIndex + 2, length: body.readableBytes - 2)!.isValidUTF8 else {
            throw .protocolError("FAILED message is not UTF-8")
        }
    }

    /// Reads a FAILED body the assembler has checked.
    init(failedBody body: ByteBuffer) {
        var body = body
        let code = body.readInteger(as: UInt16.self) ?? Code.failed.rawValue
        self.code = Code(received: code)
        self.message = body.readString(length: body.readableBytes) ?? ""
    }
}
