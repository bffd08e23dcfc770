import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Messaging

// PROTOCOL.md "Extensions (negotiated in HELLO)", byte by byte: the assembler's rules, and the
// session handler on an EmbeddedChannel (explicit time, no sockets).

/// A frame's bytes as the peer would send them.
private func bytes(of frame: Frame) -> ByteBuffer {
    var bytes = ByteBuffer()
    FrameEncoder().encode(frame, allocator: ByteBufferAllocator()) { part in
        var part = part
        bytes.writeBuffer(&part)
    }
    return bytes
}

/// What the assembler says of `frame` with `extensions` in force: nil when it is valid.
private func violation(_ frame: Frame, extensions: ProtocolExtensions = .all) -> ProtocolViolation? {
    var buffer = bytes(of: frame)
    do {
        _ = try FrameAssembler(extensions: extensions).decodeFrame(&buffer)
        return nil
    } catch {
        return error
    }
}

/// A DATA payload: topic, then `rest` as given.
private func dataPayload(topic: String = "t", _ rest: ByteBuffer) -> ByteBuffer {
    var payload = ByteBuffer()
    payload.writeInteger(UInt8(topic.utf8.count))
    payload.writeString(topic)
    var rest = rest
    payload.writeBuffer(&rest)
    return payload
}

private func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// A FAILED body: code, then message bytes.
private func failedBody(code: UInt16, message: [UInt8]) -> ByteBuffer {
    var body = ByteBuffer()
    body.writeInteger(code)
    body.writeBytes(message)
    return body
}

@Suite("Extensions: HELLO negotiation")
struct ExtensionNegotiationTests {
    @Test("our HELLO lists every extension; in force are those both list; unknown names are ignored")
    func negotiated() throws {
        let side = try EmbeddedSession()
        try side.receive(
            Frame(
                type: .hello,
                payload: ByteBuffer(
                    bytes: Hello(nodeID: "peer-1", role: "test", extensions: ["cancel", "x-later", "headers"]).encoded()
                )
            )
        )
        let reply = try #require(try side.written().first)
        let ours = try Hello.decode(reply.payload.readableBytesView, expectSessionID: true)
        #expect(ours.extensions == ["headers", "status", "cancel"])
        #expect(side.session.extensions == [.headers, .cancel])
    }

    @Test("a peer whose HELLO has no extensions key: none in force, smsg/1 as before")
    func plainPeer() throws {
        let side = try EmbeddedSession()
        try side.open()
        #expect(side.session.extensions == [])
        // The flags and the type of the extensions are what they always were: errors.
        try side.receive(side.data(headers: []))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .protocolError)
    }

    @Test("configured with no extensions, our HELLO has no extensions key")
    func noneConfigured() throws {
        var configuration = SessionConfiguration()
        configuration.extensions = []
        let side = try EmbeddedSession(configuration: configuration)
        try side.receive(
            Frame(
                type: .hello,
                payload: ByteBuffer(bytes: Hello(nodeID: "peer-1", role: "test", extensions: ["headers"]).encoded())
            )
        )
        let reply = try #require(try side.written().first)
        #expect(!String(buffer: reply.payload).contains("extensions"))
        #expect(side.session.extensions == [])
    }

    @Test(
        "a wrong type, a bad name or a duplicate in extensions is a PROTOCOL_ERROR",
        arguments: [
            #""extensions":"headers""#,
            #""extensions":null"#,
            #""extensions":[1]"#,
            #""extensions":[""]"#,
            #""extensions":["Headers"]"#,
            #""extensions":["head ers"]"#,
            #""extensions":["headers","headers"]"#,
            #""extensions":["\#(String(repeating: "a", count: 65))"]"#,
        ]
    )
    func badExtensions(member: String) throws {
        let json = #"{"protocol":"smsg","version":1,"node_id":"n","role":"r","# + member + "}"
        #expect(throws: ProtocolViolation.self) { try Hello.decode(Array(json.utf8), expectSessionID: false) }
        let side = try EmbeddedSession()
        try side.receive(Frame(type: .hello, payload: ByteBuffer(string: json)))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .protocolError)
    }

    @Test("a 64-character name and an empty list are valid")
    func validEdges() throws {
        let long = String(repeating: "a", count: 64)
        let json = #"{"protocol":"smsg","version":1,"node_id":"n","role":"r","extensions":["\#(long)","x-1"]}"#
        #expect(try Hello.decode(Array(json.utf8), expectSessionID: false).extensions == [long, "x-1"])
        let empty = #"{"protocol":"smsg","version":1,"node_id":"n","role":"r","extensions":[]}"#
        #expect(try Hello.decode(Array(empty.utf8), expectSessionID: false).extensions == [])
    }
}

@Suite("Extensions: frame rules")
struct ExtensionFrameTests {
    @Test("HEADERS, FAILED and CANCEL are undefined unless their extension is in force")
    func onlyInForce() {
        let headers = Frame(
            type: .data,
            flags: DataFlags.headers.rawValue,
            id: 1,
            payload: dataPayload(buffer([0, 0]))
        )
        #expect(violation(headers, extensions: []) != nil)
        #expect(violation(headers, extensions: [.status, .cancel]) != nil)
        #expect(violation(headers, extensions: [.headers]) == nil)

        let failed = Frame(
            type: .data,
            flags: DataFlags([.response, .failed]).rawValue,
            id: 1,
            payload: dataPayload(failedBody(code: 2, message: []))
        )
        #expect(violation(failed, extensions: [.headers, .cancel]) != nil)
        #expect(violation(failed, extensions: [.status]) == nil)

        let cancel = Frame(type: .cancel, id: 7)
        #expect(violation(cancel, extensions: [.headers, .status])?.reason == "unknown frame type 9")
        #expect(violation(cancel, extensions: [.cancel]) == nil)
    }

    @Test("CANCEL: id 0, a payload or flags are PROTOCOL_ERRORs")
    func cancelRules() {
        #expect(violation(Frame(type: .cancel, id: 0)) != nil)
        #expect(violation(Frame(type: .cancel, id: 1, payload: buffer([0]))) != nil)
        #expect(violation(Frame(type: .cancel, flags: 1, id: 1)) != nil)
    }

    @Test("FAILED goes only with RESPONSE")
    func failedOnlyWithResponse() {
        for flags: DataFlags in [[.failed], [.failed, .request], [.failed, .ackRequested]] {
            let frame = Frame(
                type: .data,
                flags: flags.rawValue,
                id: 1,
                payload: dataPayload(failedBody(code: 2, message: []))
            )
            #expect(violation(frame) != nil, "\(flags)")
        }
    }

    @Test(
        "a FAILED body: a code, then 0 to 1,024 bytes of UTF-8",
        arguments: [
            (failedBody(code: 2, message: []), true),
            (failedBody(code: 6, message: Array("bad".utf8)), true),
            (failedBody(code: 1000, message: Array(repeating: UInt8(ascii: "x"), count: 1024)), true),
            (failedBody(code: 1000, message: Array(repeating: UInt8(ascii: "x"), count: 1025)), false),
            (failedBody(code: 2, message: [0xFF, 0xFE]), false),
            (buffer([0]), false),
            (buffer([]), false),
        ]
    )
    func failedBodies(body: ByteBuffer, valid: Bool) {
        let frame = Frame(
            type: .data,
            flags: DataFlags([.response, .failed]).rawValue,
            id: 1,
            payload: dataPayload(body)
        )
        #expect((violation(frame) == nil) == valid)
    }

    @Test("a FAILED code below 1000 that the protocol does not define is FAILED; 1000 and up are the application's")
    func receivedCodes() {
        #expect(RequestError(failedBody: failedBody(code: 0, message: []), metadata: MessageHeaders()).code == .failed)
        #expect(RequestError(failedBody: failedBody(code: 9, message: []), metadata: MessageHeaders()).code == .failed)
        #expect(
            RequestError(failedBody: failedBody(code: 999, message: []), metadata: MessageHeaders()).code == .failed
        )
        #expect(
            RequestError(failedBody: failedBody(code: 3, message: []), metadata: MessageHeaders()).code
                == .deadlineExceeded
        )
        #expect(
            RequestError(failedBody: failedBody(code: 1000, message: Array("x".utf8)), metadata: MessageHeaders())
                == RequestError(.application(1000), "x")
        )
    }

    /// Header blocks, each with whether it is valid on a REQUEST.
    static let blocks: [(String, ByteBuffer, Bool)] = [
        ("empty", EmbeddedSession.headerBlock([]), true),
        ("two entries", EmbeddedSession.headerBlock([("a", "1"), ("b-c_d.e", "")]), true),
        ("a 64-character name", EmbeddedSession.headerBlock([(String(repeating: "k", count: 64), "v")]), true),
        ("a 65-character name", EmbeddedSession.headerBlock([(String(repeating: "k", count: 65), "v")]), false),
        ("an empty name", EmbeddedSession.headerBlock([("", "v")]), false),
        ("an upper-case name", EmbeddedSession.headerBlock([("Key", "v")]), false),
        ("a name with a space", EmbeddedSession.headerBlock([("a b", "v")]), false),
        ("a duplicate", EmbeddedSession.headerBlock([("a", "1"), ("a", "2")]), false),
        (
            "a non-UTF-8 value",
            {
                var block = ByteBuffer()
                block.writeInteger(UInt16(1 + 1 + 2 + 2))
                block.writeBytes([1, UInt8(ascii: "a"), 0, 2, 0xC3, 0x28])
                return block
            }(), false
        ),
        (
            "an entry overrunning the block",
            {
                var block = ByteBuffer()
                block.writeInteger(UInt16(4))
                block.writeBytes([1, UInt8(ascii: "a"), 0, 5])
                return block
            }(), false
        ),
        ("a block longer than the payload", buffer([0, 10, 1, UInt8(ascii: "a")]), false),
        (
            "a block_len above 16,384",
            {
                var block = ByteBuffer()
                block.writeInteger(UInt16(16_385))
                block.writeBytes(
                    [1, UInt8(ascii: "a"), 0x3F, 0xFC] + Array(repeating: UInt8(ascii: "x"), count: 16_380)
                )
                return block
            }(), false
        ),
        (
            "a block_len of exactly 16,384",
            {
                var block = ByteBuffer()
                block.writeInteger(UInt16(16_384))
                block.writeBytes(
                    [1, UInt8(ascii: "a"), 0x3F, 0xFC] + Array(repeating: UInt8(ascii: "x"), count: 16_380)
                )
                return block
            }(), true
        ),
        ("no room for block_len", buffer([0]), false),
        ("a timeout of 1", EmbeddedSession.headerBlock([("smsg-timeout-ms", "1")]), true),
        ("a timeout of 2147483647", EmbeddedSession.headerBlock([("smsg-timeout-ms", "2147483647")]), true),
        ("a timeout of 2147483648", EmbeddedSession.headerBlock([("smsg-timeout-ms", "2147483648")]), false),
        ("a timeout of 0", EmbeddedSession.headerBlock([("smsg-timeout-ms", "0")]), false),
        ("a timeout with a leading zero", EmbeddedSession.headerBlock([("smsg-timeout-ms", "010")]), false),
        ("an empty timeout", EmbeddedSession.headerBlock([("smsg-timeout-ms", "")]), false),
        ("a timeout with a sign", EmbeddedSession.headerBlock([("smsg-timeout-ms", "+5")]), false),
        ("an 11-digit timeout", EmbeddedSession.headerBlock([("smsg-timeout-ms", "10000000000")]), false),
        ("an unknown reserved name (ignored)", EmbeddedSession.headerBlock([("smsg-later", "x")]), true),
    ]

    @Test("header blocks on a REQUEST", arguments: Self.blocks)
    func headerBlocks(name: String, block: ByteBuffer, valid: Bool) {
        let frame = Frame(
            type: .data,
            flags: DataFlags([.request, .headers]).rawValue,
            id: 1,
            payload: dataPayload(block)
        )
        #expect((violation(frame) == nil) == valid, "\(name)")
    }

    @Test("smsg-timeout-ms on a DATA that is not a REQUEST is a PROTOCOL_ERROR")
    func timeoutOnlyOnRequests() {
        let block = EmbeddedSession.headerBlock([("smsg-timeout-ms", "100")])
        for flags: DataFlags in [[.headers], [.headers, .response], [.headers, .ackRequested]] {
            let frame = Frame(type: .data, flags: flags.rawValue, id: 1, payload: dataPayload(block))
            #expect(violation(frame) != nil, "\(flags)")
        }
    }

    @Test("a received block: the headers in order without the reserved ones, and the timeout")
    func readBlock() throws {
        let frame = EmbeddedSession.dataFrame(
            body: "body",
            flags: .request,
            id: 1,
            headers: [("trace", "abc"), ("smsg-timeout-ms", "1500"), ("smsg-later", "x"), ("a", "")]
        )
        #expect(violation(frame) == nil)
        let message = Message(dataFrame: frame, now: .uptimeNanoseconds(1_000))
        #expect(message.headers.entries == [.init(name: "trace", value: "abc"), .init(name: "a", value: "")])
        #expect(message.timeout == .milliseconds(1500))
        #expect(message.deadline == .uptimeNanoseconds(1_000) + .milliseconds(1500))
        #expect(String(buffer: message.body) == "body")
    }

    @Test("headers round-trip through the outbound encoder")
    func encodeDecode() throws {
        var batch = FrameBatch()
        let headers: MessageHeaders = ["x-one": "1", "x-two": "zwei ✓"]
        _ = batch.writeData(
            topic: "t",
            body: ByteBuffer(string: "b"),
            flags: .response,
            id: 4,
            headers: headers,
            allocator: ByteBufferAllocator()
        )
        let batched = batch.take()
        let taken = try #require(batched)
        var bytes = taken.0
        let frame = try #require(try FrameAssembler(extensions: [.headers]).decodeFrame(&bytes))
        #expect(DataFlags(rawValue: frame.flags) == [.response, .headers])
        let message = Message(dataFrame: frame)
        #expect(message.headers == headers)
        #expect(String(buffer: message.body) == "b")
    }

    @Test("headers an application may not send: bad or reserved names, or more than 16,384 bytes")
    func sendingChecks() {
        #expect(throws: MessagingError.self) { try (["Bad": "x"] as MessageHeaders).validateForSending() }
        #expect(throws: MessagingError.self) { try (["smsg-timeout-ms": "5"] as MessageHeaders).validateForSending() }
        let big = MessageHeaders([("a", String(repeating: "x", count: 16_380))])
        #expect(throws: Never.self) { try big.validateForSending() }
        #expect(throws: MessagingError.self) { try big.validateForSending(extraBytes: 1) }
    }
}

@Suite("Extensions: the session")
struct ExtensionSessionTests {
    /// A server session whose peer lists every extension.
    static func server(receiver: CountingReceiver? = nil) throws -> EmbeddedSession {
        let side = try EmbeddedSession(receiver: receiver)
        try side.open(extensions: ["headers", "status", "cancel"])
        return side
    }

    /// A client session whose server lists `extensions`.
    static func client(extensions: [String]? = ["headers", "status", "cancel"]) throws -> EmbeddedSession {
        let side = try EmbeddedSession(role: .client)
        try side.openAsClient(extensions: extensions)
        return side
    }

    static func request(
        _ side: EmbeddedSession,
        timeout: TimeAmount,
        headers: MessageHeaders = MessageHeaders()
    ) -> EventLoopPromise<Message> {
        let response = side.channel.embeddedEventLoop.makePromise(of: Message.self)
        side.handler.send(
            OutboundMessage(
                topic: "q",
                body: ByteBuffer(string: "?"),
                flags: .request,
                kind: .request(deadline: side.now + timeout, response: response),
                headers: headers
            )
        )
        side.channel.embeddedEventLoop.run()
        return response
    }

    static func outcome(_ promise: EventLoopPromise<Message>) -> Result<Message, any Error>? {
        let outcome = NIOLockedValueBox<Result<Message, any Error>?>(nil)
        promise.futureResult.whenComplete { result in outcome.withLockedValue { $0 = result } }
        return outcome.withLockedValue { $0 }
    }

    @Test("a REQUEST carries its headers and the time left as smsg-timeout-ms")
    func requestHeaders() throws {
        let side = try Self.client()
        _ = Self.request(side, timeout: .milliseconds(2_500), headers: ["trace": "t-1"])
        let frame = try #require(try side.written().first)
        #expect(DataFlags(rawValue: frame.flags) == [.request, .headers])
        var payload = frame.payload
        payload.moveReaderIndex(forwardBy: 2)
        let received = try MessageHeaders.readBlock(&payload, isRequest: true, keep: true)
        #expect(received.headers == ["trace": "t-1"])
        #expect(received.timeoutMilliseconds == 2_500)
        #expect(String(buffer: payload) == "?")
    }

    @Test("without the headers extension a REQUEST is plain smsg/1, and headers are refused")
    func requestWithoutHeaders() throws {
        let side = try Self.client(extensions: nil)
        _ = Self.request(side, timeout: .seconds(1))
        #expect(try side.written().map { DataFlags(rawValue: $0.flags) } == [.request])
        let refused = Self.request(side, timeout: .seconds(1), headers: ["trace": "t-1"])
        guard case .failure(let error as MessagingError)? = Self.outcome(refused) else {
            Issue.record("headers without the extension must be refused")
            return
        }
        #expect(error.code == .extensionNotInForce)
        #expect(try side.written().isEmpty)
    }

    @Test("at its deadline a sent REQUEST fails and is CANCELled; its late RESPONSE is ignored")
    func timeoutCancels() throws {
        let side = try Self.client()
        let response = Self.request(side, timeout: .seconds(3))
        let request = try #require(try side.written().first)
        side.advance(.milliseconds(2_999))
        #expect(Self.outcome(response) == nil)
        #expect(try side.written().isEmpty)
        side.advance(.milliseconds(1))
        guard case .failure(let error as MessagingError)? = Self.outcome(response) else {
            Issue.record("expected a timeout")
            return
        }
        #expect(error.code == .requestTimedOut)
        let cancel = try side.written()
        #expect(cancel.map(\.type) == [.cancel])
        #expect(cancel.first?.id == request.id)
        try side.receive(EmbeddedSession.dataFrame(flags: .response, id: request.id))
        #expect(!side.isClosed)
        #expect(try side.written().isEmpty)
    }

    @Test("without the cancel extension a timed-out REQUEST sends no CANCEL")
    func timeoutWithoutCancel() throws {
        let side = try Self.client(extensions: ["headers", "status"])
        let response = Self.request(side, timeout: .seconds(1))
        _ = try side.written()
        side.advance(.seconds(1))
        #expect(Self.outcome(response) != nil)
        #expect(try side.written().isEmpty)
    }

    @Test("a REQUEST parked behind SLOW_DOWN times out from the call, and is then never sent")
    func parkedRequestTimesOut() throws {
        let side = try Self.client()
        var slowDown = ByteBuffer()
        slowDown.writeInteger(FlowSignal.slowDown.rawValue)
        try side.receive(Frame(type: .flow, payload: slowDown))
        let response = Self.request(side, timeout: .seconds(2))
        #expect(try side.written().isEmpty)
        side.advance(.seconds(2))
        guard case .failure(let error as MessagingError)? = Self.outcome(response) else {
            Issue.record("expected a timeout")
            return
        }
        #expect(error.code == .requestTimedOut)
        var resume = ByteBuffer()
        resume.writeInteger(FlowSignal.resume.rawValue)
        try side.receive(Frame(type: .flow, payload: resume))
        side.channel.embeddedEventLoop.run()
        #expect(try side.written().isEmpty, "neither the request nor a CANCEL goes out")
        #expect(!side.session.isSendBlocked)
    }

    @Test("a send parked behind SLOW_DOWN whose caller gives up is never sent")
    func parkedSendAbandoned() throws {
        let side = try Self.client()
        var slowDown = ByteBuffer()
        slowDown.writeInteger(FlowSignal.slowDown.rawValue)
        try side.receive(Frame(type: .flow, payload: slowDown))
        let written = side.channel.embeddedEventLoop.makePromise(of: Void.self)
        side.handler.send(
            OutboundMessage(topic: "t", body: ByteBuffer(), flags: [], kind: .send(mayWait: true), written: written)
        )
        let kept = side.channel.embeddedEventLoop.makePromise(of: Void.self)
        side.handler.send(
            OutboundMessage(topic: "kept", body: ByteBuffer(), flags: [], kind: .send(mayWait: true), written: kept)
        )
        side.handler.abandon(waiter: ObjectIdentifier(written.futureResult), because: CancellationError())
        let failed = NIOLockedValueBox(false)
        written.futureResult.whenFailure { _ in failed.withLockedValue { $0 = true } }
        #expect(failed.withLockedValue { $0 })
        var resume = ByteBuffer()
        resume.writeInteger(FlowSignal.resume.rawValue)
        try side.receive(Frame(type: .flow, payload: resume))
        side.channel.embeddedEventLoop.run()
        let sent = try side.written()
        #expect(sent.map { Message(dataFrame: $0).topic } == ["kept"])
        #expect(sent.first?.id == 1, "the dropped send took no sequence number")
    }

    @Test("CANCEL goes out while DATA is paused by SLOW_DOWN")
    func cancelWhilePaused() throws {
        let side = try Self.client()
        let response = Self.request(side, timeout: .seconds(1))
        let request = try #require(try side.written().first)
        var slowDown = ByteBuffer()
        slowDown.writeInteger(FlowSignal.slowDown.rawValue)
        try side.receive(Frame(type: .flow, payload: slowDown))
        side.advance(.seconds(1))
        #expect(Self.outcome(response) != nil)
        let written = try side.written()
        #expect(written.map(\.type) == [.cancel])
        #expect(written.first?.id == request.id)
    }

    @Test("a FAILED RESPONSE fails the request with its code and message")
    func failedResponse() throws {
        let side = try Self.client()
        let response = Self.request(side, timeout: .seconds(5))
        let request = try #require(try side.written().first)
        let payload = dataPayload(topic: "q", failedBody(code: 6, message: Array("no such user".utf8)))
        try side.receive(
            Frame(type: .data, flags: DataFlags([.response, .failed]).rawValue, id: request.id, payload: payload)
        )
        guard case .success(let message)? = Self.outcome(response) else {
            Issue.record("the RESPONSE completes the request's promise")
            return
        }
        #expect(message.failure == RequestError(.invalidArgument, "no such user"))
        #expect(message.body.readableBytes == 0)
    }

    @Test("a REQUEST's headers and timeout reach the responder; smsg- ones are not among its headers")
    func responderSees() throws {
        let receiver = CountingReceiver()
        let side = try Self.server(receiver: receiver)
        let start = side.now
        try side.receive(side.data(flags: .request, headers: [("smsg-timeout-ms", "750"), ("trace", "x")]))
        let message = try #require(receiver.messages.first)
        #expect(message.timeout == .milliseconds(750))
        #expect(message.deadline == start + .milliseconds(750))
        #expect(message.headers == ["trace": "x"])
    }

    @Test("an answer that failed: FAILED with code and message where status is in force, else an empty RESPONSE")
    func respondFailure() throws {
        let receiver = CountingReceiver()
        let side = try Self.server(receiver: receiver)
        try side.receive(side.data(topic: "q", flags: .request))
        let request = try #require(receiver.messages.first)
        #expect(
            LoopSession(handler: side.handler).respond(to: request, failure: RequestError(.permissionDenied, "not you"))
        )
        side.channel.embeddedEventLoop.run()
        let answer = try #require(try side.written().first)
        #expect(DataFlags(rawValue: answer.flags) == [.response, .failed])
        #expect(answer.id == request.id)
        #expect(Message(dataFrame: answer).failure == RequestError(.permissionDenied, "not you"))
        #expect(Message(dataFrame: answer).topic == "q")

        let plainReceiver = CountingReceiver()
        let plain = try EmbeddedSession(receiver: plainReceiver)
        try plain.open()
        try plain.receive(plain.data(topic: "q", flags: .request))
        let plainRequest = try #require(plainReceiver.messages.first)
        #expect(LoopSession(handler: plain.handler).respond(to: plainRequest, failure: RequestError(.failed, "x")))
        plain.channel.embeddedEventLoop.run()
        let plainAnswer = try #require(try plain.written().first)
        #expect(DataFlags(rawValue: plainAnswer.flags) == [.response])
        #expect(Message(dataFrame: plainAnswer).body.readableBytes == 0)
    }

    @Test("CANCEL: no RESPONSE is owed any more, and one for an id not being served is ignored")
    func cancelReceived() throws {
        let receiver = CountingReceiver()
        let side = try Self.server(receiver: receiver)
        try side.receive(side.data(topic: "q", flags: .request))
        let request = try #require(receiver.messages.first)
        try side.receive(Frame(type: .cancel, id: 99))
        try side.receive(Frame(type: .cancel, id: request.id))
        #expect(!side.isClosed)
        #expect(try side.written().isEmpty)
        #expect(!LoopSession(handler: side.handler).respond(to: request, body: ByteBuffer(string: "late")))
        #expect(try side.written().isEmpty)
    }

    @Test("GOODBYE waiting for an owed RESPONSE is answered once the request is CANCELled")
    func cancelReleasesGoodbye() throws {
        let side = try Self.server()
        try side.receive(side.data(topic: "q", flags: .request))
        try side.receive(Frame(type: .goodbye))
        #expect(try side.written().isEmpty, "the RESPONSE is owed first")
        try side.receive(Frame(type: .cancel, id: 1))
        #expect(try side.written().map(\.type) == [.goodbye])
    }

    @Test("a CANCEL wakes everyone who waits for it, and one that came first is kept for later waiters")
    func cancelWakes() async throws {
        let receiver = CountingReceiver()
        let side = try Self.server(receiver: receiver)
        for _ in 0..<3 {
            try side.receive(side.data(topic: "q", flags: .request))
        }
        let (first, second, third) = (receiver.messages[0], receiver.messages[1], receiver.messages[2])
        try side.receive(Frame(type: .cancel, id: first.id))
        let session = side.session
        #expect(await session.waitForCancellation(of: first))
        #expect(await session.waitForCancellation(of: first), "kept until the request is answered")
        let waiting = (0..<2).map { _ in Task { await session.waitForCancellation(of: second) } }
        while session.cancelWaiterCount < 2 { await Task.yield() }
        try side.receive(Frame(type: .cancel, id: second.id))
        for waiter in waiting {
            #expect(await waiter.value)
        }
        let cancelled = Task { await session.waitForCancellation(of: third) }
        while session.cancelWaiterCount < 1 { await Task.yield() }
        cancelled.cancel()
        #expect(await cancelled.value == false, "a cancelled waiter returns false")
        #expect(session.cancelWaiterCount == 0)
    }
}
