import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import SMSGTestSupport
import Testing

@testable import Messaging

/// The server-side sessions a test handler saw, and a gate that holds their consumption.
final class SessionCapture: Sendable {
    private let sessions = NIOLockedValueBox<[Session]>([])
    private let gate = NIOLockedValueBox(false)

    var all: [Session] { self.sessions.withLockedValue { $0 } }

    func add(_ session: Session) {
        self.sessions.withLockedValue { $0.append(session) }
    }

    func open() {
        self.gate.withLockedValue { $0 = true }
    }

    /// Waits until `open()` (polling: tests only).
    func waitForGate() async {
        while !self.gate.withLockedValue({ $0 }) {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    func session(nodeID: String) -> Session? {
        self.all.first { $0.peer?.nodeID == nodeID }
    }
}

@Suite("Flow control and backpressure")
struct FlowControlTests {
    static func flowConfiguration(high: Int, low: Int) -> SessionConfiguration {
        var session = SessionConfiguration()
        session.flowControl.highWatermarkMessages = high
        session.flowControl.lowWatermarkMessages = low
        session.heartbeatInterval = .milliseconds(250)
        return session
    }

    @Test(
        "a flood meets SLOW_DOWN, heartbeats still flow, and everything arrives in order after RESUME",
        arguments: TransportKind.allCases
    )
    func backpressureWorks(kind: TransportKind) async throws {
        let capture = SessionCapture()
        let received = NIOLockedValueBox<[Int]>([])
        let configuration = serverConfiguration { $0.session = Self.flowConfiguration(high: 1000, low: 250) }
        let handler: SecureMessagingServer.Handler = { session in
            capture.add(session)
            await capture.waitForGate()
            for try await message in session.messages {
                received.withLockedValue { $0.append(Int(String(buffer: message.body))!) }
            }
        }
        try await withServer(kind, configuration: configuration, handler: handler) { _, port in
            let client = try await connect(kind, port: port) {
                $0.session.heartbeatInterval = .milliseconds(250)
            }
            let total = 2000
            let sender = Task {
                for index in 0..<total {
                    try await client.send(topic: "flood", body: ByteBuffer(string: "\(index)"))
                }
            }
            await eventually("SLOW_DOWN at the client", timeout: .seconds(30)) { client.session.slowDownsReceived >= 1 }
            let serverSession = try #require(capture.all.first)
            // The client stops sending DATA: once what was in flight has landed, the queue
            // settles between the high watermark and the hard limit, and the sender is suspended.
            await eventually("the sender suspended") { client.session.isSendBlocked }
            let queued = await settled("the server's queue") { serverSession.queuedMessageCount }
            #expect(queued >= 1000)
            #expect(queued < 2000)
            #expect(client.session.isSendBlocked)
            #expect(serverSession.peakQueuedBytes < 2 * (16 << 20))
            try await Task.sleep(for: .milliseconds(200))
            #expect(serverSession.queuedMessageCount == queued, "no DATA while paused")
            // Control frames still flow both ways while DATA is paused.
            await eventually("PING/PONG while paused") {
                client.session.lastRoundTrip != nil && serverSession.lastRoundTrip != nil
            }
            #expect(serverSession.queuedMessageCount == queued)

            capture.open()
            try await sender.value
            await eventually("all delivered") { received.withLockedValue { $0.count } == total }
            #expect(received.withLockedValue { $0 } == Array(0..<total))
            #expect(client.session.peerFlow == .resume)
            // The queue never reached the hard limit (2 × 1,000 messages), or the session would
            // have been closed with OVERLOADED.
            #expect(serverSession.peakQueuedMessageCount < 2000)
            #expect(serverSession.peakQueuedMessageCount >= 1000)
            await client.close()
        }
    }

    @Test("a peer that ignores SLOW_DOWN is closed with OVERLOADED; others carry on")
    func ignoringSlowDown() async throws {
        let configuration = serverConfiguration { $0.session = Self.flowConfiguration(high: 100, low: 25) }
        let handler: SecureMessagingServer.Handler = { session in
            guard session.peer?.nodeID != "raw-peer" else {
                // Never consume the raw peer's messages.
                await session.waitUntilClosed()
                return
            }
            try await echoHandler(session)
        }
        try await withServer(.plaintext, configuration: configuration, handler: handler) { _, port in
            let good = try await connect(.plaintext, port: port)
            let raw = try await RawPeer.connect(.plaintext, port: port)
            try await raw.open()
            var flood = ByteBuffer()
            for id in 1...300 {
                var frame = rawFrame(type: 0x02, id: UInt64(id), payload: dataPayload(topic: "x", body: [1, 2, 3]))
                flood.writeBuffer(&frame)
            }
            try await raw.sendBytes(flood)
            await raw.expectError(.overloaded)
            #expect(
                raw.frames.contains {
                    $0.type == .flow && $0.payload.getInteger(at: $0.payload.readerIndex) == UInt8(1)
                }
            )
            let reply = try await good.request(topic: "ok", body: ByteBuffer(string: "fine"))
            #expect(String(buffer: reply.body) == "fine")
            await good.close()
        }
    }

    // The rate limit's pacing (a burst in one read delivered at the rate, in order) is tested
    // with explicit time in SessionTimingTests; the grace period end to end below.

    @Test("a peer that stays over the rate limit past the grace period gets OVERLOADED")
    func rateLimitGrace() async throws {
        let configuration = serverConfiguration {
            $0.session.flowControl.rateLimit = RateLimit(messagesPerSecond: 100, gracePeriod: .milliseconds(500))
        }
        let handler: SecureMessagingServer.Handler = { session in
            for try await _ in session.messages {}
        }
        try await withServer(.plaintext, configuration: configuration, handler: handler) { _, port in
            let raw = try await RawPeer.connect(.plaintext, port: port)
            try await raw.open()
            let started = ContinuousClock.now
            var flood = ByteBuffer()
            for id in 1...2000 {
                var frame = rawFrame(type: 0x02, id: UInt64(id), payload: dataPayload(topic: "x", body: [1]))
                flood.writeBuffer(&frame)
            }
            try await raw.sendBytes(flood)
            await raw.expectError(.overloaded)
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .milliseconds(400))
            #expect(elapsed < .seconds(10))
            #expect(raw.error?.1.contains("rate limit") == true)
        }
    }
}

/// Heavy: run apart from timing-sensitive tests (scripts/test.sh runs `LoadTests` suites last).
@Suite("Broadcast (load)")
struct BroadcastLoadTests {
    @Test("broadcast to 50 sessions with one that never reads")
    func broadcastWithStalledSession() async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
        let configuration = serverConfiguration { $0.session.flowControl.slowConsumerTimeout = .seconds(1) }
        let keepOpen: SecureMessagingServer.Handler = { session in
            for try await _ in session.messages {}
        }
        try await withServer(.plaintext, configuration: configuration, metrics: metrics, handler: keepOpen) {
            server,
            port in
            let clients = try await withThrowingTaskGroup(of: SecureClient.self) { group in
                for index in 0..<49 {
                    group.addTask { try await connect(.plaintext, port: port, nodeID: "good-\(index)") }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let stalled = try await RawPeer.connect(.plaintext, port: port)
            try await stalled.open(nodeID: "stalled")
            try await stalled.channel.setOption(.autoRead, value: false).get()
            await eventually("50 open sessions") { server.registry.open.count == 50 }
            let stalledSession = try #require(server.registry.all.first { $0.peer?.nodeID == "stalled" })

            let counts = NIOLockedValueBox([Int](repeating: 0, count: clients.count))
            let readers = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (index, client) in clients.enumerated() {
                        group.addTask {
                            for try await _ in client.messages {
                                let done = counts.withLockedValue { counts in
                                    counts[index] += 1
                                    return counts[index] == 600
                                }
                                if done { return }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let body = ByteBuffer(repeating: 0x5A, count: 16_384)
            var peakBuffered = 0
            for _ in 0..<600 {
                // An application-level pace: wait for the good sessions, never for the stalled one.
                while server.registry.open.contains(where: { $0 !== stalledSession && $0.isSendBlocked }) {
                    try await Task.sleep(for: .milliseconds(1))
                }
                server.broadcast(topic: "news", body: body)
                // Once closed as a slow consumer it has nothing buffered.
                if let buffered = try? await stalledSession.channel.getOption(.bufferedWritableBytes).get() {
                    peakBuffered = max(peakBuffered, buffered)
                }
            }
            try await readers.value
            #expect(counts.withLockedValue { $0 }.allSatisfy { $0 == 600 })
            // The stalled session's memory stayed within its write-buffer bound (plus one message).
            #expect(peakBuffered <= (1 << 20) + 16_384 + 64)
            await eventually("the stalled session is closed as a slow consumer") {
                stalledSession.currentState == .closed
            }
            #expect(MetricsTests.value("smsg_slow_consumers_total", in: registry.emitToString()) == 1)
            #expect(server.registry.open.count == 49)
            for client in clients {
                await client.close()
            }
        }
    }
}
