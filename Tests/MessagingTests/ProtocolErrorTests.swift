import NIOCore
import Testing

@testable import Messaging

/// Every protocol error of PROTOCOL.md gets its ERROR code and a close, while another
/// connection keeps working.
@Suite("Protocol errors over the wire")
struct ProtocolErrorTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var expected: ErrorCode
        /// Whether the peer sends its HELLO (and waits for the server's) first.
        var openFirst: Bool
        var bytes: @Sendable () -> ByteBuffer

        var testDescription: String { self.name }
    }

    static let cases: [Case] = [
        Case(name: "unknown type", expected: .protocolError, openFirst: true) { rawFrame(type: 0x09) },
        Case(name: "reserved bits", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x04, reserved: 1)
        },
        Case(name: "undefined flags", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x02, flags: 0x08, id: 1, payload: dataPayload(topic: "t", body: []))
        },
        Case(name: "REQUEST and RESPONSE", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x02, flags: 0x03, id: 1, payload: dataPayload(topic: "t", body: []))
        },
        Case(name: "DATA before HELLO", expected: .protocolError, openFirst: false) {
            rawFrame(type: 0x02, id: 1, payload: dataPayload(topic: "t", body: [1]))
        },
        Case(name: "second HELLO", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x01, payload: Hello(nodeID: "again", role: "test").encoded())
        },
        Case(name: "HELLO that is not JSON", expected: .protocolError, openFirst: false) {
            rawFrame(type: 0x01, payload: Array("hello there".utf8))
        },
        Case(name: "HELLO with a bad node_id", expected: .protocolError, openFirst: false) {
            rawFrame(type: 0x01, payload: Array(#"{"protocol":"smsg","version":1,"node_id":"a b","role":"x"}"#.utf8))
        },
        Case(name: "HELLO with version 2", expected: .unsupportedVersion, openFirst: false) {
            rawFrame(type: 0x01, payload: Array(#"{"protocol":"smsg","version":2,"node_id":"a","role":"x"}"#.utf8))
        },
        Case(name: "oversized length", expected: .frameTooLarge, openFirst: true) {
            rawFrame(length: UInt32(Frame.defaultMaxFrame + 1), type: 0x02, id: 1)
        },
        Case(name: "DATA out of sequence", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x02, id: 2, payload: dataPayload(topic: "t", body: []))
        },
        Case(name: "DATA header before HELLO, payload never sent", expected: .protocolError, openFirst: false) {
            rawFrame(length: 500_000, type: 0x02, id: 1)
        },
        Case(name: "DATA header out of sequence, payload never sent", expected: .protocolError, openFirst: true) {
            rawFrame(length: 500_000, type: 0x02, id: 7)
        },
        Case(name: "non-empty ACK", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x03, id: 1, payload: [0])
        },
        Case(name: "FLOW with a bad value", expected: .protocolError, openFirst: true) {
            rawFrame(type: 0x06, payload: [7])
        },
    ]

    @Test("a bad peer gets the right ERROR and is closed", arguments: TransportKind.allCases, cases)
    func protocolError(kind: TransportKind, testCase: Case) async throws {
        try await withServer(kind) { server, port in
            let good = try await connect(kind, port: port)
            let bad = try await RawPeer.connect(kind, port: port)
            if testCase.openFirst {
                try await bad.open()
            }
            try await bad.sendBytes(testCase.bytes())
            let reason = await bad.expectError(testCase.expected)
            #expect(reason?.isEmpty == false)
            // Nothing after the ERROR.
            #expect(bad.frames.last?.type == .error)

            // The other session is untouched.
            let reply = try await good.request(topic: "still", body: ByteBuffer(string: "here"))
            #expect(String(buffer: reply.body) == "here")
            await good.close()
        }
    }

    @Test("a silent connection gets TIMEOUT after the hello timeout", arguments: TransportKind.allCases)
    func helloTimeout(kind: TransportKind) async throws {
        let configuration = serverConfiguration { $0.session.helloTimeout = .milliseconds(300) }
        try await withServer(kind, configuration: configuration) { _, port in
            let started = ContinuousClock.now
            let silent = try await RawPeer.connect(kind, port: port)
            await silent.expectError(.timeout)
            #expect(ContinuousClock.now - started >= .milliseconds(250))
        }
    }

    @Test("a peer that stops answering is closed with TIMEOUT", arguments: TransportKind.allCases)
    func heartbeatTimeout(kind: TransportKind) async throws {
        let configuration = serverConfiguration { $0.session.heartbeatInterval = .milliseconds(100) }
        try await withServer(kind, configuration: configuration) { server, port in
            // The raw peer opens and then never sends anything again (it does not answer PINGs).
            let peer = try await RawPeer.connect(kind, port: port)
            // Timed from before HELLO is sent: the server cannot start counting any earlier.
            let started = ContinuousClock.now
            try await peer.sendHello(heartbeatMilliseconds: 100)
            let reason = await peer.expectError(.timeout)
            // The timeout is 3 × max(100 ms, 100 ms): it must not fire early, nor much later.
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .milliseconds(250))
            #expect(elapsed < .seconds(10))
            #expect(reason?.contains("heartbeat") == true)
            #expect(peer.frames.contains { $0.type == .ping }, "the server pinged before giving up")
        }
    }
}

/// The ERROR this side writes is always one smsg/1 allows, whatever reason it was given.
@Suite("ERROR reasons on the wire")
struct ErrorReasonTests {
    static func written(_ reason: String, code: ErrorCode = .internal) throws -> String {
        let frame = ControlFrame.error(ProtocolViolation(code, reason)).frame(allocator: ByteBufferAllocator())
        try FrameAssembler.validatePayload(type: .error, payload: frame.payload)
        var payload = frame.payload
        _ = payload.readInteger(as: UInt16.self)
        return payload.readString(length: payload.readableBytes) ?? ""
    }

    @Test("an empty reason is sent as the code's name (an ERROR needs 1 to 1,024 bytes of reason)")
    func emptyReason() throws {
        #expect(try Self.written("", code: .goingAway) == "GOING_AWAY")
    }

    @Test("a long reason is cut at a character within 1,024 bytes, never replaced")
    func longReason() throws {
        // 1,023 ASCII bytes then a 2-byte character: cutting at byte 1,024 would split it.
        let reason = String(repeating: "a", count: 1023) + "é and more"
        #expect(try Self.written(reason) == String(repeating: "a", count: 1023))
        #expect(try Self.written("short") == "short")
    }
}
