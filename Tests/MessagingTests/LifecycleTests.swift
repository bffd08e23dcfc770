import Foundation
import NIOCore
import NIOPosix
import Prometheus
import SMSGTestSupport
import Testing

@testable import Messaging

@Suite("Session lifecycle")
struct LifecycleTests {
    @Test("the connection limit answers SERVER_BUSY")
    func connectionLimit() async throws {
        let configuration = serverConfiguration { $0.maxConnections = 2 }
        try await withServer(.plaintext, configuration: configuration) { server, port in
            let first = try await connect(.plaintext, port: port, nodeID: "one")
            let second = try await connect(.plaintext, port: port, nodeID: "two")
            let third = try await RawPeer.connect(.plaintext, port: port)
            await third.expectError(.serverBusy)
            #expect(server.activeSessionCount == 2)
            await first.close()
            await eventually("a slot frees up") { server.activeSessionCount == 1 }
            let fourth = try await connect(.plaintext, port: port, nodeID: "four")
            await fourth.close()
            await second.close()
        }
    }
}

/// Heavy: run apart from timing-sensitive tests (scripts/test.sh runs `LoadTests` suites last).
@Suite("Session lifecycle (load)")
struct SessionLoadTests {
    @Test("no session leaks after 1,000 cycles and 200 abrupt disconnects", arguments: TransportKind.allCases)
    func noLeaks(kind: TransportKind) async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
        try await withServer(kind, metrics: metrics) { server, port in
            for index in 0..<1000 {
                let client = try await connect(kind, port: port, nodeID: "cycle-\(index)")
                try await client.send(topic: "t", body: ByteBuffer(string: "\(index)"))
                if index.isMultiple(of: 2) {
                    await client.close()
                } else {
                    try await client.session.channel.close()
                }
            }
            for _ in 0..<200 {
                let raw = try await RawPeer.connect(kind, port: port)
                try await raw.open()
                // Half a DATA frame, then the connection drops.
                let frame = rawFrame(
                    type: 0x02,
                    id: 1,
                    payload: dataPayload(topic: "t", body: Array(repeating: 1, count: 100))
                )
                try await raw.sendBytes(frame.getSlice(at: 0, length: 40)!)
                try await raw.channel.close()
            }
            await eventually("no sessions left", timeout: .seconds(2)) { server.activeSessionCount == 0 }
            #expect(server.activeSessionCount == 0)
            #expect(server.registry.all.isEmpty)
            let text = registry.emitToString()
            #expect(MetricsTests.value("smsg_sessions_active", in: text) == 0)
            #expect(MetricsTests.value("smsg_sessions_total", in: text) == 1200)
        }
    }

    @Test("graceful shutdown with 100 open sessions", arguments: TransportKind.allCases)
    func gracefulShutdown(kind: TransportKind) async throws {
        var configuration = ServerConfiguration()
        configuration.session.drainTimeout = .milliseconds(500)
        let server = SecureMessagingServer(
            configuration: configuration,
            transport: try Certificates.serverTransport(kind),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!

        // 50 well-behaved clients (they answer GOODBYE) and 50 raw peers that never do.
        var clients: [SecureClient] = []
        var raws: [RawPeer] = []
        for index in 0..<50 {
            clients.append(try await connect(kind, port: port, nodeID: "c\(index)"))
            let raw = try await RawPeer.connect(kind, port: port)
            try await raw.open(nodeID: "r\(index)")
            raws.append(raw)
        }
        #expect(server.activeSessionCount == 100)
        // Every client has a message accepted before the shutdown; each must come back.
        for client in clients {
            let reply = try await client.request(topic: "before", body: ByteBuffer(string: "x"))
            #expect(String(buffer: reply.body) == "x")
        }

        server.shutdown()
        try await running.value
        #expect(server.activeSessionCount == 0)
        for client in clients {
            await client.session.waitUntilClosed()
            #expect(client.session.currentState == .closed)
        }
        for raw in raws {
            await eventually("raw peer closed") { raw.isClosed }
            #expect(raw.frames.contains { $0.type == .goodbye })
            #expect(raw.error?.0 == .goingAway)
        }
    }
}
