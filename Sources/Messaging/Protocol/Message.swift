public import NIOCore

/// A DATA message: a topic and an opaque body.
public struct Message: Sendable, Hashable {
    /// The topic, 0 to 255 bytes of UTF-8.
    public var topic: String
    /// The body, as received: a slice of the read buffer, not a copy.
    public var body: ByteBuffer
    /// The sender's sequence number, or for a RESPONSE the id of the REQUEST it answers.
    public var id: UInt64
    /// REQUEST, RESPONSE, ACK_REQUESTED.
    public var flags: DataFlags
    /// The sender's wall clock when it sent the message, in microseconds since the Unix epoch.
    public var timestamp: UInt64

    public init(topic: String, body: ByteBuffer, id: UInt64 = 0, flags: DataFlags = [], timestamp: UInt64 = 0) {
        self.topic = topic
        self.body = body
        self.id = id
        self.flags = flags
        self.timestamp = timestamp
    }

    /// Whether the sender waits for a RESPONSE to this message.
    public var isRequest: Bool { self.flags.contains(.request) }
    /// Whether this message answers a REQUEST.
    public var isResponse: Bool { self.flags.contains(.response) }

    /// The largest topic in bytes.
    public static let maximumTopicBytes = 255

    /// Reads a DATA frame the decoder has already validated.
    init(dataFrame frame: Frame) {
        var payload = frame.payload
        let topicLength = Int(payload.readInteger(as: UInt8.self)!)
        let topic = payload.readString(length: topicLength)!
        self.init(
            topic: topic,
            body: payload,
            id: frame.id,
            flags: DataFlags(rawValue: frame.flags),
            timestamp: frame.timestamp
        )
    }
}
