import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Messaging

/// A session handler on an `EmbeddedChannel`: time is the embedded loop's, moved on with
/// ``advance(_:)``; frames go in with ``receive(_:)`` and come out with ``written()``.
///
/// Below the handler sits a recorder of half-closes: a real socket shuts down its writing side
/// and goes on reading, where an `EmbeddedChannel` would close at once.
final class EmbeddedSession {
    let channel: EmbeddedChannel
    let session: Session
    let handler: SessionHandler
    let halfClose = HalfCloseRecorder()
    /// Reads what the handler writes, whatever extensions it uses.
    private var output = FrameAssembler(maxFrame: 1 << 24, extensions: .all)
    private var nextPeerSequence: UInt64 = 1

    init(
        role: SessionStateMachine.Role = .server,
        configuration: SessionConfiguration = SessionConfiguration(),
        receiver: (any MessageReceiver)? = nil
    ) throws {
        self.channel = EmbeddedChannel()
        self.session = Session(
            channel: self.channel,
            sessionID: role == .server ? "s-1" : nil,
            configuration: configuration
        )
        let hello = configuration.makeHello(
            nodeID: role == .server ? "server" : "client",
            role: role == .server ? "server" : "client",
            metadata: [:],
            sessionID: role == .server ? "s-1" : nil
        )
        self.handler = SessionHandler(
            role: role,
            hello: hello,
            configuration: configuration,
            session: self.session,
            waitsForReadyEvent: false,
            receiver: receiver,
            logger: quietLogger
        )
        self.session.attach(self.handler)
        try self.channel.pipeline.syncOperations.addHandlers(self.halfClose, self.handler)
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    /// The time on the channel's loop.
    var now: NIODeadline { self.channel.embeddedEventLoop.now }

    func advance(_ amount: TimeAmount) {
        self.channel.embeddedEventLoop.advanceTime(by: amount)
    }

    /// Server: the peer's HELLO (listing `extensions`, when given) arrives and ours goes out.
    func open(peerHeartbeatMilliseconds: Int? = nil, extensions: [String]? = nil) throws {
        try self.receive(
            Frame(
                type: .hello,
                payload: ByteBuffer(
                    bytes: Hello(
                        nodeID: "peer-1",
                        role: "test",
                        heartbeatMilliseconds: peerHeartbeatMilliseconds,
                        extensions: extensions
                    ).encoded()
                )
            )
        )
        let reply = try self.written()
        #expect(reply.map(\.type) == [.hello])
        #expect(self.session.currentState == .open)
    }

    /// Client: the server's HELLO (listing `extensions`, when given) arrives; the session opens.
    func openAsClient(extensions: [String]? = nil) throws {
        #expect(try self.written().map(\.type) == [.hello])
        let hello = Hello(nodeID: "server", role: "server", sessionID: "s-9", extensions: extensions)
        try self.receive(Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded())))
        #expect(self.session.currentState == .open)
    }

    /// Bytes from the peer.
    func receive(bytes: ByteBuffer) throws {
        try self.channel.writeInbound(bytes)
    }

    func receive(_ frames: Frame...) throws {
        try self.receive(frames: frames)
    }

    /// Frames from the peer, all in one read.
    func receive(frames: [Frame]) throws {
        var bytes = ByteBuffer()
        for frame in frames {
            FrameEncoder().encode(frame, allocator: self.channel.allocator) { part in
                var part = part
                bytes.writeBuffer(&part)
            }
        }
        try self.receive(bytes: bytes)
    }

    /// A DATA frame from the peer, numbered in sequence; with `headers` (in order, as given)
    /// it has the HEADERS flag and a header block.
    func data(
        topic: String = "t",
        body: String = "",
        flags: DataFlags = [],
        headers: [(String, String)]? = nil
    ) -> Frame {
        defer { self.nextPeerSequence += 1 }
        return Self.dataFrame(topic: topic, body: body, flags: flags, id: self.nextPeerSequence, headers: headers)
    }

    /// A DATA frame (a RESPONSE takes the id it answers); see ``data(topic:body:flags:headers:)``.
    static func dataFrame(
        topic: String = "t",
        body: String = "",
        flags: DataFlags = [],
        id: UInt64,
        headers: [(String, String)]? = nil
    ) -> Frame {
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(topic.utf8.count))
        payload.writeString(topic)
        var flags = flags
        if let headers {
            flags.insert(.headers)
            var block = Self.headerBlock(headers)
            payload.writeBuffer(&block)
        }
        payload.writeString(body)
        return Frame(type: .data, flags: flags.rawValue, id: id, payload: payload)
    }

    /// A header block: `block_len`, then each entry as given (nothing is checked).
    static func headerBlock(_ headers: [(String, String)]) -> ByteBuffer {
        var entries = ByteBuffer()
        for (name, value) in headers {
            entries.writeInteger(UInt8(name.utf8.count))
            entries.writeString(name)
            entries.writeInteger(UInt16(value.utf8.count))
            entries.writeString(value)
        }
        var block = ByteBuffer()
        block.writeInteger(UInt16(entries.readableBytes))
        block.writeBuffer(&entries)
        return block
    }

    /// The frames the handler wrote since the last call.
    func written() throws -> [Frame] {
        while let bytes = try self.channel.readOutbound(as: ByteBuffer.self) {
            self.output.append(bytes)
        }
        var frames: [Frame] = []
        while case .frame(let frame) = try self.output.next() {
            frames.append(frame)
        }
        return frames
    }

    /// The ERROR code among `frames`, if one was written.
    static func errorCode(in frames: [Frame]) -> ErrorCode? {
        guard let error = frames.first(where: { $0.type == .error }) else { return nil }
        return ErrorCode(rawValue: error.payload.getInteger(at: error.payload.readerIndex, as: UInt16.self)!)
    }

    var isClosed: Bool { !self.channel.isActive }
}

/// Swallows and counts half-closes (`close(mode: .output)`), as a socket that shuts down its
/// writing side and keeps reading.
final class HalfCloseRecorder: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    private(set) var outputClosed = false

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output {
            self.outputClosed = true
            promise?.succeed(())
        } else {
            context.close(mode: mode, promise: promise)
        }
    }
}

/// Counts what a receiver is handed, on the event loop.
final class CountingReceiver: MessageReceiver {
    private(set) var messages: [Message] = []

    func received(_ message: Message, session: LoopSession) {
        self.messages.append(message)
    }
}
