import Logging
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import SMSGTestSupport
import SecureTransport
import Testing

@testable import Messaging

/// Every refusal is a notice with the peer's address and a count in
/// `smsg_refusals_total{reason}`.
@Suite("Refusals: logged at notice and counted")
struct RefusalLoggingTests {
    static func count(_ reason: RefusalReason, in registry: PrometheusCollectorRegistry) -> Int {
        Self.value("smsg_refusals_total{reason=\"\(reason.rawValue)\"}", in: registry)
    }

    static func value(_ name: String, in registry: PrometheusCollectorRegistry) -> Int {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        let prefix = name + " "
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(prefix) {
            return Int(Double(line.dropFirst(prefix.count)) ?? -1)
        }
        return 0
    }

    @Test("missing and untrusted client certificates, a node_id that is not the certificate's, the connection limit")
    func everyRefusal() async throws {
        let registry = PrometheusCollectorRegistry()
        let records = LogRecorder()
        var configuration = ServerConfiguration()
        configuration.requireCertificateIdentity = true
        configuration.maxConnections = 1
        let server = SecureMessagingServer(
            configuration: configuration,
            transport: try Certificates.serverTransport(.tls, clientAuth: .required),
            logger: records.logger,
            metrics: MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry)),
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        defer {
            server.shutdown()
        }
        let port = try await server.listeningAddress().port!

        // No client certificate.
        await #expect(throws: (any Error).self) { _ = try await connect(.tls, port: port, nodeID: "collab-1") }
        await eventually("certificate_missing") { Self.count(.certificateMissing, in: registry) == 1 }
        // A certificate from an unrelated CA.
        await #expect(throws: (any Error).self) {
            _ = try await connect(.tls, port: port, nodeID: "collab-1", cert: "other")
        }
        await eventually("certificate_untrusted") { Self.count(.certificateUntrusted, in: registry) == 1 }
        // collab-2's certificate claiming to be collab-1.
        let mismatch = await #expect(throws: MessagingError.self) {
            _ = try await connect(.tls, port: port, nodeID: "collab-1", cert: "collab-2")
        }
        #expect(mismatch?.errorCode == .unauthorized)
        await eventually("identity_mismatch") { Self.count(.identityMismatch, in: registry) == 1 }
        // One connection is the limit: the second gets SERVER_BUSY. The refused sessions leave
        // the registry when their channels close, which may come after their clients heard the
        // refusal (a first connection made before then was itself refused as over the limit).
        await eventually("the refused sessions gone") { server.activeSessionCount == 0 }
        let first = try await connect(.tls, port: port, nodeID: "collab-1", cert: "collab-1")
        let busy = await #expect(throws: MessagingError.self) {
            _ = try await connect(.tls, port: port, nodeID: "collab-2", cert: "collab-2")
        }
        #expect(busy?.errorCode == .serverBusy)
        await eventually("connection_limit") { Self.count(.connectionLimit, in: registry) == 1 }
        await first.close()

        let notices = records.notices.filter { $0.message == "refused a connection" }.map { ($0.message, $0.metadata) }
        let reasons = notices.compactMap { $0.1["reason"].map { "\($0)" } }
        #expect(
            reasons == ["certificate_missing", "certificate_untrusted", "identity_mismatch", "connection_limit"],
            "\(notices)"
        )
        for (_, metadata) in notices {
            let remote = metadata["remote"].map { "\($0)" } ?? ""
            #expect(remote.hasPrefix("127.0.0.1:"), "the peer's address as host:port: \(metadata)")
        }
        #expect(Self.count(.handshakeFailed, in: registry) == 0)
        // Both certificate refusals are failed handshakes too (their alert could close the
        // channel before the failure reached the session, and they went uncounted).
        #expect(Self.value("smsg_handshake_failures_total", in: registry) == 2)
        server.shutdown()
        try await running.value
    }
}
