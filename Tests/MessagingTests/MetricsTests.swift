import Foundation
import MetricsEndpoint
import NIOCore
import NIOPosix
import Prometheus
import SMSGTestSupport
import Testing

@testable import Messaging

@Suite("Metrics")
struct MetricsTests {
    /// Fetches `/metrics` with a raw HTTP/1.1 request and returns the body.
    static func scrape(port: Int) async throws -> String {
        let response = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await response.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"))
            var text = ""
            for try await chunk in inbound {
                text += String(buffer: chunk)
            }
            guard let split = text.range(of: "\r\n\r\n") else { return "" }
            #expect(text.hasPrefix("HTTP/1.1 200 OK"))
            return String(text[split.upperBound...])
        }
    }

    /// The value of an unlabelled metric in Prometheus text.
    static func value(_ name: String, in text: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }

    @Test("the Prometheus endpoint agrees with the server", arguments: TransportKind.allCases)
    func endpoint(kind: TransportKind) async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
        let endpoint = PrometheusEndpoint(host: "127.0.0.1", port: 0, registry: registry)
        let endpointTask = Task { try await endpoint.run() }
        defer { endpointTask.cancel() }
        let metricsPort = try await endpoint.listeningAddress().port!

        let server = SecureMessagingServer(
            configuration: ServerConfiguration(),
            transport: try Certificates.serverTransport(kind),
            logger: quietLogger,
            metrics: metrics,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!

        let clients = try await withThrowingTaskGroup(of: SecureClient.self) { group in
            for index in 0..<3 {
                group.addTask { try await connect(kind, port: port, nodeID: "m\(index)") }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for client in clients {
            _ = try await client.request(topic: "t", body: ByteBuffer(string: "abc"))
        }
        let bad = try await RawPeer.connect(kind, port: port)
        try await bad.sendBytes(rawFrame(type: 0x09))
        await bad.expectError(.protocolError)

        await eventually("three sessions") { server.activeSessionCount == 3 }
        var text = try await Self.scrape(port: metricsPort)
        #expect(Self.value("smsg_sessions_active", in: text) == 3)
        #expect(Self.value("smsg_sessions_total", in: text) == 4)
        #expect(Self.value("smsg_protocol_errors_total", in: text) == 1)
        // Each client: HELLO in, REQUEST in; HELLO out, RESPONSE out (PINGs may add more).
        #expect((Self.value("smsg_frames_received_total", in: text) ?? 0) >= 6)
        #expect((Self.value("smsg_frames_sent_total", in: text) ?? 0) >= 7)
        #expect((Self.value("smsg_bytes_received_total", in: text) ?? 0) > 6 * 24)
        #expect((Self.value("smsg_bytes_sent_total", in: text) ?? 0) > 7 * 24)
        #expect(Self.value("smsg_handshake_failures_total", in: text) == 0)
        // Everything received was taken by the handler: nothing is left queued.
        #expect(Self.value("smsg_inbound_queued_bytes", in: text) == 0)

        for client in clients {
            await client.close()
        }
        await eventually("no sessions") { server.activeSessionCount == 0 }
        text = try await Self.scrape(port: metricsPort)
        #expect(Self.value("smsg_sessions_active", in: text) == 0)

        server.shutdown()
        try await running.value
    }
}
