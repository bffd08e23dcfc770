import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import SMSGTestSupport
import Testing

@testable import Messaging

/// Echoes on the event loop, as `securemsg bench server` does, and counts what it saw.
final class LoopEcho: MessageReceiver {
    let seen: NIOLockedValueBox<[String]>
    var opened = false

    init(seen: NIOLockedValueBox<[String]> = NIOLockedValueBox([])) {
        self.seen = seen
    }

    func sessionOpened(_ session: LoopSession) {
        self.opened = true
    }

    func received(_ message: Message, session: LoopSession) {
        self.seen.withLockedValue { $0.append(String(buffer: message.body)) }
        if message.isRequest {
            session.respond(to: message, body: message.body)
        } else {
            session.send(topic: message.topic, body: message.body)
        }
    }
}

/// Counts the `read` calls that reach the transport.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var reads = 0

    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

/// A server-side session handler on an EmbeddedChannel, with a receiver and a read counter
/// below it, opened by a client HELLO.
func embeddedServerSession(receiver: any MessageReceiver) throws -> (EmbeddedChannel, ReadCounter) {
    let channel = EmbeddedChannel()
    let configuration = SessionConfiguration()
    let session = Session(channel: channel, sessionID: "s-1", configuration: configuration)
    let handler = SessionHandler(
        role: .server,
        hello: configuration.makeHello(nodeID: "server", role: "server", metadata: [:], sessionID: "s-1"),
        configuration: configuration,
        session: session,
        waitsForReadyEvent: false,
        receiver: receiver,
        logger: quietLogger
    )
    session.attach(handler)
    let counter = ReadCounter()
    try channel.pipeline.syncOperations.addHandlers(counter, handler)
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    let hello = Hello(nodeID: "client-1", role: "test", heartbeatMilliseconds: nil)
    try channel.writeInbound(rawFrame(type: 0x01, payload: hello.encoded()))
    return (channel, counter)
}

/// Every frame in `buffer`.
func frames(in buffer: ByteBuffer) throws -> [Frame] {
    var buffer = buffer
    var frames: [Frame] = []
    while let frame = try FrameAssembler().decodeFrame(&buffer) {
        frames.append(frame)
    }
    #expect(buffer.readableBytes == 0)
    return frames
}

@Suite("Message receivers")
struct ReceiverTests {
    @Test("a receiver answers on the event loop: DATA, REQUEST, ACK, and in order", arguments: TransportKind.allCases)
    func echo(kind: TransportKind) async throws {
        let seen = NIOLockedValueBox<[String]>([])
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(),
            transport: try Certificates.serverTransport(kind),
            logger: quietLogger,
            receiver: { _ in LoopEcho(seen: seen) }
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!
        let client = try await connect(kind, port: port)

        let reply = try await client.request(topic: "question", body: ByteBuffer(string: "42?"))
        #expect(reply.isResponse && String(buffer: reply.body) == "42?")
        try await client.send(topic: "acked", body: ByteBuffer(string: "a"), ackRequested: true)
        await eventually("ACK") { client.session.acksReceived == 1 }

        let count = 500
        for index in 0..<count {
            try await client.send(topic: "seq", body: ByteBuffer(string: "\(index)"))
        }
        var echoes: [String] = []
        for try await message in client.messages {
            echoes.append(String(buffer: message.body))
            if echoes.count == count + 1 { break }
        }
        #expect(echoes == ["a"] + (0..<count).map { "\($0)" })
        #expect(seen.withLockedValue { $0 } == ["42?", "a"] + (0..<count).map { "\($0)" })

        await client.close()
        server.shutdown()
        try await running.value
    }

    @Test("the answers to a burst of frames leave in one write")
    func burstLeavesInOneWrite() throws {
        let echo = LoopEcho()
        let (channel, _) = try embeddedServerSession(receiver: echo)
        #expect(echo.opened)
        var outbound: [ByteBuffer] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            outbound.append(buffer)
        }
        #expect(try outbound.flatMap { try frames(in: $0) }.map(\.type) == [.hello])

        // 50 DATA frames arrive in one read.
        var burst = ByteBuffer()
        for id in 1...50 {
            var frame = rawFrame(
                type: 0x02,
                id: UInt64(id),
                payload: dataPayload(topic: "t", body: Array("\(id)".utf8))
            )
            burst.writeBuffer(&frame)
        }
        try channel.writeInbound(burst)
        var writes: [ByteBuffer] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            writes.append(buffer)
        }
        #expect(writes.count == 1, "one write for the whole burst, not one per frame")
        let echoed = try writes.flatMap { try frames(in: $0) }
        #expect(echoed.count == 50)
        #expect(echoed.map(\.id) == Array(1...50), "the server numbers its own DATA in order")
        #expect(echoed.map { String(buffer: Message(dataFrame: $0).body) } == (1...50).map { "\($0)" })
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("frames split across reads are put back together")
    func splitFrames() throws {
        let echo = LoopEcho()
        let (channel, _) = try embeddedServerSession(receiver: echo)
        while try channel.readOutbound(as: ByteBuffer.self) != nil {}
        var bytes = ByteBuffer()
        for id in 1...3 {
            var frame = rawFrame(
                type: 0x02,
                id: UInt64(id),
                payload: dataPayload(topic: "t", body: Array("m\(id)".utf8))
            )
            bytes.writeBuffer(&frame)
        }
        // One byte at a time: every split point, header and payload alike.
        while let byte = bytes.readSlice(length: 1) {
            try channel.writeInbound(byte)
        }
        #expect(echo.seen.withLockedValue { $0 } == ["m1", "m2", "m3"])
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test("a receiver's session stops reading while the connection cannot take more output")
    func readsHeldWhileNotWritable() throws {
        let (channel, counter) = try embeddedServerSession(receiver: LoopEcho())
        let before = counter.reads
        channel.pipeline.read()
        #expect(counter.reads == before + 1)

        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.pipeline.read()
        #expect(counter.reads == before + 1, "no read while the peer does not take its answers")

        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(counter.reads == before + 2, "the held read goes out once writable again")
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}

@Suite("What a received message counts for in the inbound queue")
struct InboundSizeTests {
    @Test("a message counts its DATA payload: topic, header block and body")
    func countsHeaderBlock() {
        let plain = Message(topic: "t", body: ByteBuffer(string: "abc"))
        #expect(InboundQueue.size(of: plain) == 1 + 1 + 3)
        // block_len (2), then key_len (1) "key" (3), value_len (2) "value" (5).
        let withHeaders = Message(
            topic: "t",
            body: ByteBuffer(string: "abc"),
            flags: .headers,
            headers: ["key": "value"]
        )
        #expect(InboundQueue.size(of: withHeaders) == 1 + 1 + 2 + (1 + 3 + 2 + 5) + 3)
    }

    @Test("a received message counts its header block as it came, the protocol's own headers too")
    func countsWireBlock() {
        // A REQUEST with smsg-timeout-ms (kept out of `headers`) and one header of its own.
        var block = ByteBuffer()
        for (name, value) in [("smsg-timeout-ms", "5000"), ("key", "value")] {
            block.writeInteger(UInt8(name.utf8.count))
            block.writeString(name)
            block.writeInteger(UInt16(value.utf8.count))
            block.writeString(value)
        }
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(1))
        payload.writeString("t")
        payload.writeInteger(UInt16(block.readableBytes))
        payload.writeImmutableBuffer(block)
        payload.writeString("abc")
        let frame = Frame(type: .data, flags: DataFlags([.request, .headers]).rawValue, id: 1, payload: payload)
        let message = Message(dataFrame: frame)
        #expect(message.headers == ["key": "value"])
        #expect(InboundQueue.size(of: message) == payload.readableBytes)
    }
}
