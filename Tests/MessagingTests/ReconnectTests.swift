import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SMSGTestSupport
import Testing

@testable import Messaging

/// Collects a reconnecting client's events as they happen.
final class EventLog: Sendable {
    private let events = NIOLockedValueBox<[ConnectionEvent]>([])
    private let task: NIOLockedValueBox<Task<Void, Never>?> = NIOLockedValueBox(nil)

    init(_ client: ReconnectingClient) {
        let events = self.events
        let task = Task {
            for await event in client.events {
                events.withLockedValue { $0.append(event) }
            }
        }
        self.task.withLockedValue { $0 = task }
    }

    var all: [ConnectionEvent] { self.events.withLockedValue { $0 } }

    var connects: Int {
        self.all.filter { if case .connected = $0 { true } else { false } }.count
    }

    var disconnects: Int {
        self.all.filter { if case .disconnected = $0 { true } else { false } }.count
    }

    var attempts: [(Int, Duration)] {
        self.all.compactMap { if case .reconnecting(let attempt, let delay) = $0 { (attempt, delay) } else { nil } }
    }

    var gaveUp: Bool {
        self.all.contains { if case .gaveUp = $0 { true } else { false } }
    }
}

@Suite("Reconnection")
struct ReconnectTests {
    @Test("backoff against a closed port follows the policy on the injected clock, then gives up")
    func backoffSchedule() async throws {
        let clock = RecordingClock()
        let policy = ReconnectPolicy(
            initialDelay: .milliseconds(100),
            multiplier: 2,
            maximumDelay: .seconds(1),
            maximumAttempts: 6
        )
        let closed = ClosedPort()
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: closed.port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "backoff"),
            policy: policy,
            disconnectedSends: .failFast,
            clock: clock
        )
        let log = EventLog(client)
        let running = startRunning(client)
        await eventually("gave up", timeout: .seconds(30)) { log.gaveUp }
        _ = closed
        let attempts = log.attempts
        #expect(attempts.map(\.0) == [1, 2, 3, 4, 5, 6])
        for (attempt, delay) in attempts {
            #expect(delay >= .zero && delay <= policy.ceiling(forAttempt: attempt), "attempt \(attempt): \(delay)")
        }
        #expect(clock.sleeps == attempts.map(\.1), "every delay was slept on the injected clock")
        do {
            try await client.send(topic: "t", body: ByteBuffer())
            Issue.record("a client that gave up must refuse sends")
        } catch let error as MessagingError {
            #expect(error.code == .gaveUp)
        }
        // Having given up, run() returned on its own, saying why.
        do {
            try await running.value
            Issue.record("run() must throw when the client gives up")
        } catch let error as MessagingError {
            #expect(error.code == .gaveUp)
        }
        await client.close()
    }

    @Test("no busy loop: real time, a closed port, at most the attempts the policy allows")
    func noBusyLoop() async throws {
        let policy = ReconnectPolicy(
            initialDelay: .milliseconds(50),
            multiplier: 2,
            maximumDelay: .milliseconds(400),
            maximumAttempts: 8
        )
        let closed = ClosedPort()
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: closed.port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "patient"),
            policy: policy
        )
        let log = EventLog(client)
        let running = startRunning(client)
        try await Task.sleep(for: .seconds(5))
        #expect(log.attempts.count <= 8)
        await eventually("gave up after its attempts", timeout: .seconds(30)) { log.gaveUp }
        #expect(log.attempts.count == 8)
        _ = closed
        await #expect(throws: MessagingError.self) { try await running.value }
        await client.close()
    }

    @Test("10,000 acknowledged messages survive two server restarts, none lost")
    func serverRestarts() async throws {
        let received = NIOLockedValueBox(Set<Int>())
        let handler: SecureMessagingServer.Handler = { session in
            for try await message in session.messages {
                _ = received.withLockedValue { $0.insert(Int(String(buffer: message.body))!) }
            }
        }
        func startServer(port: Int) async throws -> (SecureMessagingServer, Task<Void, any Error>) {
            let server = SecureMessagingServer(
                configuration: ServerConfiguration(port: port),
                transport: PlainTCPTransport(),
                logger: quietLogger,
                handler: handler
            )
            let task = Task { try await server.run() }
            _ = try await server.listeningAddress()
            return (server, task)
        }
        var (server, running) = try await startServer(port: 0)
        let port = try await server.listeningAddress().port!
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "steady"),
            policy: ReconnectPolicy(initialDelay: .milliseconds(20), multiplier: 2, maximumDelay: .milliseconds(200))
        )
        let log = EventLog(client)
        let runningClient = startRunning(client)
        let total = 10_000
        let sender = Task {
            for index in 0..<total {
                try await client.send(topic: "n", body: ByteBuffer(string: "\(index)"), ackRequested: true)
            }
        }
        for round in 1...2 {
            let threshold = round * total / 3
            await eventually("\(threshold) received", timeout: .seconds(60)) {
                received.withLockedValue { $0.count } >= threshold
            }
            server.shutdown()
            try await running.value
            try await Task.sleep(for: .milliseconds(100))
            (server, running) = try await startServer(port: port)
        }
        try await sender.value
        await eventually("every message acknowledged", timeout: .seconds(60)) { client.unacknowledgedCount == 0 }
        #expect(received.withLockedValue { $0 } == Set(0..<total))
        #expect(log.connects >= 3)
        #expect(client.currentSession?.currentState == .open)
        await client.close()
        try await runningClient.value
        server.shutdown()
        try await running.value
    }

    @Test("through a faulty proxy: cut, black hole, refusal — the client comes back each time")
    func proxyFaults() async throws {
        let configuration = serverConfiguration { $0.session.heartbeatInterval = .milliseconds(200) }
        try await withServer(.plaintext, configuration: configuration) { _, port in
            let proxy = try await FaultProxy.start(targetPort: port)
            var clientConfiguration = ClientConfiguration(nodeID: "through-proxy")
            clientConfiguration.session.heartbeatInterval = .milliseconds(200)
            clientConfiguration.session.helloTimeout = .milliseconds(500)
            let client = ReconnectingClient(
                host: "127.0.0.1",
                port: proxy.port,
                transport: PlainTCPTransport(),
                configuration: clientConfiguration,
                policy: ReconnectPolicy(
                    initialDelay: .milliseconds(20),
                    multiplier: 2,
                    maximumDelay: .milliseconds(200)
                )
            )
            let log = EventLog(client)
            let runningClient = startRunning(client)
            await eventually("connected") { log.connects == 1 }
            let first = try await client.request(topic: "t", body: ByteBuffer(string: "1"))
            #expect(String(buffer: first.body) == "1")

            // 1. Cut every connection.
            proxy.cutAll()
            await eventually("reconnected after the cut") { log.connects == 2 }
            _ = try await client.request(topic: "t", body: ByteBuffer(string: "2"))

            // 2. A black hole: nothing passes, nothing closes. Heartbeats notice.
            let disconnectsBefore = log.disconnects
            let paused = ContinuousClock.now
            proxy.setPaused(true)
            await eventually("the black hole was detected") { log.disconnects > disconnectsBefore }
            // Only the heartbeat timeout (3 × 200 ms of silence) can have noticed it.
            #expect(ContinuousClock.now - paused >= .milliseconds(500))
            proxy.setPaused(false)
            await eventually("reconnected after the black hole") { log.connects >= 3 }
            _ = try await client.request(topic: "t", body: ByteBuffer(string: "3"))

            // 3. Refuse new connections for a while: backoff, then success.
            proxy.setRefusingNewConnections(true)
            let attemptsBefore = log.attempts.count
            proxy.cutAll()
            await eventually("several refused attempts") { log.attempts.count >= attemptsBefore + 3 }
            let connectsBefore = log.connects
            proxy.setRefusingNewConnections(false)
            await eventually("reconnected after the refusals") { log.connects == connectsBefore + 1 }
            let last = try await client.request(topic: "t", body: ByteBuffer(string: "4"))
            #expect(String(buffer: last.body) == "4")

            await client.close()
            try await runningClient.value
            await proxy.close()
        }
    }

    @Test("fail-fast sends while disconnected, waiting sends resume on reconnect")
    func disconnectedSends() async throws {
        // A port reserved by a socket that does not listen; freed just before the server binds.
        var closed: ClosedPort? = ClosedPort()
        let port = closed!.port
        let failFast = ReconnectingClient(
            host: "127.0.0.1",
            port: port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "ff"),
            policy: ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100)),
            disconnectedSends: .failFast
        )
        let failFastRunning = startRunning(failFast)
        do {
            try await failFast.send(topic: "t", body: ByteBuffer())
            Issue.record("expected notConnected")
        } catch let error as MessagingError {
            #expect(error.code == .notConnected)
        }
        await failFast.close()
        try await failFastRunning.value

        let waiting = ReconnectingClient(
            host: "127.0.0.1",
            port: port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "waits"),
            policy: ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50)),
            disconnectedSends: .wait(capacity: 1)
        )
        let waitingRunning = startRunning(waiting)
        let pending = Task { try await waiting.request(topic: "later", body: ByteBuffer(string: "hi")) }
        // The request takes the one place to wait (else the send below would take it, and wait).
        await eventually("the request waits for a connection") { waiting.waitingForConnectionCount == 1 }
        do {
            try await waiting.send(topic: "t", body: ByteBuffer())
            Issue.record("expected outboxFull")
        } catch let error as MessagingError {
            #expect(error.code == .outboxFull)
        }
        // Now a server appears on that port.
        closed = nil
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(port: port),
            transport: PlainTCPTransport(),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let reply = try await pending.value
        #expect(String(buffer: reply.body) == "hi")
        await waiting.close()
        try await waitingRunning.value
        server.shutdown()
        try await running.value
    }

    @Test("sendAcknowledged returns once the server's application took the message, across a cut; close fails a wait")
    func sendAcknowledged() async throws {
        let capture = SessionCapture()
        let received = NIOLockedValueBox<[String]>([])
        let handler: SecureMessagingServer.Handler = { session in
            capture.add(session)
            guard capture.all.count > 1 else {
                // The first connection never takes anything: no ACK can come from it.
                await session.waitUntilClosed()
                return
            }
            // Takes one message, then nothing more.
            var messages = session.messages.makeAsyncIterator()
            if let message = try await messages.next() {
                received.withLockedValue { $0.append(String(buffer: message.body)) }
            }
            await session.waitUntilClosed()
        }
        try await withServer(.plaintext, handler: handler) { _, port in
            let client = ReconnectingClient(
                host: "127.0.0.1",
                port: port,
                transport: PlainTCPTransport(),
                configuration: ClientConfiguration(nodeID: "acked"),
                policy: ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))
            )
            let runningClient = startRunning(client)
            let done = NIOLockedValueBox(false)
            let first = Task {
                try await client.sendAcknowledged(topic: "t", body: ByteBuffer(string: "one"))
                done.withLockedValue { $0 = true }
            }
            await eventually("the first session") { capture.all.first?.queuedMessageCount == 1 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(!done.withLockedValue { $0 }, "no ACK while the server's application has not taken it")
            #expect(client.unacknowledgedCount == 1)

            // The server drops the connection: the client reconnects and sends it again.
            try await capture.all[0].channel.close()
            try await first.value
            #expect(received.withLockedValue { $0 } == ["one"])
            #expect(capture.all.count == 2)
            #expect(client.unacknowledgedCount == 0)

            // The server takes nothing more: the wait ends only with close(), as a failure.
            let second = Task { try await client.sendAcknowledged(topic: "t", body: ByteBuffer(string: "two")) }
            await eventually("the second message queued") { capture.all[1].queuedMessageCount == 1 }
            await client.close()
            do {
                try await second.value
                Issue.record("expected the closed client to fail the wait")
            } catch let error as MessagingError {
                #expect(error.code == .shuttingDown)
            }
            try await runningClient.value
        }
    }

    @Test("close() during a connection attempt that hangs (a black hole) returns at once")
    func closeDuringHangingAttempt() async throws {
        try await withServer(.plaintext) { _, port in
            let proxy = try await FaultProxy.start(targetPort: port)
            proxy.setPaused(true)
            // The server's HELLO never comes: only the 30 s HELLO timeout would end the attempt.
            var configuration = ClientConfiguration(nodeID: "hangs")
            configuration.session.helloTimeout = .seconds(30)
            let client = ReconnectingClient(
                host: "127.0.0.1",
                port: proxy.port,
                transport: PlainTCPTransport(),
                configuration: configuration
            )
            let runningClient = startRunning(client)
            await eventually("the attempt reached the proxy") { proxy.openChannelCount >= 1 }
            let closing = ContinuousClock.now
            await client.close()
            // Generous for a loaded machine; without cancellation it is the full 30 s.
            #expect(ContinuousClock.now - closing < .seconds(10), "close() waited for the attempt's timeout")
            try await runningClient.value
            await proxy.close()
        }
    }
}
