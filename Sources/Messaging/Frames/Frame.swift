public import NIOCore

/// A frame type of smsg/1.
public struct FrameType: Hashable, Sendable, CustomStringConvertible {
    /// The type byte on the wire.
    public var rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    public static let hello = FrameType(rawValue: 0x01)
    public static let data = FrameType(rawValue: 0x02)
    public static let ack = FrameType(rawValue: 0x03)
    public static let ping = FrameType(rawValue: 0x04)
    public static let pong = FrameType(rawValue: 0x05)
    public static let flow = FrameType(rawValue: 0x06)
    public static let error = FrameType(rawValue: 0x07)
    public static let goodbye = FrameType(rawValue: 0x08)
    /// Only where the `cancel` extension is in force.
    public static let cancel = FrameType(rawValue: 0x09)

    /// Whether smsg/1 without extensions defines the type.
    public var isKnown: Bool { (0x01...0x08).contains(self.rawValue) }

    public var description: String {
        switch self.rawValue {
        case 0x01: "HELLO"
        case 0x02: "DATA"
        case 0x03: "ACK"
        case 0x04: "PING"
        case 0x05: "PONG"
        case 0x06: "FLOW"
        case 0x07: "ERROR"
        case 0x08: "GOODBYE"
        case 0x09: "CANCEL"
        default: "TYPE_\(self.rawValue)"
        }
    }
}

/// DATA flags (PROTOCOL.md "DATA").
public struct DataFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// The receiver answers with one RESPONSE.
    public static let request = DataFlags(rawValue: 0x01)
    /// This DATA answers the REQUEST whose id it carries.
    public static let response = DataFlags(rawValue: 0x02)
    /// The receiver sends ACK once the message was handed to its application.
    public static let ackRequested = DataFlags(rawValue: 0x04)

    /// A header block follows the topic (the `headers` extension).
    public static let headers = DataFlags(rawValue: 0x08)
    /// A RESPONSE saying its REQUEST was not served (the `status` extension).
    public static let failed = DataFlags(rawValue: 0x10)

    /// Every flag smsg/1 defines for DATA without extensions.
    static let defined: DataFlags = [.request, .response, .ackRequested]
}

/// One smsg/1 frame: a 24-byte header and its payload.
///
/// Outbound DATA may split its payload in two, ``payload`` (the topic length and topic) and
/// ``body``, so that a large body is written as it is instead of being copied behind the
/// topic. Inbound frames always have the whole payload in ``payload`` and no ``body``.
public struct Frame: Sendable, Hashable {
    /// Bytes in the header.
    public static let headerSize = 24
    /// The smallest `max_frame` a side may announce.
    public static let minimumMaxFrame = 65_536
    /// The default `max_frame`: 1 MiB.
    public static let defaultMaxFrame = 1 << 20
    /// The largest PING status blob.
    public static let maximumPingPayload = 65_536
    /// The largest ERROR reason in bytes.
    public static let maximumErrorReason = 1024

    public var type: FrameType
    public var flags: UInt8
    public var id: UInt64
    /// The sender's wall clock in microseconds since the Unix epoch.
    public var timestamp: UInt64
    public var payload: ByteBuffer
    /// For outbound DATA: the body, sent right after ``payload``.
    public var body: ByteBuffer?

    public init(
        type: FrameType,
        flags: UInt8 = 0,
        id: UInt64 = 0,
        timestamp: UInt64 = 0,
        payload: ByteBuffer = ByteBuffer(),
        body: ByteBuffer? = nil
    ) {
        self.type = type
        self.flags = flags
        self.id = id
        self.timestamp = timestamp
        self.payload = payload
        self.body = body
    }

    /// The largest payload that may be sent to a peer that announced `announced` as its
    /// max_frame (the default when it announced none; never more than the 32-bit length field).
    static func payloadLimit(announced: Int?) -> Int {
        min(announced ?? Frame.defaultMaxFrame, Int(UInt32.max))
    }

    /// The `length` field: payload bytes after the header.
    public var length: Int {
        self.payload.readableBytes + (self.body?.readableBytes ?? 0)
    }
}
