import Foundation
import Logging
import Messaging
import MetricsEndpoint
import MetricsTestKit
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import SMSGTestSupport
import Testing

@testable import Cluster

@Suite("Requests counted by topic and outcome; DATA nobody handles counted and told")
struct RequestMetricsTests {
    @Test("served and made requests by topic and code, with their latency; unhandled topics are 'other'")
    func requestsByTopicAndCode() async throws {
        let leaderMetrics = TestMetrics()
        let collaboratorMetrics = TestMetrics()
        try await withLeader(heartbeat: .seconds(1), metrics: MessagingMetrics(factory: leaderMetrics)) {
            leader,
            port,
            _ in
            leader.onRequest(topic: "echo") { message, _ in message.body }
            leader.onRequest(topic: "refuse") { _, _ -> ByteBuffer in throw RequestError(.permissionDenied, "no") }
            leader.onRequest(topic: "custom") { _, _ -> ByteBuffer in throw RequestError(.application(4242), "x") }
            var configuration = CollaboratorConfiguration(nodeID: "collab-1")
            configuration.session.heartbeatInterval = .seconds(1)
            let collaborator = Collaborator(
                leaderHost: "127.0.0.1",
                leaderPort: port,
                transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
                serverHostname: "localhost",
                configuration: configuration,
                logger: quiet,
                metrics: MessagingMetrics(factory: collaboratorMetrics)
            )
            let running = Task { try await collaborator.run() }
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }

            for _ in 0..<3 {
                _ = try await collaborator.request(topic: "echo", body: ByteBuffer(string: "hi"))
            }
            _ = try? await collaborator.request(topic: "refuse", body: ByteBuffer())
            _ = try? await collaborator.request(topic: "custom", body: ByteBuffer())
            // Topics a peer makes up are one series, "other".
            for index in 0..<5 {
                _ = try? await collaborator.request(topic: "made-up-\(index)", body: ByteBuffer())
            }

            let served = { (topic: String, code: String) in
                try leaderMetrics.expectCounter(
                    "smsg_requests_total",
                    [("side", "served"), ("topic", topic), ("code", code)]
                ).totalValue
            }
            // The responder counts an outcome once it went: the requester can have it a moment
            // before.
            for (topic, code, count) in [
                ("echo", "OK", 3), ("refuse", "PERMISSION_DENIED", 1), ("custom", "APPLICATION", 1),
                ("other", "NO_HANDLER", 5),
            ] {
                #expect(await eventually("\(count) \(code) on \(topic)") { (try? served(topic, code)) == Int64(count) })
            }
            let latency = try leaderMetrics.expectTimer(
                "smsg_request_duration_seconds",
                [("side", "served"), ("topic", "echo")]
            )
            #expect(latency.values.count == 3)
            #expect(latency.values.allSatisfy { $0 >= 0 })
            // The requester's side, in its own metrics.
            let made = try collaboratorMetrics.expectCounter(
                "smsg_requests_total",
                [("side", "made"), ("topic", "echo"), ("code", "OK")]
            )
            #expect(made.totalValue == 3)
            let refusedMade = try collaboratorMetrics.expectCounter(
                "smsg_requests_total",
                [("side", "made"), ("topic", "refuse"), ("code", "PERMISSION_DENIED")]
            )
            #expect(refusedMade.totalValue == 1)
            // The collaborator's session counts its frames too.
            #expect(try collaboratorMetrics.expectCounter("smsg_frames_sent_total").totalValue > 0)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("topics of requests made: the first 64 get a label of their own, the rest are 'other'")
    func madeTopicsBounded() async throws {
        let metrics = TestMetrics()
        let router = Router(logger: quiet, metrics: metrics)
        for index in 0..<(RequestMetrics.madeTopicLimit + 6) {
            _ = try? await router.made(topic: "user.\(index)") { () async throws -> Int in
                throw RequestError(.unavailable, "nobody")
            }
        }
        let labelled = Set(
            metrics.counters.compactMap { counter in
                counter.dimensions.first { $0.0 == "topic" }?.1
            }
        )
        #expect(labelled.count == RequestMetrics.madeTopicLimit + 1)
        #expect(labelled.contains("other"))
        #expect(
            try metrics.expectCounter(
                "smsg_requests_total",
                [("side", "made"), ("topic", "other"), ("code", "UNAVAILABLE")]
            ).totalValue == 6
        )
        // With a list, only the topics listed.
        let listed = TestMetrics()
        let only = Router(logger: quiet, metrics: listed, requestTopics: .only(["user.1"]))
        for topic in ["user.1", "user.2"] {
            _ = try? await only.made(topic: topic) { () async throws -> Int in 1 }
        }
        #expect(
            try listed.expectCounter("smsg_requests_total", [("side", "made"), ("topic", "user.1"), ("code", "OK")])
                .totalValue == 1
        )
        #expect(
            try listed.expectCounter("smsg_requests_total", [("side", "made"), ("topic", "other"), ("code", "OK")])
                .totalValue == 1
        )
    }

    @Test("DATA on a topic nobody handles is counted and told at notice, at most once per interval")
    func unhandledData() async throws {
        let metrics = TestMetrics()
        let notices = LogRecorder()
        var configuration = LeaderConfiguration()
        configuration.server.session.heartbeatInterval = .seconds(1)
        let leader = Leader(
            configuration: configuration,
            transport: try ClusterCertificates.leaderTransport(),
            logger: notices.logger,
            metrics: MessagingMetrics(factory: metrics)
        )
        let handled = NIOLockedValueBox(0)
        leader.on(topic: "known") { _, _ in handled.withLockedValue { $0 += 1 } }
        let running = Task { try await leader.run() }
        let port = try await leader.listeningAddress().port!
        let (collaborator, collaboratorRun) = try await startCollaborator(
            "collab-1",
            port: port,
            heartbeat: .seconds(1)
        )
        await eventually("joined") { leader.collaborator("collab-1")?.state == .active }

        // An ACK says the leader took it, not that anything handled it.
        try await collaborator.sendAcknowledged(topic: "nobody", body: ByteBuffer(string: "lost?"))
        for _ in 0..<4 {
            try await collaborator.send(topic: "nobody", body: ByteBuffer())
        }
        try await collaborator.sendAcknowledged(topic: "known", body: ByteBuffer())
        await eventually("handled") { handled.withLockedValue { $0 } == 1 }
        #expect(try metrics.expectCounter("smsg_unhandled_total").totalValue == 5)
        let dropped = notices.notices.filter { $0.message.contains("no handler for its topic") }
        #expect(dropped.count == 1, "one notice for five drops within the interval")
        #expect(dropped.first?.metadata["topic"] == "nobody")
        #expect(dropped.first?.metadata["node_id"] == "collab-1")

        await collaborator.leave()
        try await collaboratorRun.value
        leader.shutdown()
        try await running.value
    }
}

@Suite("The Prometheus exposition passes promtool")
struct ExpositionLintTests {
    @Test("every metric a leader and a collaborator make has HELP text, and promtool check metrics is clean")
    func promtoolClean() async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
        try await withLeader(heartbeat: .seconds(1), metrics: metrics) { leader, port, _ in
            leader.onRequest(topic: "echo") { message, _ in message.body }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            _ = try await collaborator.request(topic: "echo", body: ByteBuffer(string: "hi"))
            _ = try? await collaborator.request(topic: "nobody", body: ByteBuffer())
            try await collaborator.sendAcknowledged(topic: "nobody", body: ByteBuffer())
            await collaborator.leave()
            try await running.value
        }
        let text = PrometheusEndpoint.exposition(of: registry)
        for line in text.split(separator: "\n") where line.hasPrefix("# TYPE smsg_") {
            let name = String(line.dropFirst("# TYPE ".count).prefix { $0 != " " })
            #expect(MetricDescriptions.all[name] != nil, "\(name) has no description")
        }
        #expect(text.contains("# HELP smsg_request_duration_seconds "))
        #expect(text.contains("# HELP smsg_unhandled_total "))
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-metrics-\(UUID()).txt")
        try text.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let lint = try runProcess("bash", ["-c", "promtool check metrics < '\(file.path)' 2>&1; echo \"exit $?\""])
        #expect(lint == "exit 0\n", "\(lint)\n\(text)")
    }

    @Test("an endpoint made and never run goes without a trace (it had left a promise unfulfilled)")
    func neverRun() {
        for _ in 0..<3 {
            _ = PrometheusEndpoint(host: "127.0.0.1", port: 0, registry: PrometheusCollectorRegistry())
        }
    }
}
