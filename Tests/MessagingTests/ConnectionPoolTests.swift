import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

@testable import Messaging

@Suite("ConnectionPool")
struct ConnectionPoolTests {
    static func pool(
        port: Int,
        kind: TransportKind,
        maximum: Int,
        minimum: Int = 0,
        acquireTimeout: Duration = .seconds(10)
    ) throws -> ConnectionPool {
        var configuration = ConnectionPoolConfiguration()
        configuration.maximumConnections = maximum
        configuration.minimumConnections = minimum
        configuration.acquireTimeout = acquireTimeout
        return ConnectionPool(
            host: "127.0.0.1",
            port: port,
            transport: try Certificates.clientTransport(kind),
            serverHostname: "localhost",
            clientConfiguration: ClientConfiguration(nodeID: "pooled"),
            configuration: configuration
        )
    }

    @Test("64 tasks share 8 TLS connections; shutdown closes them all")
    func sharedPool() async throws {
        try await withServer(.tls) { server, port in
            let pool = try Self.pool(port: port, kind: .tls, maximum: 8)
            let running = startRunning(pool)
            let peak = NIOLockedValueBox(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<64 {
                    group.addTask {
                        for round in 0..<10 {
                            let text = "\(task)-\(round)"
                            let reply = try await pool.withConnection { client in
                                peak.withLockedValue { $0 = max($0, server.activeSessionCount) }
                                return try await client.request(topic: "pool", body: ByteBuffer(string: text))
                            }
                            #expect(String(buffer: reply.body) == text)
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(peak.withLockedValue { $0 } <= 8)
            #expect(pool.statistics.total <= 8)
            #expect(pool.statistics.inUse == 0)
            await pool.shutdown()
            try await running.value
            #expect(pool.statistics.total == 0)
            await eventually("no sessions left at the server") { server.activeSessionCount == 0 }
        }
    }

    @Test("acquire times out with a clear error when every connection is busy")
    func acquireTimeout() async throws {
        try await withServer(.plaintext) { _, port in
            let pool = try Self.pool(port: port, kind: .plaintext, maximum: 2, acquireTimeout: .milliseconds(200))
            let running = startRunning(pool)
            let release = NIOLockedValueBox(false)
            let holders = (0..<2).map { _ in
                Task {
                    try await pool.withConnection { _ in
                        while !release.withLockedValue({ $0 }) {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    }
                }
            }
            await eventually("both connections in use") { pool.statistics.inUse == 2 }
            let started = ContinuousClock.now
            do {
                try await pool.withConnection { _ in }
                Issue.record("expected a timeout")
            } catch let error as MessagingError {
                #expect(error.code == .acquireTimedOut)
            }
            #expect(ContinuousClock.now - started >= .milliseconds(150))
            #expect(pool.statistics.waiters == 0)
            release.withLockedValue { $0 = true }
            for holder in holders {
                try await holder.value
            }
            // A waiter gets the connection given back.
            try await pool.withConnection { client in
                _ = try await client.request(topic: "after", body: ByteBuffer())
            }
            await pool.shutdown()
            try await running.value
        }
    }

    @Test("a connection killed under the pool is replaced, and the minimum kept")
    func deadConnectionReplaced() async throws {
        try await withServer(.plaintext) { server, port in
            let proxy = try await FaultProxy.start(targetPort: port)
            let pool = try Self.pool(port: proxy.port, kind: .plaintext, maximum: 2, minimum: 2)
            let running = startRunning(pool)
            await eventually("run() opened the minimum") { pool.statistics.idle == 2 }
            proxy.cutAll()
            // The pool notices on its own: dead idle connections leave the idle list, and new
            // ones take their place.
            await eventually("the pool replaced its dead connections") {
                pool.statistics.replaced == 2 && pool.statistics.idle == 2
            }
            await eventually("the server serves the new ones") { server.activeSessionCount == 2 }
            for round in 0..<4 {
                let reply = try await pool.withConnection { client in
                    try await client.request(topic: "again", body: ByteBuffer(string: "\(round)"))
                }
                #expect(String(buffer: reply.body) == "\(round)")
            }
            #expect(pool.statistics.replaced >= 2)
            await pool.shutdown()
            try await running.value
            await eventually("nothing left open through the proxy") { proxy.openChannelCount == 0 }
            await proxy.close()
        }
    }

    @Test("nothing opens before run(); a caller that came before is served once it runs")
    func waitsForRun() async throws {
        try await withServer(.plaintext) { server, port in
            let pool = try Self.pool(port: port, kind: .plaintext, maximum: 2, minimum: 1)
            let early = Task {
                try await pool.withConnection { client in
                    try await client.request(topic: "early", body: ByteBuffer(string: "first"))
                }
            }
            await eventually("the caller waits") { pool.statistics.waiters == 1 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(server.activeSessionCount == 0, "a pool that does not run opens nothing")
            #expect(pool.statistics.total == 0)
            let running = startRunning(pool)
            let reply = try await early.value
            #expect(String(buffer: reply.body) == "first")
            await pool.shutdown()
            try await running.value
            await eventually("every connection closed") { server.activeSessionCount == 0 }
        }
    }

    @Test("without run(), acquire fails within its timeout, saying so")
    func notRunning() async throws {
        let pool = try Self.pool(port: 1, kind: .plaintext, maximum: 1, acquireTimeout: .milliseconds(100))
        do {
            try await pool.withConnection { _ in }
            Issue.record("a pool that does not run cannot hand out a connection")
        } catch let error as MessagingError {
            #expect(error.code == .acquireTimedOut)
            #expect(error.reason.contains("run()"))
        }
        #expect(pool.statistics.waiters == 0)
    }

    @Test("cancelling run() waits for the connections in use, then closes them all (GOODBYE)")
    func cancelRun() async throws {
        let closeReasons = NIOLockedValueBox<[MessagingError?]>([])
        let handler: SecureMessagingServer.Handler = { session in
            try? await echoHandler(session)
            await session.waitUntilClosed()
            closeReasons.withLockedValue { $0.append(session.closeReason) }
        }
        try await withServer(.plaintext, handler: handler) { server, port in
            let pool = try Self.pool(port: port, kind: .plaintext, maximum: 2, minimum: 1)
            let running = startRunning(pool)
            await eventually("the minimum is open") { pool.statistics.idle == 1 }
            let release = NIOLockedValueBox(false)
            let holder = Task {
                try await pool.withConnection { client in
                    while !release.withLockedValue({ $0 }) {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    // Still usable while the pool drains.
                    return try await client.request(topic: "held", body: ByteBuffer(string: "late"))
                }
            }
            await eventually("the connection is in use") { pool.statistics.inUse == 1 }
            running.cancel()
            // A new caller is refused at once; the holder keeps its connection.
            await eventually("shutting down") {
                do {
                    try await pool.withConnection { _ in }
                    return false
                } catch let error as MessagingError {
                    return error.code == .shuttingDown
                } catch {
                    return false
                }
            }
            release.withLockedValue { $0 = true }
            let reply = try await holder.value
            #expect(String(buffer: reply.body) == "late")
            try await running.value
            #expect(pool.statistics.total == 0)
            await eventually("the server saw every session end") { server.activeSessionCount == 0 }
            await eventually("the handlers saw them end") { !closeReasons.withLockedValue { $0 }.isEmpty }
            let reasons = closeReasons.withLockedValue { $0 }
            #expect(reasons.allSatisfy { $0 == nil }, "each closed by GOODBYE, none by an error: \(reasons)")
        }
    }

    @Test(
        "shutdown right as run() opens the minimum returns, every time",
        .timeLimit(.minutes(1))
    )
    func shutdownRacesMinimum() async throws {
        try await withServer(.plaintext) { server, port in
            for _ in 0..<25 {
                let pool = try Self.pool(port: port, kind: .plaintext, maximum: 4, minimum: 2)
                let running = startRunning(pool)
                await pool.shutdown()
                try await running.value
                #expect(pool.statistics.total == 0)
            }
            await eventually("every connection closed") { server.activeSessionCount == 0 }
        }
    }
}
