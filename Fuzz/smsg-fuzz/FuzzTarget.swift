import Logging
import NIOCore
import NIOEmbedded

@testable import Messaging

/// What the fuzzer drives: bytes from a peer, as a server session receives them, through the
/// production path — the ``FrameAssembler`` and ``SessionStateMachine`` inside the real
/// ``SessionHandler`` on an `EmbeddedChannel`, with a receiver that answers every request and
/// echoes every message. The bytes arrive in pieces (the first input byte picks the piece
/// size, so split frames are covered too). Everything the handler writes back must assemble
/// into valid frames, and every frame the assembler accepts must encode back to itself. Any
/// trap or sanitizer report is a bug; a protocol violation is the expected answer to garbage.
enum FuzzTarget {
    static let configuration: SessionConfiguration = {
        var configuration = SessionConfiguration()
        configuration.maxFrame = Frame.minimumMaxFrame
        configuration.flowControl.highWatermarkMessages = 8
        configuration.flowControl.lowWatermarkMessages = 2
        return configuration
    }()
    static let hello = configuration.makeHello(nodeID: "server", role: "server", metadata: [:], sessionID: "s-1")
    static let logger = Logger(label: "smsg.fuzz", factory: { _ in SwiftLogNoOpLogHandler() })

    static func run(_ input: UnsafeRawBufferPointer) {
        guard let first = input.first else { return }
        let pieceSize = Int(first % 64) + 1
        let bytes = ByteBuffer(bytes: input.dropFirst())
        Self.checkRoundTrips(bytes)
        Self.driveHandler(bytes, pieceSize: pieceSize, receiver: first & 0x40 == 0)
    }

    /// Feeds the bytes to a server session handler and checks what it writes back.
    static func driveHandler(_ bytes: ByteBuffer, pieceSize: Int, receiver: Bool) {
        let channel = EmbeddedChannel()
        let session = Session(channel: channel, sessionID: "s-1", configuration: Self.configuration)
        let handler = SessionHandler(
            role: .server,
            hello: Self.hello,
            configuration: Self.configuration,
            session: session,
            waitsForReadyEvent: false,
            receiver: receiver ? Echo() : nil,
            logger: Self.logger
        )
        session.attach(handler)
        try! channel.pipeline.syncOperations.addHandler(handler)
        _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        // Whatever extensions the peer's HELLO put in force, our frames must assemble.
        var output = FrameAssembler(maxFrame: Int(UInt32.max), extensions: .all)
        var rest = bytes
        while rest.readableBytes > 0, channel.isActive {
            let piece = rest.readSlice(length: min(pieceSize, rest.readableBytes))!
            _ = try? channel.writeInbound(piece)
            Self.checkOutput(channel, &output)
        }
        // Time passes: heartbeats, the hello timeout, the drain and the ERROR linger fire.
        for _ in 0..<4 where channel.isActive {
            channel.embeddedEventLoop.advanceTime(by: .seconds(5))
            Self.checkOutput(channel, &output)
        }
        _ = try? channel.finish()
        // The pipeline lets go of its handlers (and the session of its channel) in a task of
        // the loop's: run it.
        channel.embeddedEventLoop.run()
    }

    /// Everything the handler wrote is a sequence of valid frames.
    static func checkOutput(_ channel: EmbeddedChannel, _ output: inout FrameAssembler) {
        while let written = try? channel.readOutbound(as: ByteBuffer.self) {
            output.append(written)
        }
        while true {
            do {
                guard case .frame = try output.next() else { return }
            } catch {
                preconditionFailure("the session wrote a frame that does not assemble: \(error)")
            }
        }
    }

    /// Every frame the assembler accepts (with every extension in force: HEADERS, FAILED and
    /// CANCEL are checked too) encodes back to bytes that assemble to the same frame.
    static func checkRoundTrips(_ bytes: ByteBuffer) {
        var assembler = FrameAssembler(maxFrame: Frame.minimumMaxFrame, extensions: .all)
        assembler.append(bytes)
        while case .frame(let frame)? = try? assembler.next() {
            var encoded = ByteBuffer()
            FrameEncoder().encode(frame, allocator: ByteBufferAllocator()) { part in
                var part = part
                encoded.writeBuffer(&part)
            }
            var again = FrameAssembler(maxFrame: Frame.minimumMaxFrame, extensions: .all)
            again.append(encoded)
            precondition((try? again.next()) == .frame(frame), "a decoded frame did not survive encoding")
        }
    }
}

/// Answers every REQUEST (with its headers back, or, when its body is empty, with a failure)
/// and echoes every other message, on the event loop.
final class Echo: MessageReceiver {
    func received(_ message: Message, session: LoopSession) {
        if message.isRequest {
            if message.body.readableBytes == 0 {
                session.respond(to: message, failure: RequestError(.invalidArgument, "empty"))
            } else {
                session.respond(to: message, headers: message.headers, body: message.body)
            }
        } else if !message.isResponse {
            session.send(topic: message.topic, body: message.body)
        }
    }
}
