import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import ServiceLifecycle
import Testing

@testable import Messaging

/// ReconnectingClient as a service: nothing before `run()`; `run()` returns promptly, after
/// GOODBYE, when cancelled or shut down gracefully. "Promptly" is 4 s (the GOODBYE exchange
/// takes milliseconds; see `ServiceLifecycleTests` for why the margin was once 20 s); the
/// failures caught take 60 s or never end.
@Suite("ReconnectingClient as a service", .timeLimit(.minutes(2)))
struct ClientServiceTests {
    static let prompt = Duration.seconds(4)

    /// A server whose handler echoes and records how each session ended.
    final class Ends: Sendable {
        private let reasons = NIOLockedValueBox<[MessagingError?]>([])
        var all: [MessagingError?] { self.reasons.withLockedValue { $0 } }

        var handler: SecureMessagingServer.Handler {
            { session in
                try? await echoHandler(session)
                await session.waitUntilClosed()
                self.reasons.withLockedValue { $0.append(session.closeReason) }
            }
        }
    }

    static func client(port: Int) -> ReconnectingClient {
        ReconnectingClient(
            host: "127.0.0.1",
            port: port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "service"),
            policy: ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))
        )
    }

    @Test("init connects nothing; a send made before run() goes once it runs")
    func nothingBeforeRun() async throws {
        try await withServer(.plaintext) { server, port in
            let client = Self.client(port: port)
            let early = Task { try await client.request(topic: "t", body: ByteBuffer(string: "early")) }
            await eventually("the request waits for a connection") { client.waitingForConnectionCount == 1 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(server.activeSessionCount == 0, "an init must not connect")
            let running = startRunning(client)
            let reply = try await early.value
            #expect(String(buffer: reply.body) == "early")
            await client.close()
            try await running.value
        }
    }

    @Test("cancelling run(): GOODBYE, run() returns, waiting sends fail, events and messages end")
    func cancellation() async throws {
        let ends = Ends()
        try await withServer(.plaintext, handler: ends.handler) { server, port in
            let client = Self.client(port: port)
            let running = startRunning(client)
            let events = Task {
                var seen: [ConnectionEvent] = []
                for await event in client.events { seen.append(event) }
                return seen
            }
            let reader = Task {
                var count = 0
                for await _ in client.messages { count += 1 }
                return count
            }
            _ = try await client.request(topic: "t", body: ByteBuffer(string: "x"))
            let stopping = ContinuousClock.now
            running.cancel()
            try await running.value
            #expect(ContinuousClock.now - stopping < Self.prompt)
            // Ended, both of them: otherwise these would wait forever.
            let seen = await events.value
            if case .connected = seen.first {} else { Issue.record("the first event: \(seen)") }
            #expect(seen.last == .disconnected(nil), "\(seen)")
            _ = await reader.value
            await eventually("the server saw the session end") { !ends.all.isEmpty }
            #expect(ends.all == [nil], "closed by GOODBYE, not an error")
            #expect(server.activeSessionCount == 0)
            do {
                try await client.send(topic: "t", body: ByteBuffer())
                Issue.record("a stopped client must refuse sends")
            } catch let error as MessagingError {
                #expect(error.code == .shuttingDown)
            }
            await #expect(throws: MessagingError.self) { try await client.run() }
        }
    }

    @Test("graceful shutdown of a ServiceGroup during backoff returns at once")
    func gracefulDuringBackoff() async throws {
        let closed = ClosedPort()
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: closed.port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "backing-off"),
            // Long sleeps between attempts: only an interrupted sleep returns quickly.
            policy: ReconnectPolicy(initialDelay: .seconds(90), multiplier: 1, maximumDelay: .seconds(90))
        )
        let log = EventLog(client)
        let group = ServiceGroup(services: [client], logger: quietLogger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            await eventually("sleeping before the next attempt") { !log.attempts.isEmpty }
            let stopping = ContinuousClock.now
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            #expect(ContinuousClock.now - stopping < Self.prompt)
        }
        _ = closed
    }

    @Test("cancelling a reader of messages ends its loop, with the client still connected")
    func readerCancellation() async throws {
        try await withServer(.plaintext) { _, port in
            let client = Self.client(port: port)
            let running = startRunning(client)
            _ = try await client.request(topic: "t", body: ByteBuffer(string: "up"))
            let reader = Task {
                var count = 0
                for await _ in client.messages { count += 1 }
                return count
            }
            try await Task.sleep(for: .milliseconds(100))
            reader.cancel()
            #expect(await reader.value == 0)
            #expect(client.currentSession?.currentState == .open)
            await client.close()
            try await running.value
        }
    }

    @Test("cancelling a server's run(): each session gets GOODBYE, not ERROR INTERNAL")
    func serverCancellation() async throws {
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(port: 0),
            transport: PlainTCPTransport(),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!
        let client = try await connect(.plaintext, port: port, nodeID: "cancelled-under")
        _ = try await client.request(topic: "t", body: ByteBuffer(string: "x"))
        running.cancel()
        try await running.value
        await client.session.waitUntilClosed()
        #expect(client.session.closeReason == nil, "closed by the server's GOODBYE, not an error")
    }
}
