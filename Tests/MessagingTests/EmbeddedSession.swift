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
    private var output = FrameAssembler(maxFrame: 1 << 24)
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

    /// Server: the peer's HELLO arrives and ours goes out.
    func open(peerHeartbeatMilliseconds: Int? = nil) throws {
        try self.receive(
            Frame(
                type: .hello,
                payload: ByteBuffer(
                    bytes: Hello(nodeID: "peer-1", role: "test", heartbeatMilliseconds: peerHeartbeatMilliseconds)
                        .encoded()
                )
            )
        )
        let reply = try self.written()
        #expect(reply.map(\.type) == [.hello])
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

    /// A DATA frame from the peer, numbered in sequence.
    func data(topic: String = "t", body: String = "", flags: DataFlags = []) -> Frame {
        defer { self.nextPeerSequence += 1 }
        var payload = ByteBuffer()
        payload.writeInteger(UInt8(topic.utf8.count))
        payload.writeString(topic)
        payload.writeString(body)
        return Frame(type: .data, flags: flags.rawValue, id: self.nextPeerSequence, payload: payload)
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
