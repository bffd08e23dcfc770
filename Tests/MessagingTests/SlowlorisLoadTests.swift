import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SMSGTestSupport
import SecureTransport
import Testing

@testable import Messaging

/// Does nothing with what it reads; the connection is only held open.
private final class Idle: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
}

/// Slowloris and connection floods against a TLS server with short timeouts, while a
/// well-behaved client keeps using it. Heavy: runs in the load phase.
@Suite("Slowloris and floods (load)")
struct SlowlorisLoadTests {
    static let handshakeTimeout: Duration = .seconds(1)
    static let helloTimeout: Duration = .seconds(1)

    /// Opens `count` TCP connections, `build` setting up each one's pipeline.
    static func flood(
        port: Int,
        count: Int,
        _ build: @escaping @Sendable (any Channel) throws -> Void
    ) async throws -> [(channel: any Channel, opened: NIODeadline)] {
        var channels: [(channel: any Channel, opened: NIODeadline)] = []
        for _ in 0..<count {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try build(channel) }
                }
                .connect(host: "127.0.0.1", port: port)
                .get()
            channels.append((channel, NIODeadline.now()))
        }
        return channels
    }

    @Test(
        "1,000 connections that never handshake, never say HELLO or trickle a byte a second are all closed in time; a good client carries on"
    )
    func slowloris() async throws {
        var configuration = ServerConfiguration()
        configuration.maxConnections = 2_000
        configuration.session.helloTimeout = Self.helloTimeout
        let serverTLS = TLSConfiguration.makeServerConfiguration(
            certificateChain: .file(Certificates.path("server.pem")),
            privateKey: .file(Certificates.path("server.key"))
        )
        let server = SecureMessagingServer(
            configuration: configuration,
            transport: try TLSTransport(configuration: serverTLS, handshakeTimeout: Self.handshakeTimeout),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!
        let good = try await connect(.tls, port: port, nodeID: "good")

        let clientContext = try TLSContext(
            configuration: .makeClientConfiguration(trustRoots: .file(Certificates.path("ca.pem")))
        )
        // Never send a byte: the TLS handshake timeout closes them.
        let silent = try await Self.flood(port: port, count: 400) { channel in
            try channel.pipeline.syncOperations.addHandler(Idle())
        }
        // Complete the TLS handshake, then say nothing: the HELLO timeout closes them.
        let mute = try await Self.flood(port: port, count: 300) { channel in
            try channel.pipeline.syncOperations.addHandlers(
                TLSHandler(context: clientContext, serverHostname: "localhost"),
                Idle()
            )
        }
        // One byte of a TLS record header a second: the handshake never completes in time.
        let trickle = try await Self.flood(port: port, count: 300) { channel in
            try channel.pipeline.syncOperations.addHandler(Idle())
            _ = channel.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(1)) { task in
                guard channel.isActive else {
                    task.cancel()
                    return
                }
                channel.writeAndFlush(ByteBuffer(bytes: [0x16]), promise: nil)
            }
        }
        let bad = silent + mute + trickle
        #expect(bad.count == 1_000)

        // Meanwhile the good client's requests keep succeeding, each well within a second.
        for index in 0..<50 {
            let sent = NIODeadline.now()
            let reply = try await good.request(topic: "rtt", body: ByteBuffer(string: "\(index)"), timeout: .seconds(1))
            #expect(String(buffer: reply.body) == "\(index)")
            #expect(NIODeadline.now() - sent < .seconds(1))
            try await Task.sleep(for: .milliseconds(20))
        }

        // Every bad connection is closed by the server within the timeouts (counted from its
        // own opening) plus slack: the load suites share two cores and one process, and
        // timers fire late under that load. Without the timeouts none would ever close.
        let allowance = TimeAmount(Self.handshakeTimeout + Self.helloTimeout + .seconds(20))
        for (channel, opened) in bad {
            let remaining = opened + allowance - NIODeadline.now()
            let closed = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    try await channel.closeFuture.get()
                    return true
                }
                group.addTask {
                    try await Task.sleep(for: .nanoseconds(max(remaining.nanoseconds, 0)))
                    return false
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
            #expect(closed, "a bad connection outlived the timeouts")
            if !closed {
                try? await channel.close()
            }
        }
        await eventually("only the good session left") { server.activeSessionCount == 1 }
        let reply = try await good.request(topic: "after", body: ByteBuffer(string: "ok"))
        #expect(String(buffer: reply.body) == "ok")
        await good.close()
        server.shutdown()
        try await running.value
    }

    @Test("a flood beyond the connection limit is refused; the sessions inside it carry on")
    func floodBeyondLimit() async throws {
        var configuration = ServerConfiguration()
        configuration.maxConnections = 100
        configuration.session.helloTimeout = Self.helloTimeout
        try await withServer(.plaintext, configuration: configuration) { server, port in
            let good = try await connect(.plaintext, port: port, nodeID: "good")
            let refusedCount = NIOLockedValueBox(0)
            let flood = try await Self.flood(port: port, count: 300) { channel in
                try channel.pipeline.syncOperations.addHandler(Idle())
                channel.closeFuture.whenComplete { _ in refusedCount.withLockedValue { $0 += 1 } }
            }
            #expect(server.activeSessionCount <= 100)
            // The 201 beyond the limit are answered SERVER_BUSY and closed at once (the rest
            // by the HELLO timeout later).
            await eventually("the excess refused") { refusedCount.withLockedValue { $0 } >= 201 }
            let reply = try await good.request(topic: "during", body: ByteBuffer(string: "ok"))
            #expect(String(buffer: reply.body) == "ok")
            await eventually("every flood connection closed", timeout: .seconds(15)) {
                refusedCount.withLockedValue { $0 } == flood.count
            }
            await eventually("only the good session left") { server.activeSessionCount == 1 }
            await good.close()
        }
    }
}
