public import NIOCore

/// A DATA message: a topic, an opaque body and, where the `headers` extension is in force,
/// headers.
public struct Message: Sendable, Hashable {
    /// The topic, 0 to 255 bytes of UTF-8.
    public var topic: String
    /// The body, as received: a slice of the read buffer, not a copy.
    public var body: ByteBuffer
    /// The sender's sequence number, or for a RESPONSE the id of the REQUEST it answers.
    public var id: UInt64
    /// REQUEST, RESPONSE, ACK_REQUESTED (and HEADERS, FAILED as received).
    public var flags: DataFlags
    /// The sender's wall clock when it sent the message, in microseconds since the Unix epoch.
    public var timestamp: UInt64
    /// What the extensions carried, when they carried anything: kept out of line so that a
    /// message without headers stays as small as before.
    var extras: Extras?

    /// What the `headers` and `status` extensions add to a message.
    final class Extras: Sendable, Hashable {
        let headers: MessageHeaders
        /// `smsg-timeout-ms` of a REQUEST.
        let timeout: Duration?
        /// When the responder gives up on a REQUEST with a timeout (its arrival plus the timeout).
        let deadline: NIODeadline?
        /// The outcome of a FAILED RESPONSE.
        let failure: RequestError?
        /// For a message received: the bytes its header block took on the wire (`block_len`
        /// and the entries, the protocol's own `smsg-` ones included).
        let wireBlockBytes: Int?

        init(
            headers: MessageHeaders,
            timeout: Duration? = nil,
            deadline: NIODeadline? = nil,
            failure: RequestError? = nil,
            wireBlockBytes: Int? = nil
        ) {
            self.headers = headers
            self.timeout = timeout
            self.deadline = deadline
            self.failure = failure
            self.wireBlockBytes = wireBlockBytes
        }

        static func == (lhs: Extras, rhs: Extras) -> Bool {
            lhs.headers == rhs.headers && lhs.timeout == rhs.timeout && lhs.deadline == rhs.deadline
                && lhs.failure == rhs.failure
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(self.headers)
            hasher.combine(self.timeout)
            hasher.combine(self.failure)
        }
    }

    public init(
        topic: String,
        body: ByteBuffer,
        id: UInt64 = 0,
        flags: DataFlags = [],
        timestamp: UInt64 = 0,
        headers: MessageHeaders = MessageHeaders()
    ) {
        self.topic = topic
        self.body = body
        self.id = id
        self.flags = flags
        self.timestamp = timestamp
        self.extras = headers.isEmpty ? nil : Extras(headers: headers)
    }

    /// Whether the sender waits for a RESPONSE to this message.
    public var isRequest: Bool { self.flags.contains(.request) }
    /// Whether this message answers a REQUEST.
    public var isResponse: Bool { self.flags.contains(.response) }

    /// The headers (without the protocol's own `smsg-` ones); empty when none came.
    public var headers: MessageHeaders {
        get { self.extras?.headers ?? MessageHeaders() }
        set {
            self.extras = Extras(
                headers: newValue,
                timeout: self.extras?.timeout,
                deadline: self.extras?.deadline,
                failure: self.extras?.failure
            )
        }
    }

    /// For a REQUEST that said how long its requester waits (`smsg-timeout-ms`): that time.
    public var timeout: Duration? { self.extras?.timeout }

    /// For a RESPONSE with FAILED status: the outcome (its ``body`` is then empty).
    public var failure: RequestError? { self.extras?.failure }

    /// For a REQUEST with a timeout: when its responder gives up, on the event loop's clock.
    var deadline: NIODeadline? { self.extras?.deadline }

    /// For a REQUEST whose requester said how long it waits: when it stops waiting, counted from
    /// the REQUEST's arrival.
    public var responderDeadline: ContinuousClock.Instant? {
        guard let deadline = self.deadline else { return nil }
        return ContinuousClock.now + .nanoseconds((deadline - NIODeadline.now()).nanoseconds)
    }

    /// The largest topic in bytes.
    public static let maximumTopicBytes = 255

    /// Reads a DATA frame the assembler has already validated; `now` is when it arrived.
    @inline(__always)
    init(dataFrame frame: Frame, now: NIODeadline = .uptimeNanoseconds(0)) {
        var payload = frame.payload
        let topicLength = Int(payload.readInteger(as: UInt8.self)!)
        let topic = payload.readString(length: topicLength)!
        let flags = DataFlags(rawValue: frame.flags)
        self.topic = topic
        self.id = frame.id
        self.flags = flags
        self.timestamp = frame.timestamp
        if flags.rawValue & (DataFlags.headers.rawValue | DataFlags.failed.rawValue) == 0 {
            self.body = payload
            self.extras = nil
        } else {
            (self.body, self.extras) = Self.readExtensions(payload, flags: flags, now: now)
        }
    }

    /// The body and what the extensions carried, after the topic (off the path of plain DATA).
    @inline(never)
    private static func readExtensions(
        _ payload: ByteBuffer,
        flags: DataFlags,
        now: NIODeadline
    ) -> (ByteBuffer, Extras) {
        var payload = payload
        var received = MessageHeaders.Received()
        let blockStart = payload.readerIndex
        if flags.contains(.headers) {
            // Validated by the assembler: this read cannot fail.
            received =
                (try? MessageHeaders.readBlock(&payload, isRequest: flags.contains(.request), keep: true)) ?? received
        }
        let wireBlockBytes = payload.readerIndex - blockStart
        let timeout = received.timeoutMilliseconds.map { Duration.milliseconds($0) }
        var failure: RequestError?
        if flags.contains(.failed) {
            failure = RequestError(failedBody: payload, metadata: received.headers)
            payload.moveReaderIndex(to: payload.writerIndex)
        }
        let extras = Extras(
            headers: received.headers,
            timeout: timeout,
            deadline: received.timeoutMilliseconds.map { now + .milliseconds(Int64($0)) },
            failure: failure,
            wireBlockBytes: wireBlockBytes
        )
        return (payload, extras)
    }
}
