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
            #expect(pool.statistics.total == 0)
            await eventually("no sessions left at the server") { server.activeSessionCount == 0 }
        }
    }

    @Test("acquire times out with a clear error when every connection is busy")
    func acquireTimeout() async throws {
        try await withServer(.plaintext) { _, port in
            let pool = try Self.pool(port: port, kind: .plaintext, maximum: 2, acquireTimeout: .milliseconds(200))
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
        }
    }

    @Test("a connection killed under the pool is replaced")
    func deadConnectionReplaced() async throws {
        try await withServer(.plaintext) { server, port in
            let proxy = try await FaultProxy.start(targetPort: port)
            let pool = try Self.pool(port: proxy.port, kind: .plaintext, maximum: 2, minimum: 2)
            try await pool.prewarm()
            #expect(pool.statistics.idle == 2)
            proxy.cutAll()
            await eventually("the server saw the cut") { server.activeSessionCount == 0 }
            // The pool notices on its own: dead idle connections leave the idle list.
            await eventually("the pool dropped its dead connections") {
                pool.statistics.idle == 0 && pool.statistics.replaced == 2
            }
            for round in 0..<4 {
                let reply = try await pool.withConnection { client in
                    try await client.request(topic: "again", body: ByteBuffer(string: "\(round)"))
                }
                #expect(String(buffer: reply.body) == "\(round)")
            }
            #expect(pool.statistics.replaced >= 1)
            await pool.shutdown()
            await eventually("nothing left open through the proxy") { proxy.openChannelCount == 0 }
            await proxy.close()
        }
    }
}
