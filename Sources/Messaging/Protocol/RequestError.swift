import NIOCore

/// What ended a request without its answer: the one error every request API throws.
///
/// A responder's FAILED RESPONSE (PROTOCOL.md "`status`") carries its code, message and, where
/// the `headers` extension is in force, its headers as ``metadata``. Everything that ends a
/// request on the requester's side is one too, with the error underneath as ``cause``:
///
/// | what happened | code | cause |
/// |---|---|---|
/// | the responder did not serve it | the responder's | `nil` |
/// | no answer within the request's timeout | ``Code/deadlineExceeded`` | `MessagingError` (`requestTimedOut`) |
/// | no connection, or it was lost or closing | ``Code/unavailable`` | `MessagingError` (its TLS error inside, if any) |
/// | a reconnecting client refused for its identity, for good | ``Code/permissionDenied`` | `MessagingError` (`gaveUp`) |
/// | too many sends already wait for a connection | ``Code/resourceExhausted`` | `MessagingError` (`outboxFull`) |
/// | the calling task was cancelled | ``Code/cancelled`` | `CancellationError` |
/// | the request cannot be sent as given (topic, headers, size), or a typed value does not encode or decode | ``Code/invalidArgument`` | `MessagingError` or the coding error |
///
/// A handler throws one (or any error that is ``RequestErrorConvertible``) to choose what its
/// requester sees; any other error a handler throws is answered ``Code/failed`` with a generic
/// message. So is the outcome of a request the handler made itself and let through (a
/// downstream timeout is not this responder's answer): to pass one on, throw a new
/// `RequestError` with the code and message to show.
public struct RequestError: Error, Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
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

    /// What kind of outcome this is.
    public var code: Code
    /// What the responder, or this side, says of it (at most 1,024 bytes; longer ones are cut
    /// at a character).
    public var message: String
    /// Headers that came with a FAILED RESPONSE (where `headers` is in force); a handler's
    /// error sends its own this way.
    public var metadata: MessageHeaders
    /// The error underneath, when this side ended the request: the `MessagingError` of a
    /// timeout or a lost connection, a `CancellationError`, a coding error. `nil` for a
    /// responder's FAILED answer.
    public var cause: (any Error)?

    /// Whether the request may have been served although it failed, where this side knows:
    /// `true` when it was lost with its connection after it may have been sent (it may have
    /// run), `false` when the responder refused it before running it (NO_HANDLER,
    /// RESOURCE_EXHAUSTED). Set by a leader's dispatch (`Leader.request(toAnyHandling:…)`);
    /// `nil` elsewhere. Not compared.
    public var mayHaveRun: Bool?

    /// Where an outcome came from.
    package enum Origin: Sendable {
        /// Made by the application (a handler's choice, or a `RequestErrorConvertible`).
        case made
        /// A responder's FAILED answer to a request this side made.
        case received
        /// This side ended a request it made (a timeout, a lost connection, a cancellation).
        case ended
    }

    /// Where this outcome came from: a router answers with a handler's own outcomes only, and
    /// treats the outcome of a request the handler made itself as the handler's failure (it is
    /// not this responder's answer, and its message may name internal things). Not compared.
    package var origin: Origin = .made

    /// Makes an outcome.
    ///
    /// - Parameters:
    ///   - code: What kind of outcome this is.
    ///   - message: What to say of it (cut at a character beyond 1,024 bytes).
    ///   - metadata: Headers to send with it, from a handler.
    ///   - cause: The error underneath, if any.
    public init(
        _ code: Code,
        _ message: String = "",
        metadata: MessageHeaders = MessageHeaders(),
        cause: (any Error)? = nil
    ) {
        self.code = code
        self.message = Self.truncated(message)
        self.metadata = metadata
        self.cause = cause
    }

    /// The outcome for `error`, which ended a request on the requester's side (see the table
    /// above); a `RequestError` stays as it is.
    public init(endingRequest error: any Error) {
        if let error = error as? RequestError {
            self = error
            return
        }
        self.init(mapping: error)
        self.origin = .ended
    }

    private init(mapping error: any Error) {
        switch error {
        case let error as any RequestErrorConvertible:
            self.init(error)
        case is CancellationError:
            self.init(.cancelled, "the request's task was cancelled", cause: error)
        case let error as MessagingError:
            switch error.code {
            case .requestTimedOut:
                self.init(.deadlineExceeded, error.reason, cause: error)
            case .payloadTooLarge, .topicTooLong, .invalidHeader, .extensionNotInForce, .reservedTopic:
                self.init(.invalidArgument, error.reason, cause: error)
            case .outboxFull:
                self.init(.resourceExhausted, error.reason, cause: error)
            case .gaveUp where error.isIdentityRefusal:
                // The server refused who this side is: trying again cannot help.
                self.init(.permissionDenied, error.reason, cause: error)
            default:
                self.init(.unavailable, error.reason, cause: error)
            }
        default:
            self.init(.unavailable, "\(error)", cause: error)
        }
    }

    /// An outcome this side gave a request it made (a value that does not encode, an answer
    /// that does not decode): like ``init(endingRequest:)``'s, never passed on by a router.
    package static func ended(_ code: Code, _ message: String, cause: any Error) -> RequestError {
        var error = RequestError(code, message, cause: cause)
        error.origin = .ended
        return error
    }

    /// Runs `request`; whatever ends it without an answer is thrown as the `RequestError` it
    /// stands for (``init(endingRequest:)``): the one place a request's errors are mapped.
    package static func ending<Answer>(_ request: () async throws -> Answer) async throws -> Answer {
        do {
            return try await request()
        } catch {
            throw RequestError(endingRequest: error)
        }
    }

    /// The outcome a handler's `RequestErrorConvertible` error stands for.
    public init(_ convertible: some RequestErrorConvertible) {
        if let error = convertible as? RequestError {
            self = error
            return
        }
        self.init(
            convertible.requestErrorCode,
            convertible.requestErrorMessage,
            metadata: convertible.requestErrorMetadata,
            cause: convertible
        )
    }

    /// The code and message, and what caused it: `DEADLINE_EXCEEDED: no response in time`.
    public var description: String {
        var text = self.message.isEmpty ? "\(self.code)" : "\(self.code): \(self.message)"
        if let cause = self.cause, !(cause is CancellationError), "\(cause)" != self.message {
            text += " (\(cause))"
        }
        return text
    }

    public var debugDescription: String {
        var text = "RequestError(\(self.code), message: \"\(self.message)\""
        if !self.metadata.isEmpty {
            text += ", metadata: \(self.metadata)"
        }
        if let cause = self.cause {
            text += ", cause: \(String(reflecting: cause))"
        }
        return text + ")"
    }

    /// Compares code, message and metadata; the cause is not compared.
    public static func == (lhs: RequestError, rhs: RequestError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.metadata == rhs.metadata
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.code)
        hasher.combine(self.message)
        hasher.combine(self.metadata)
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

    /// Reads a FAILED body the assembler has checked, with the headers that came with it.
    init(failedBody body: ByteBuffer, metadata: MessageHeaders) {
        var body = body
        let code = body.readInteger(as: UInt16.self) ?? Code.failed.rawValue
        self.code = Code(received: code)
        self.message = body.readString(length: body.readableBytes) ?? ""
        self.metadata = metadata
        self.cause = nil
        self.origin = .received
    }
}

/// An error that says what request outcome it stands for, so a handler can throw its own
/// domain errors and its requester still sees a chosen code, message and metadata (after
/// grpc-swift's `RPCErrorConvertible`). The router answers such an error with
/// `RequestError(error)`.
///
/// ```swift
/// struct OutOfStock: Error, RequestErrorConvertible {
///     var item: String
///     var requestErrorCode: RequestError.Code { .application(1001) }
///     var requestErrorMessage: String { "\(item) is out of stock" }
/// }
/// ```
public protocol RequestErrorConvertible: Error {
    /// The code the requester sees.
    var requestErrorCode: RequestError.Code { get }
    /// The message the requester sees; empty by default. It crosses the wire: say nothing
    /// internal.
    var requestErrorMessage: String { get }
    /// Headers sent with the outcome (where the requester has the `headers` extension); none
    /// by default.
    var requestErrorMetadata: MessageHeaders { get }
}

extension RequestErrorConvertible {
    public var requestErrorMessage: String { "" }
    public var requestErrorMetadata: MessageHeaders { MessageHeaders() }
}

extension RequestError: RequestErrorConvertible {
    public var requestErrorCode: Code { self.code }
    public var requestErrorMessage: String { self.message }
    public var requestErrorMetadata: MessageHeaders { self.metadata }
}
