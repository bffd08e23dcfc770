import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import SecureTransport

/// What one end of a test connection saw, in order.
enum PeerEvent: Sendable {
    case handshake(TLSHandshakeInfo)
    case error(any Error)
    case closed
}

/// A thread-safe record of a peer's events and received bytes, with polling waits.
final class PeerLog: Sendable {
    private let state = NIOLockedValueBox<(events: [PeerEvent], bytes: ByteBuffer)>(([], ByteBuffer()))

    func record(_ event: PeerEvent) {
        self.state.withLockedValue { $0.events.append(event) }
    }

    func receive(_ buffer: ByteBuffer) {
        var buffer = buffer
        self.state.withLockedValue { _ = $0.bytes.writeBuffer(&buffer) }
    }

    var events: [PeerEvent] { self.state.withLockedValue { $0.events } }
    var bytes: ByteBuffer { self.state.withLockedValue { $0.bytes } }

    var handshake: TLSHandshakeInfo? {
        for case .handshake(let info) in self.events { return info }
        return nil
    }

    var tlsErrors: [TLSError] {
        self.events.compactMap { event in
            if case .error(let error as TLSError) = event { return error }
            return nil
        }
    }

    var isClosed: Bool {
        self.events.contains { if case .closed = $0 { true } else { false } }
    }

    /// Polls until `condition` holds; records an issue and returns false after `timeout` seconds.
    @discardableResult
    func wait(
        _ what: String,
        timeout: Double = 10,
        sourceLocation: SourceLocation = #_sourceLocation,
        until condition: (PeerLog) -> Bool
    ) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if condition(self) { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        if condition(self) { return true }
        Issue.record("timed out waiting for \(what); events: \(self.events)", sourceLocation: sourceLocation)
        return false
    }
}

/// Records everything that reaches the top of a pipeline; echoes data back when `echo` is set.
final class RecordingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let log: PeerLog
    private let echo: Bool

    init(log: PeerLog, echo: Bool) {
        self.log = log
        self.echo = echo
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSHandshakeCompleted {
            self.log.record(.handshake(event.info))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.log.receive(buffer)
        if self.echo {
            context.write(data, promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.echo {
            context.flush()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.log.record(.error(error))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.log.record(.closed)
    }
}

/// A TLS echo server on 127.0.0.1 with an ephemeral port; each accepted connection's events
/// go to `logs` in accept order.
final class LoopbackServer: Sendable {
    let channel: any Channel
    let port: Int
    private let acceptedLogs: NIOLockedValueBox<[PeerLog]>

    var logs: [PeerLog] { self.acceptedLogs.withLockedValue { $0 } }

    static func start(
        group: any EventLoopGroup,
        context tlsContext: TLSContext?,
        handshakeTimeout: Duration? = .seconds(10)
    ) async throws -> LoopbackServer {
        let logs = NIOLockedValueBox<[PeerLog]>([])
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let log = PeerLog()
                    logs.withLockedValue { $0.append(log) }
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(context: tlsContext, handshakeTimeout: handshakeTimeout)
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(log: log, echo: true))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return LoopbackServer(channel: channel, port: channel.localAddress!.port!, logs: logs)
    }

    private init(channel: any Channel, port: Int, logs: NIOLockedValueBox<[PeerLog]>) {
        self.channel = channel
        self.port = port
        self.acceptedLogs = logs
    }

    /// Waits until `count` connections were accepted and returns the log of the last of them.
    func acceptedLog(count: Int = 1) async -> PeerLog? {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let logs = self.logs
            if logs.count >= count { return logs[count - 1] }
            try? await Task.sleep(for: .milliseconds(5))
        }
        Issue.record("server accepted \(self.logs.count) connections, expected \(count)")
        return nil
    }

    func close() async throws {
        try await self.channel.close()
    }
}

/// A client connection to 127.0.0.1:`port` with a TLSHandler and a recording handler.
struct LoopbackClient: Sendable {
    let channel: any Channel
    let log: PeerLog
    let gate: WriteGate

    static func connect(
        group: any EventLoopGroup,
        port: Int,
        context tlsContext: TLSContext?,
        serverHostname: String = "localhost",
        resumptionKey: String? = nil
    ) async throws -> LoopbackClient {
        let log = PeerLog()
        let gate = WriteGate()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(gate)
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(
                                context: tlsContext,
                                serverHostname: serverHostname,
                                resumptionKey: resumptionKey
                            )
                        )
                    }
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(log: log, echo: false))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return LoopbackClient(channel: channel, log: log, gate: gate)
    }

    /// From now on, bytes written below the TLS handler never reach the socket.
    func dropOutgoingBytes() async throws {
        self.gate.isOpen.store(false, ordering: .sequentiallyConsistent)
    }

    func send(_ buffer: ByteBuffer) async throws {
        try await self.channel.writeAndFlush(buffer)
    }
}

/// One event loop group for all tests in the process.
let testGroup = MultiThreadedEventLoopGroup.singleton

/// Sits under the TLS handler; once closed it swallows outgoing bytes (reporting success),
/// so a test can close a TLS connection without its close_notify reaching the peer.
final class WriteGate: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let isOpen = Atomic<Bool>(true)

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if self.isOpen.load(ordering: .sequentiallyConsistent) {
            context.write(data, promise: promise)
        } else {
            promise?.succeed(())
        }
    }
}
