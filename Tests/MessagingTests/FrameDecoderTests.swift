import NIOCore
import NIOTestUtils
import Testing

@testable import Messaging

// MARK: - Hand-made frames (no FrameEncoder)

/// A 24-byte smsg/1 header written field by field, big-endian (PROTOCOL.md "Frame").
private func makeHeader(
    length: Int,
    type: UInt8,
    flags: UInt8 = 0,
    reserved: UInt16 = 0,
    id: UInt64 = 0,
    timestamp: UInt64 = 0
) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(UInt32(length))
    buffer.writeInteger(type)
    buffer.writeInteger(flags)
    buffer.writeInteger(reserved)
    buffer.writeInteger(id)
    buffer.writeInteger(timestamp)
    return buffer
}

/// A whole frame: the hand-made header with `length` = the payload's size, then the payload.
private func makeFrameBytes(
    type: UInt8,
    flags: UInt8 = 0,
    reserved: UInt16 = 0,
    id: UInt64 = 0,
    timestamp: UInt64 = 0,
    payload: [UInt8] = []
) -> ByteBuffer {
    var buffer = makeHeader(
        length: payload.count,
        type: type,
        flags: flags,
        reserved: reserved,
        id: id,
        timestamp: timestamp
    )
    buffer.writeBytes(payload)
    return buffer
}

/// A DATA payload: `topic_len`, topic, body.
private func makeDataPayload(topic: String, body: [UInt8] = []) -> [UInt8] {
    [UInt8(topic.utf8.count)] + Array(topic.utf8) + body
}

/// An ERROR payload: code, then reason bytes.
private func makeErrorPayload(code: UInt16, reason: [UInt8]) -> [UInt8] {
    [UInt8(code >> 8), UInt8(code & 0xFF)] + reason
}

/// Runs the decoder once over `buffer`.
private func decodeOnce(
    _ buffer: inout ByteBuffer,
    maxFrame: Int = Frame.defaultMaxFrame
) -> Result<Frame?, ProtocolViolation> {
    do {
        let frame = try FrameAssembler(maxFrame: maxFrame).decodeFrame(&buffer)
        return .success(frame)
    } catch {
        return .failure(error)
    }
}

/// The violation decoding `bytes` raises, or nil when it decodes or waits for more bytes.
private func decodeViolation(_ bytes: ByteBuffer, maxFrame: Int = Frame.defaultMaxFrame) -> ProtocolViolation? {
    var buffer = bytes
    guard case .failure(let violation) = decodeOnce(&buffer, maxFrame: maxFrame) else { return nil }
    return violation
}

// MARK: - Samples

/// A valid frame: its bytes and the frame the decoder must produce from them.
struct DecoderSample: Sendable, CustomTestStringConvertible {
    var name: String
    var bytes: ByteBuffer
    var frame: Frame

    var testDescription: String { self.name }
}

private func sample(
    _ name: String,
    type: FrameType,
    flags: UInt8 = 0,
    id: UInt64 = 0,
    timestamp: UInt64 = 1_700_000_000_123_456,
    payload: [UInt8] = []
) -> DecoderSample {
    DecoderSample(
        name: name,
        bytes: makeFrameBytes(type: type.rawValue, flags: flags, id: id, timestamp: timestamp, payload: payload),
        frame: Frame(type: type, flags: flags, id: id, timestamp: timestamp, payload: ByteBuffer(bytes: payload))
    )
}

/// Valid frames of every type, all small.
private let validSamples: [DecoderSample] = [
    sample("HELLO", type: .hello, payload: Hello(nodeID: "collab-1", role: "client").encoded()),
    sample("DATA with topic", type: .data, id: 1, payload: makeDataPayload(topic: "chat", body: Array("hi".utf8))),
    sample("DATA REQUEST|ACK_REQUESTED", type: .data, flags: 0x05, id: 2, payload: makeDataPayload(topic: "q")),
    sample("DATA RESPONSE", type: .data, flags: 0x02, id: 2, payload: makeDataPayload(topic: "q", body: [0xFF])),
    sample("DATA empty topic", type: .data, id: 3, payload: makeDataPayload(topic: "", body: Array("body".utf8))),
    sample("DATA empty topic and body", type: .data, id: 4, payload: [0x00]),
    sample("DATA non-UTF-8 body", type: .data, id: 5, payload: makeDataPayload(topic: "b", body: [0xC3, 0x28, 0xFF])),
    sample("DATA UTF-8 topic", type: .data, id: 6, payload: makeDataPayload(topic: "ünï😀", body: [1])),
    sample("ACK", type: .ack, id: 7),
    sample("ACK max id", type: .ack, id: .max, timestamp: .max),
    sample("PING empty", type: .ping, id: 1),
    sample("PING with blob", type: .ping, id: 2, payload: [0x00, 0x01, 0x02, 0xFF]),
    sample("PONG", type: .pong, id: 2),
    sample("FLOW SLOW_DOWN", type: .flow, payload: [0x01]),
    sample("FLOW RESUME", type: .flow, payload: [0x00]),
    sample("ERROR", type: .error, payload: makeErrorPayload(code: 7, reason: Array("no HELLO".utf8))),
    sample("ERROR one-byte reason", type: .error, payload: makeErrorPayload(code: 0xFFFF, reason: [0x21])),
    sample("ERROR UTF-8 reason", type: .error, payload: makeErrorPayload(code: 1, reason: Array("é😀".utf8))),
    sample("GOODBYE", type: .goodbye, timestamp: 0),
]

// MARK: - Rejections

/// A header the decoder must reject from its 24 bytes alone.
struct HeaderRejection: Sendable, CustomTestStringConvertible {
    var name: String
    var length: Int
    var type: UInt8
    var flags: UInt8 = 0
    var reserved: UInt16 = 0
    var id: UInt64 = 0
    var maxFrame: Int = Frame.defaultMaxFrame
    var code: ErrorCode = .protocolError

    var testDescription: String { self.name }

    var header: ByteBuffer {
        makeHeader(length: self.length, type: self.type, flags: self.flags, reserved: self.reserved, id: self.id)
    }
}

private let headerRejections: [HeaderRejection] = [
    // length against max_frame
    HeaderRejection(name: "length above max_frame", length: 65_537, type: 0x02, maxFrame: 65_536, code: .frameTooLarge),
    HeaderRejection(name: "length above default max_frame", length: (1 << 20) + 1, type: 0x04, code: .frameTooLarge),
    HeaderRejection(name: "length 0xFFFFFFFF", length: Int(UInt32.max), type: 0x02, code: .frameTooLarge),
    // type
    HeaderRejection(name: "type 0", length: 0, type: 0x00),
    HeaderRejection(name: "type 9", length: 0, type: 0x09),
    HeaderRejection(name: "type 0xFF", length: 1, type: 0xFF),
    // flags
    HeaderRejection(name: "DATA flag 0x08", length: 1, type: 0x02, flags: 0x08),
    HeaderRejection(name: "DATA flag 0x80", length: 1, type: 0x02, flags: 0x80),
    HeaderRejection(name: "DATA REQUEST|RESPONSE", length: 1, type: 0x02, flags: 0x03),
    HeaderRejection(name: "DATA REQUEST|RESPONSE|ACK_REQUESTED", length: 1, type: 0x02, flags: 0x07),
    HeaderRejection(name: "PING flags 1", length: 0, type: 0x04, flags: 0x01),
    HeaderRejection(name: "HELLO flags 1", length: 2, type: 0x01, flags: 0x01),
    HeaderRejection(name: "ACK flags 4", length: 0, type: 0x03, flags: 0x04),
    HeaderRejection(name: "PONG flags 2", length: 0, type: 0x05, flags: 0x02),
    HeaderRejection(name: "FLOW flags 1", length: 1, type: 0x06, flags: 0x01),
    HeaderRejection(name: "ERROR flags 1", length: 3, type: 0x07, flags: 0x01),
    HeaderRejection(name: "GOODBYE flags 0x80", length: 0, type: 0x08, flags: 0x80),
    // reserved
    HeaderRejection(name: "reserved 1 on PING", length: 0, type: 0x04, reserved: 1),
    HeaderRejection(name: "reserved 0x8000 on DATA", length: 1, type: 0x02, reserved: 0x8000),
    HeaderRejection(name: "reserved 0x0100 on GOODBYE", length: 0, type: 0x08, reserved: 0x0100),
    // id must be 0
    HeaderRejection(name: "HELLO id 1", length: 2, type: 0x01, id: 1),
    HeaderRejection(name: "FLOW id 1", length: 1, type: 0x06, id: 1),
    HeaderRejection(name: "ERROR id 1", length: 3, type: 0x07, id: 1),
    HeaderRejection(name: "GOODBYE id max", length: 0, type: 0x08, id: .max),
    HeaderRejection(name: "GOODBYE id 1 << 32", length: 0, type: 0x08, id: 1 << 32),
    // payload sizes
    HeaderRejection(name: "ACK not empty", length: 1, type: 0x03, id: 1),
    HeaderRejection(name: "PONG not empty", length: 1, type: 0x05, id: 1),
    HeaderRejection(name: "GOODBYE not empty", length: 1, type: 0x08),
    HeaderRejection(name: "FLOW length 0", length: 0, type: 0x06),
    HeaderRejection(name: "FLOW length 2", length: 2, type: 0x06),
    HeaderRejection(name: "ERROR length 0", length: 0, type: 0x07),
    HeaderRejection(name: "ERROR length 2 (no reason)", length: 2, type: 0x07),
    HeaderRejection(name: "ERROR reason 1025 bytes", length: 2 + 1025, type: 0x07),
    HeaderRejection(name: "PING blob 65537 bytes", length: 65_537, type: 0x04, maxFrame: 1 << 20),
    HeaderRejection(name: "DATA length 0", length: 0, type: 0x02, id: 1),
]

/// A whole frame the decoder must reject once its payload is in.
struct PayloadRejection: Sendable, CustomTestStringConvertible {
    var name: String
    var bytes: ByteBuffer

    var testDescription: String { self.name }

    init(_ name: String, type: FrameType, id: UInt64 = 0, payload: [UInt8]) {
        self.name = name
        self.bytes = makeFrameBytes(type: type.rawValue, id: id, payload: payload)
    }
}

private let payloadRejections: [PayloadRejection] = [
    PayloadRejection("FLOW value 2", type: .flow, payload: [0x02]),
    PayloadRejection("FLOW value 0xFF", type: .flow, payload: [0xFF]),
    PayloadRejection("ERROR reason 0xFF", type: .error, payload: makeErrorPayload(code: 1, reason: [0xFF])),
    PayloadRejection(
        "ERROR reason lone continuation",
        type: .error,
        payload: makeErrorPayload(code: 1, reason: [0x80])
    ),
    PayloadRejection(
        "ERROR reason truncated sequence",
        type: .error,
        payload: makeErrorPayload(code: 1, reason: Array("ok".utf8) + [0xE2, 0x82])
    ),
    PayloadRejection(
        "ERROR reason encoded surrogate",
        type: .error,
        payload: makeErrorPayload(code: 1, reason: [0xED, 0xA0, 0x80])
    ),
    PayloadRejection(
        "ERROR reason overlong",
        type: .error,
        payload: makeErrorPayload(code: 1, reason: [0xC0, 0xAF])
    ),
    PayloadRejection("DATA topic_len 5, 2 bytes follow", type: .data, id: 1, payload: [5, 0x61, 0x62]),
    PayloadRejection("DATA topic_len 255, nothing follows", type: .data, id: 1, payload: [255]),
    PayloadRejection("DATA topic_len 1, nothing follows", type: .data, id: 1, payload: [1]),
    PayloadRejection("DATA topic 0xFF", type: .data, id: 1, payload: [1, 0xFF, 0x61]),
    PayloadRejection("DATA topic truncated sequence", type: .data, id: 1, payload: [2, 0xC3, 0x28]),
    PayloadRejection(
        // "é" is 2 bytes: a topic_len of 1 cuts it in half, though the payload as a whole is UTF-8.
        "DATA topic cut inside a character",
        type: .data,
        id: 1,
        payload: [1] + Array("é".utf8)
    ),
]

// MARK: - Tests

@Suite("Frame decoder")
struct FrameDecoderTests {
    @Test("the hand-made header puts every field where PROTOCOL.md says, big-endian")
    func handMadeHeaderLayout() {
        let header = makeHeader(
            length: 0x0102_0304,
            type: 0x05,
            flags: 0x06,
            reserved: 0x0708,
            id: 0x090A_0B0C_0D0E_0F10,
            timestamp: 0x1112_1314_1516_1718
        )
        #expect(Array(header.readableBytesView) == Array(UInt8(1)...UInt8(24)))
        #expect(Frame.headerSize == 24)
    }

    @Test("wire numbers are the ones PROTOCOL.md gives")
    func wireNumbers() {
        let types: [FrameType] = [.hello, .data, .ack, .ping, .pong, .flow, .error, .goodbye]
        #expect(types.map(\.rawValue) == Array(UInt8(1)...UInt8(8)))
        #expect(DataFlags.request.rawValue == 0x01)
        #expect(DataFlags.response.rawValue == 0x02)
        #expect(DataFlags.ackRequested.rawValue == 0x04)
        #expect(FlowSignal.resume.rawValue == 0x00)
        #expect(FlowSignal.slowDown.rawValue == 0x01)
        let codes: [ErrorCode] = [
            .protocolError, .frameTooLarge, .unsupportedVersion, .unauthorized, .overloaded, .serverBusy, .timeout,
            .internal, .goingAway,
        ]
        #expect(codes.map(\.rawValue) == Array(UInt16(1)...UInt16(9)))
    }

    @Test(
        "FrameEncoder writes exactly the hand-made bytes for DATA",
        arguments: [0, 5, FrameEncoder.copyLimit - 1, FrameEncoder.copyLimit, 20_000]
    )
    func encoderMatchesHandMadeBytes(bodySize: Int) throws {
        let bodyBytes = (0..<bodySize).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var prefix = ByteBuffer()
        prefix.writeInteger(UInt8(4))
        prefix.writeString("news")
        let frame = Frame(
            type: .data,
            flags: DataFlags([.request, .ackRequested]).rawValue,
            id: 0x0102_0304_0506_0708,
            timestamp: 1_700_000_000_123_456,
            payload: prefix,
            body: ByteBuffer(bytes: bodyBytes)
        )

        var parts: [ByteBuffer] = []
        FrameEncoder().encode(frame, allocator: ByteBufferAllocator()) { parts.append($0) }
        var joined = ByteBuffer()
        for var part in parts {
            joined.writeBuffer(&part)
        }

        let payload = makeDataPayload(topic: "news", body: bodyBytes)
        let expected = makeFrameBytes(
            type: 0x02,
            flags: 0x05,
            id: 0x0102_0304_0506_0708,
            timestamp: 1_700_000_000_123_456,
            payload: payload
        )
        #expect(frame.length == payload.count)
        #expect(joined == expected)
        #expect(parts.count == (bodySize >= FrameEncoder.copyLimit ? 2 : 1))

        // And the decoder reads it back, with the whole payload in `payload` and no body.
        var input = joined
        let decoded = try decodeOnce(&input).get()
        #expect(
            decoded
                == Frame(
                    type: .data,
                    flags: 0x05,
                    id: 0x0102_0304_0506_0708,
                    timestamp: 1_700_000_000_123_456,
                    payload: ByteBuffer(bytes: payload)
                )
        )
        #expect(decoded?.body == nil)
        #expect(input.readableBytes == 0)
    }

    @Test("FrameEncoder writes the hand-made bytes for frames without a body", arguments: validSamples)
    func encoderMatchesSamples(sample: DecoderSample) {
        var parts: [ByteBuffer] = []
        FrameEncoder().encode(sample.frame, allocator: ByteBufferAllocator()) { parts.append($0) }
        #expect(parts == [sample.bytes])
    }

    @Test("each valid frame decodes on its own", arguments: validSamples)
    func decodesValidFrame(sample: DecoderSample) throws {
        var buffer = sample.bytes
        let decoded = try decodeOnce(&buffer, maxFrame: 65_536).get()
        let frame = try #require(decoded)
        #expect(frame == sample.frame)
        #expect(frame.timestamp == sample.frame.timestamp)
        #expect(frame.body == nil)
        #expect(buffer.readableBytes == 0)
    }

    @Test("room for a payload is made only after its header was reported (and so checked by the session)")
    func roomAfterHeaderCheck() throws {
        var assembler = FrameAssembler(maxFrame: 65_536)
        var start = makeHeader(length: 60_000, type: 0x02, id: 1)
        start.writeRepeatingByte(7, count: 10)
        assembler.append(start)
        guard case .header(let header) = try assembler.next() else {
            Issue.record("expected the header first")
            return
        }
        #expect(header.length == 60_000)
        #expect(assembler.partialCapacity < 1_000, "only the 34 bytes that came are kept")
        #expect(try assembler.next() == .needMoreData)
        var rest = ByteBuffer()
        rest.writeRepeatingByte(7, count: 59_990)
        assembler.append(rest)
        guard case .frame(let frame) = try assembler.next() else {
            Issue.record("expected the whole frame")
            return
        }
        #expect(frame.payload.readableBytes == 60_000)
    }

    @Test("drip-fed, whole and batched input give the same frames")
    func verifier() throws {
        var pairs: [(ByteBuffer, [Frame])] = validSamples.map { ($0.bytes, [$0.frame]) }
        // One input holding three frames.
        let ack = sample("ACK", type: .ack, id: 11)
        let data = sample("DATA", type: .data, id: 12, payload: makeDataPayload(topic: "x", body: [0]))
        let goodbye = sample("GOODBYE", type: .goodbye)
        var three = ack.bytes
        three.writeImmutableBuffer(data.bytes)
        three.writeImmutableBuffer(goodbye.bytes)
        pairs.append((three, [ack.frame, data.frame, goodbye.frame]))

        for maxFrame in [65_536, Frame.defaultMaxFrame] {
            for (input, expected) in pairs {
                #expect(try assembleAll([input], maxFrame: maxFrame) == expected)
                let bytes = (0..<input.readableBytes).map { input.getSlice(at: input.readerIndex + $0, length: 1)! }
                #expect(try assembleAll(bytes, maxFrame: maxFrame) == expected)
                var doubled = input
                doubled.writeImmutableBuffer(input)
                #expect(try assembleAll([doubled], maxFrame: maxFrame) == expected + expected)
            }
        }
    }

    @Test("a bad header is rejected from its 24 bytes, before any payload", arguments: headerRejections)
    func headerRejection(rejection: HeaderRejection) {
        let violation = decodeViolation(rejection.header, maxFrame: rejection.maxFrame)
        #expect(violation?.code == rejection.code)
        if let violation {
            #expect((1...Frame.maximumErrorReason).contains(violation.reason.utf8.count))
        }
    }

    @Test("a bad header is still rejected when the payload is there too", arguments: headerRejections)
    func headerRejectionWithPayload(rejection: HeaderRejection) {
        guard rejection.length <= 70_000 else { return }
        var bytes = rejection.header
        bytes.writeRepeatingByte(0, count: rejection.length)
        #expect(decodeViolation(bytes, maxFrame: rejection.maxFrame)?.code == rejection.code)
    }

    @Test("a bad payload is a PROTOCOL_ERROR", arguments: payloadRejections)
    func payloadRejection(rejection: PayloadRejection) {
        #expect(decodeViolation(rejection.bytes)?.code == .protocolError)
    }

    @Test("FRAME_TOO_LARGE comes from the header alone; length == max_frame is fine")
    func frameTooLargeFromHeaderAlone() throws {
        #expect(FrameAssembler(maxFrame: 65_536).maxFrame == 65_536)
        let tooLarge = decodeViolation(makeHeader(length: 65_537, type: 0x02, id: 1), maxFrame: 65_536)
        #expect(tooLarge?.code == .frameTooLarge)

        // Exactly max_frame: the header alone waits for the payload, then the frame decodes.
        var atLimit = makeHeader(length: 65_536, type: 0x02, id: 1)
        let waiting = try decodeOnce(&atLimit, maxFrame: 65_536).get()
        #expect(waiting == nil)
        #expect(atLimit.readableBytes == Frame.headerSize)
        atLimit.writeBytes(makeDataPayload(topic: "t", body: [UInt8](repeating: 0x41, count: 65_534)))
        let decoded = try decodeOnce(&atLimit, maxFrame: 65_536).get()
        #expect(decoded?.length == 65_536)
        #expect(atLimit.readableBytes == 0)

        // The default max_frame is 1 MiB.
        #expect(FrameAssembler().maxFrame == 1 << 20)
        #expect(decodeViolation(makeHeader(length: 1 << 20, type: 0x02, id: 1)) == nil)
        #expect(decodeViolation(makeHeader(length: (1 << 20) + 1, type: 0x02, id: 1))?.code == .frameTooLarge)
    }

    @Test("a PING blob of exactly 65,536 bytes is accepted")
    func pingBlobAtLimit() throws {
        let blob = (0..<65_536).map { UInt8(truncatingIfNeeded: $0) }
        var header = makeHeader(length: blob.count, type: 0x04, id: 3)
        let waiting = try decodeOnce(&header, maxFrame: 1 << 20).get()
        #expect(waiting == nil)

        var buffer = makeFrameBytes(type: 0x04, id: 3, payload: blob)
        let decoded = try decodeOnce(&buffer, maxFrame: 1 << 20).get()
        #expect(decoded == Frame(type: .ping, id: 3, payload: ByteBuffer(bytes: blob)))
    }

    @Test("an ERROR reason of exactly 1,024 bytes is accepted")
    func errorReasonAtLimit() throws {
        let reason = [UInt8](repeating: 0x78, count: 1024)
        var buffer = makeFrameBytes(type: 0x07, payload: makeErrorPayload(code: 9, reason: reason))
        let decoded = try decodeOnce(&buffer).get()
        #expect(decoded?.length == 1026)
    }

    @Test("DATA accepts every allowed flag combination", arguments: [UInt8(0), 1, 2, 4, 5, 6])
    func dataFlagsAccepted(flags: UInt8) throws {
        var buffer = makeFrameBytes(type: 0x02, flags: flags, id: 1, payload: makeDataPayload(topic: "t"))
        let decoded = try decodeOnce(&buffer).get()
        #expect(decoded?.flags == flags)
    }

    @Test("a 255-byte topic with no body is accepted")
    func longestTopic() throws {
        let payload = makeDataPayload(topic: String(repeating: "t", count: 255))
        var buffer = makeFrameBytes(type: 0x02, id: 1, payload: payload)
        let decoded = try decodeOnce(&buffer).get()
        #expect(decoded?.length == 256)
    }

    @Test("length is checked first: too large beats unknown type, bad flags, reserved bits and id")
    func lengthCheckedFirst() {
        let unknownType = makeHeader(length: 65_537, type: 0x00)
        #expect(decodeViolation(unknownType, maxFrame: 65_536)?.code == .frameTooLarge)
        let everythingWrong = makeHeader(length: 65_537, type: 0x09, flags: 0xFF, reserved: 0xFFFF, id: 1)
        #expect(decodeViolation(everythingWrong, maxFrame: 65_536)?.code == .frameTooLarge)
        let badGoodbye = makeHeader(length: 70_000, type: 0x08, flags: 0x01, reserved: 1, id: 1)
        #expect(decodeViolation(badGoodbye, maxFrame: 65_536)?.code == .frameTooLarge)
    }

    @Test("unknown type with reserved bits set is a PROTOCOL_ERROR")
    func unknownTypeAndReserved() {
        #expect(decodeViolation(makeHeader(length: 0, type: 0x09, reserved: 1))?.code == .protocolError)
        let allBitsSet = makeHeader(length: 0, type: 0x00, flags: 0xFF, reserved: 0xFFFF)
        #expect(decodeViolation(allBitsSet)?.code == .protocolError)
    }

    @Test("an incomplete header needs more bytes and consumes nothing", arguments: Array(0..<24))
    func incompleteHeader(available: Int) throws {
        let whole = makeFrameBytes(type: 0x02, id: 1, payload: makeDataPayload(topic: "t", body: [1, 2, 3]))
        var buffer = ByteBuffer(bytes: [0xEE, 0xEE])
        buffer.moveReaderIndex(forwardBy: 2)
        buffer.writeImmutableBuffer(whole.getSlice(at: whole.readerIndex, length: available)!)
        let readerIndex = buffer.readerIndex

        let decoded = try decodeOnce(&buffer).get()
        #expect(decoded == nil)
        #expect(buffer.readerIndex == readerIndex)
        #expect(buffer.readableBytes == available)
    }

    @Test("a whole header with part of the payload needs more bytes and leaves the reader index alone")
    func incompletePayload() throws {
        let payload = makeDataPayload(topic: "topic", body: Array("the body".utf8))
        let whole = makeFrameBytes(type: 0x02, flags: 0x04, id: 1, timestamp: 42, payload: payload)
        // Start past some already-consumed bytes so that absolute offsets would be wrong.
        var buffer = ByteBuffer(bytes: [0xEE, 0xEE, 0xEE])
        buffer.moveReaderIndex(forwardBy: 3)
        let readerIndex = buffer.readerIndex

        for available in [Frame.headerSize, Frame.headerSize + 1, whole.readableBytes - 1] {
            var partial = buffer
            partial.writeImmutableBuffer(whole.getSlice(at: whole.readerIndex, length: available)!)
            let decoded = try decodeOnce(&partial).get()
            #expect(decoded == nil)
            #expect(partial.readerIndex == readerIndex)
            #expect(partial.readableBytes == available)
        }

        // Delivered in two parts: the second completes the frame.
        let split = Frame.headerSize + 2
        buffer.writeImmutableBuffer(whole.getSlice(at: whole.readerIndex, length: split)!)
        let firstPart = try decodeOnce(&buffer).get()
        #expect(firstPart == nil)
        #expect(buffer.readerIndex == readerIndex)
        buffer.writeImmutableBuffer(whole.getSlice(at: whole.readerIndex + split, length: whole.readableBytes - split)!)
        let decoded = try decodeOnce(&buffer).get()
        #expect(decoded == Frame(type: .data, flags: 0x04, id: 1, timestamp: 42, payload: ByteBuffer(bytes: payload)))
        #expect(buffer.readableBytes == 0)
    }

    @Test("back-to-back frames decode one at a time, each with only its own payload")
    func backToBack() throws {
        var buffer = makeFrameBytes(type: 0x02, id: 1, payload: makeDataPayload(topic: "a", body: [1, 2]))
        var second = makeFrameBytes(type: 0x04, id: 9, payload: [7, 7, 7])
        var third = makeFrameBytes(type: 0x08)
        buffer.writeBuffer(&second)
        buffer.writeBuffer(&third)

        let first = try decodeOnce(&buffer).get()
        let firstPayload = ByteBuffer(bytes: makeDataPayload(topic: "a", body: [1, 2]))
        #expect(first == Frame(type: .data, id: 1, payload: firstPayload))
        #expect(buffer.readableBytes == Frame.headerSize + 3 + Frame.headerSize)
        let ping = try decodeOnce(&buffer).get()
        #expect(ping == Frame(type: .ping, id: 9, payload: ByteBuffer(bytes: [7, 7, 7])))
        let goodbye = try decodeOnce(&buffer).get()
        #expect(goodbye == Frame(type: .goodbye))
        let nothing = try decodeOnce(&buffer).get()
        #expect(nothing == nil)
        #expect(buffer.readableBytes == 0)
    }
}

@Suite("Message from a DATA frame")
struct MessageFromDataFrameTests {
    @Test(
        "topic and body are split at topic_len",
        arguments: [
            ("", Array("hello".utf8)),
            ("", []),
            ("t", [0xFF, 0x00, 0x01]),
            ("ünï😀", Array("body".utf8)),
            (String(repeating: "t", count: 255), []),
            (String(repeating: "x", count: 255), [0x00, 0xFF, 0x10]),
        ] as [(String, [UInt8])]
    )
    func split(topic: String, body: [UInt8]) throws {
        var bytes = makeFrameBytes(
            type: 0x02,
            flags: 0x05,
            id: 17,
            timestamp: 1_700_000_000_000_001,
            payload: makeDataPayload(topic: topic, body: body)
        )
        let decoded = try decodeOnce(&bytes).get()
        let frame = try #require(decoded)
        let message = Message(dataFrame: frame)
        #expect(message.topic == topic)
        #expect(message.topic.utf8.count == topic.utf8.count)
        #expect(message.body == ByteBuffer(bytes: body))
        #expect(message.body.readableBytes == body.count)
        #expect(message.id == 17)
        #expect(message.flags == DataFlags([.request, .ackRequested]))
        #expect(message.isRequest)
        #expect(!message.isResponse)
        #expect(message.timestamp == 1_700_000_000_000_001)
    }

    @Test("a payload that does not start at index 0 is read from its reader index")
    func payloadReaderIndex() {
        var payload = ByteBuffer(bytes: [9, 9, 9])
        payload.moveReaderIndex(forwardBy: 3)
        payload.writeBytes(makeDataPayload(topic: "abc", body: [4, 5]))
        let message = Message(dataFrame: Frame(type: .data, flags: 0x02, id: 3, payload: payload))
        #expect(message.topic == "abc")
        #expect(message.body == ByteBuffer(bytes: [4, 5]))
        #expect(message.isResponse)
        #expect(message == Message(topic: "abc", body: ByteBuffer(bytes: [4, 5]), id: 3, flags: .response))
    }
}

/// The frames the assembler makes of `inputs`, appended one after the other.
private func assembleAll(_ inputs: [ByteBuffer], maxFrame: Int) throws -> [Frame] {
    var assembler = FrameAssembler(maxFrame: maxFrame)
    var frames: [Frame] = []
    for input in inputs {
        assembler.append(input)
        while true {
            let step = try assembler.next()
            guard step != .needMoreData else { break }
            if case .frame(let frame) = step {
                frames.append(frame)
            }
        }
    }
    #expect(!assembler.hasBufferedBytes)
    return frames
}
