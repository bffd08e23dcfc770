import NIOCore

/// Turns the bytes of a connection into ``Frame``s: the one frame assembly path, used by the
/// session handler, the fuzz target and the tests.
///
/// Every header is validated as soon as its 24 bytes are in, before the payload is read or any
/// room is made for it: first `length` against `max_frame` (``ErrorCode/frameTooLarge``), then
/// type, flags, reserved bits, the id rules and the payload-size rules of each type
/// (``ErrorCode/protocolError``). Payload contents that need the payload (FLOW's byte, ERROR's
/// UTF-8 reason, DATA's topic) are checked once it has arrived. Sequence rules belong to the
/// session state machine, which sees the header of a frame still arriving (``Step/header(_:)``).
///
/// Whole frames are sliced out of the bytes read, without copying. The start of a frame whose
/// rest has not arrived is kept in a buffer of its own, sized for the whole frame, so that the
/// rest is copied in once and the storage of the frames before it (which their messages may
/// still hold) is never copied.
struct FrameAssembler {
    /// What ``next()`` found.
    enum Step: Equatable {
        /// A whole, validated frame.
        case frame(Frame)
        /// The header of a frame whose payload is still arriving (reported once per frame).
        case header(FrameHeader)
        /// Every byte given so far is used up, or waits for more.
        case needMoreData
    }

    /// The largest payload accepted.
    let maxFrame: Int
    /// The extensions in force: the flags, types and payloads they define are valid only then
    /// (set once the HELLOs are exchanged, before the frame after the HELLO is assembled).
    var extensions: ProtocolExtensions = []
    private let allocator = ByteBufferAllocator()
    /// Bytes read and not yet looked at.
    private var input: ByteBuffer?
    /// The start of a frame whose rest has not arrived yet.
    private var partial: ByteBuffer?
    /// Frames (and their bytes) assembled and not yet published to the metrics.
    private var unpublishedFrames = 0
    private var unpublishedBytes = 0

    init(maxFrame: Int = Frame.defaultMaxFrame, extensions: ProtocolExtensions = []) {
        self.maxFrame = maxFrame
        self.extensions = extensions
    }

    /// Whether bytes wait to be assembled (a frame still arriving, or input not looked at).
    var hasBufferedBytes: Bool { self.input != nil || self.partial != nil }

    /// The room taken by a frame still arriving (for tests of when room is made).
    var partialCapacity: Int { self.partial?.capacity ?? 0 }

    /// Adds bytes read from the connection.
    mutating func append(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        if self.input == nil {
            self.input = bytes
        } else {
            self.input!.writeImmutableBuffer(bytes)
        }
    }

    /// Drops everything buffered (the session is closed: what still comes is discarded).
    mutating func discard() {
        self.input = nil
        self.partial = nil
    }

    /// The counts since the last call, for the metrics.
    mutating func takeCounts() -> (frames: Int, bytes: Int) {
        defer {
            self.unpublishedFrames = 0
            self.unpublishedBytes = 0
        }
        return (self.unpublishedFrames, self.unpublishedBytes)
    }

    /// The next step: a whole frame, the header of one still arriving, or the need for more bytes.
    ///
    /// - Throws: the violation to answer with ERROR; the assembler is then of no further use.
    mutating func next() throws(ProtocolViolation) -> Step {
        if self.partial == nil {
            return try self.nextFromInput()
        }
        return try self.nextFromPartial()
    }

    /// Completes the frame whose start is kept, from the front of the input.
    private mutating func nextFromPartial() throws(ProtocolViolation) -> Step {
        if var partial = self.partial {
            self.partial = nil
            let target: Int
            if partial.readableBytes < Frame.headerSize {
                target = Frame.headerSize
            } else {
                target = Frame.headerSize + Int(partial.getInteger(at: partial.readerIndex, as: UInt32.self)!)
            }
            if var input = self.input {
                if partial.readableBytes >= Frame.headerSize, partial.capacity < target {
                    // The session has checked the header: now room is made for the whole frame.
                    var sized = self.allocator.buffer(capacity: target)
                    sized.writeBuffer(&partial)
                    partial = sized
                }
                let take = min(target - partial.readableBytes, input.readableBytes)
                var piece = input.readSlice(length: take)!
                partial.writeBuffer(&piece)
                self.input = input.readableBytes > 0 ? input : nil
            }
            guard partial.readableBytes == target else {
                self.partial = partial
                return .needMoreData
            }
            // The frame is whole, or its header just is (validated, then reported).
            if let frame = try Self.decodeFrame(&partial, maxFrame: self.maxFrame, extensions: self.extensions) {
                self.unpublishedFrames += 1
                self.unpublishedBytes += Frame.headerSize + frame.length
                return .frame(frame)
            }
            return self.keepPartial(partial)
        }
        return .needMoreData
    }

    /// Slices the next whole frame out of the input.
    @inline(__always)
    private mutating func nextFromInput() throws(ProtocolViolation) -> Step {
        guard self.input != nil else { return .needMoreData }
        // Decoded in place: the bytes read are sliced, not copied.
        let maxFrame = self.maxFrame
        let extensions = self.extensions
        if let frame = try Self.decodeFrame(&self.input!, maxFrame: maxFrame, extensions: extensions) {
            if self.input!.readableBytes == 0 {
                self.input = nil
            }
            self.unpublishedFrames += 1
            self.unpublishedBytes += Frame.headerSize + frame.length
            return .frame(frame)
        }
        let rest = self.input!
        self.input = nil
        return self.keepPartial(rest)
    }

    /// Keeps the start of a frame (already validated as far as it goes) until its rest arrives.
    ///
    /// Only the bytes that came are kept: room for the whole payload is made once more of it
    /// arrives, after the session has checked the header's place in the sequence (PROTOCOL.md:
    /// the whole header, sequence rules included, is validated before the payload is allocated).
    private mutating func keepPartial(_ bytes: ByteBuffer) -> Step {
        var bytes = bytes
        let header = Self.pendingHeader(bytes)
        var kept = self.allocator.buffer(capacity: max(bytes.readableBytes, Frame.headerSize))
        kept.writeBuffer(&bytes)
        self.partial = kept
        return header.map { .header($0) } ?? .needMoreData
    }

    /// The header of a frame whose payload has not fully arrived, if there is one.
    static func pendingHeader(_ buffer: ByteBuffer) -> FrameHeader? {
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        let start = buffer.readerIndex
        return FrameHeader(
            length: Int(buffer.getInteger(at: start, as: UInt32.self)!),
            type: FrameType(rawValue: buffer.getInteger(at: start + 4, as: UInt8.self)!),
            flags: buffer.getInteger(at: start + 5, as: UInt8.self)!,
            id: buffer.getInteger(at: start + 8, as: UInt64.self)!
        )
    }

    /// Takes one whole frame off the front of `buffer`, or returns nil when more bytes are needed.
    func decodeFrame(_ buffer: inout ByteBuffer) throws(ProtocolViolation) -> Frame? {
        try Self.decodeFrame(&buffer, maxFrame: self.maxFrame, extensions: self.extensions)
    }

    /// ``decodeFrame(_:)`` for a `max_frame`: static, so that the assembler's own input can be
    /// decoded in place without a copy of the assembler.
    @inline(__always)
    static func decodeFrame(
        _ buffer: inout ByteBuffer,
        maxFrame: Int,
        extensions: ProtocolExtensions
    ) throws(ProtocolViolation) -> Frame? {
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        // The whole header in one read of the buffer.
        let (length, type, flags, reserved, id, timestamp) = buffer.withUnsafeReadableBytes { bytes in
            (
                Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))),
                FrameType(rawValue: bytes[4]),
                bytes[5],
                UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self)),
                UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            )
        }
        try Self.validateHeader(
            length: length,
            type: type,
            flags: flags,
            reserved: reserved,
            id: id,
            maxFrame: maxFrame,
            extensions: extensions
        )

        guard buffer.readableBytes >= Frame.headerSize + length else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: length)!
        try Self.validatePayload(type: type, flags: flags, payload: payload)
        return Frame(type: type, flags: flags, id: id, timestamp: timestamp, payload: payload)
    }

    static func validateHeader(
        length: Int,
        type: FrameType,
        flags: UInt8,
        reserved: UInt16,
        id: UInt64,
        maxFrame: Int,
        extensions: ProtocolExtensions = []
    ) throws(ProtocolViolation) {
        if length > maxFrame {
            throw ProtocolViolation(.frameTooLarge, "frame length \(length) exceeds max_frame \(maxFrame)")
        }
        guard type.isKnown || (type == .cancel && extensions.contains(.cancel)) else {
            throw ProtocolViolation(.protocolError, "unknown frame type \(type.rawValue)")
        }
        if type == .data {
            let dataFlags = DataFlags(rawValue: flags)
            guard flags & ~DataFlags.defined.rawValue == 0 || dataFlags.isSubset(of: Self.dataFlags(extensions)) else {
                throw ProtocolViolation(.protocolError, "undefined DATA flags")
            }
            guard !dataFlags.isSuperset(of: [.request, .response]) else {
                throw ProtocolViolation(.protocolError, "DATA cannot be both REQUEST and RESPONSE")
            }
            if dataFlags.contains(.failed), !dataFlags.contains(.response) {
                throw ProtocolViolation(.protocolError, "FAILED only goes with RESPONSE")
            }
        } else if flags != 0 {
            throw ProtocolViolation(.protocolError, "undefined flags on \(type)")
        }
        guard reserved == 0 else {
            throw ProtocolViolation(.protocolError, "reserved header bits must be zero")
        }
        switch type {
        case .hello, .flow, .error, .goodbye:
            guard id == 0 else { throw ProtocolViolation(.protocolError, "\(type) id must be zero") }
        case .cancel:
            guard id != 0 else { throw ProtocolViolation(.protocolError, "CANCEL id must not be zero") }
        default:
            break
        }
        switch type {
        case .ack, .pong, .goodbye, .cancel:
            guard length == 0 else { throw ProtocolViolation(.protocolError, "\(type) payload must be empty") }
        case .flow:
            guard length == 1 else { throw ProtocolViolation(.protocolError, "FLOW payload must be one byte") }
        case .error:
            guard length >= 3 else { throw ProtocolViolation(.protocolError, "ERROR payload too short") }
            guard length <= 2 + Frame.maximumErrorReason else {
                throw ProtocolViolation(.protocolError, "ERROR reason longer than 1024 bytes")
            }
        case .ping:
            guard length <= Frame.maximumPingPayload else {
                throw ProtocolViolation(.protocolError, "PING payload longer than 65536 bytes")
            }
        case .data:
            guard length >= 1 else { throw ProtocolViolation(.protocolError, "DATA payload too short") }
        default:
            break
        }
    }

    /// The DATA flags valid with `extensions` in force.
    @inline(__always)
    static func dataFlags(_ extensions: ProtocolExtensions) -> DataFlags {
        var flags = DataFlags.defined
        if extensions.contains(.headers) { flags.insert(.headers) }
        if extensions.contains(.status) { flags.insert(.failed) }
        return flags
    }

    static func validatePayload(type: FrameType, flags: UInt8 = 0, payload: ByteBuffer) throws(ProtocolViolation) {
        switch type {
        case .flow:
            let value = payload.getInteger(at: payload.readerIndex, as: UInt8.self)!
            guard value == FlowSignal.resume.rawValue || value == FlowSignal.slowDown.rawValue else {
                throw ProtocolViolation(.protocolError, "FLOW value must be 0 or 1")
            }
        case .error:
            let reason = payload.getSlice(at: payload.readerIndex + 2, length: payload.readableBytes - 2)!
            guard reason.isValidUTF8 else {
                throw ProtocolViolation(.protocolError, "ERROR reason is not UTF-8")
            }
        case .data:
            let topicLength = Int(payload.getInteger(at: payload.readerIndex, as: UInt8.self)!)
            guard payload.readableBytes >= 1 + topicLength else {
                throw ProtocolViolation(.protocolError, "DATA payload shorter than its topic")
            }
            let topic = payload.getSlice(at: payload.readerIndex + 1, length: topicLength)!
            guard topic.isValidUTF8 else {
                throw ProtocolViolation(.protocolError, "DATA topic is not UTF-8")
            }
            if flags & (DataFlags.headers.rawValue | DataFlags.failed.rawValue) != 0 {
                try Self.validateExtensions(
                    flags: DataFlags(rawValue: flags),
                    payload: payload,
                    topicLength: topicLength
                )
            }
        default:
            break
        }
    }
}

extension FrameAssembler {
    /// The header block and the FAILED body of a DATA payload (off the path of plain DATA).
    @inline(never)
    static func validateExtensions(flags: DataFlags, payload: ByteBuffer, topicLength: Int) throws(ProtocolViolation) {
        var rest = payload.getSlice(
            at: payload.readerIndex + 1 + topicLength,
            length: payload.readableBytes - 1 - topicLength
        )!
        if flags.contains(.headers) {
            _ = try MessageHeaders.readBlock(&rest, isRequest: flags.contains(.request), keep: false)
        }
        if flags.contains(.failed) {
            try RequestError.validate(body: rest)
        }
    }
}

/// A validated header whose payload is still arriving.
public struct FrameHeader: Sendable, Hashable {
    public var length: Int
    public var type: FrameType
    public var flags: UInt8
    public var id: UInt64
}

/// The FLOW frame's single payload byte.
public enum FlowSignal: UInt8, Sendable {
    case resume = 0x00
    case slowDown = 0x01
}

extension ByteBuffer {
    /// Whether the readable bytes are valid UTF-8 (ASCII takes the fast path).
    var isValidUTF8: Bool {
        self.withUnsafeReadableBytes { bytes in
            if bytes.allSatisfy({ $0 < 0x80 }) { return true }
            return String(validating: bytes, as: UTF8.self) != nil
        }
    }
}
