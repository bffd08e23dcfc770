import Cluster
import Logging
import Messaging
import NIOCore
import SMSGTestSupport
import ServiceLifecycle
import Testing

/// Leader and Collaborator as services: nothing starts before `run()`, and `run()` returns
/// promptly, after GOODBYE, on cancellation and on graceful shutdown.
///
/// "Promptly" is checked against `prompt`, 4 s: the longest a correct `run()` waits here is the
/// leader's 2 s drain timeout, and what these tests catch (a `run()` that ignores cancellation or
/// waits out a timeout) takes 60 s or never ends. The margins were 20 s while the test process
/// stalled for seconds at a time; `StallWatchdog` found the cause (mebibyte buffers written a
/// byte at a time on the cooperative pool) and now reports any lag over 1 s. The time limit
/// turns a `run()` that never returns into a failure instead of a hang.
@Suite("Leader and collaborators in a ServiceGroup", .timeLimit(.minutes(2)))
struct ServiceLifecycleTests {
    static let prompt = Duration.seconds(4)

    /// A collaborator of the harness's settings that nobody runs yet.
    static func collaborator(_ name: String, port: Int) async throws -> Collaborator {
        var configuration = CollaboratorConfiguration(nodeID: name)
        configuration.session.heartbeatInterval = .milliseconds(200)
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(100))
        return Collaborator(
            leaderHost: "127.0.0.1",
            leaderPort: port,
            transport: try await ClusterCertificates.collaboratorTransport(name),
            serverHostname: "localhost",
            configuration: configuration,
            logger: quiet
        )
    }

    @Test("a collaborator connects only when run() runs")
    func nothingInInit() async throws {
        try await withLeader { leader, port, _ in
            let collaborator = try await Self.collaborator("collab-1", port: port)
            try await Task.sleep(for: .milliseconds(300))
            #expect(leader.sessionCount == 0, "an init must not connect")
            #expect(leader.collaborators.isEmpty)
            let group = ServiceGroup(services: [collaborator], logger: quiet)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                await eventually("joined once running") { leader.collaborator("collab-1")?.state == .active }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }

    @Test("graceful shutdown of the group: the collaborator says GOODBYE, and run() returns")
    func gracefulShutdown() async throws {
        try await withLeader { leader, port, log in
            let collaborator = try await Self.collaborator("collab-1", port: port)
            let group = ServiceGroup(services: [collaborator], logger: quiet)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // Open at both ends: a shutdown during HELLO abandons the attempt instead.
                await eventually("joined") {
                    leader.collaborator("collab-1")?.state == .active && collaborator.session != nil
                }
                let stopping = ContinuousClock.now
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                // Well under any heartbeat timeout (3 × 200 ms) or reconnect: GOODBYE ended it.
                #expect(ContinuousClock.now - stopping < Self.prompt)
            }
            await eventually("left gracefully") { log.left("collab-1") == .graceful }
            #expect(leader.collaborator("collab-1")?.state == .gone)
            #expect(collaborator.session == nil)
        }
    }

    @Test("cancelling the collaborator's task: GOODBYE first, and run() returns promptly")
    func cancellation() async throws {
        try await withLeader { leader, port, log in
            let collaborator = try await Self.collaborator("collab-1", port: port)
            collaborator.onRequest(topic: "slow") { _, _ in
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer()
            }
            let running = Task { try await collaborator.run() }
            await eventually("joined") {
                leader.collaborator("collab-1")?.state == .active && collaborator.session != nil
            }
            // A handler in progress does not hold the shutdown up.
            let pending = Task {
                try await leader.request(to: "collab-1", topic: "slow", body: ByteBuffer(), timeout: .seconds(90))
            }
            try await Task.sleep(for: .milliseconds(100))
            let stopping = ContinuousClock.now
            running.cancel()
            try await running.value
            #expect(ContinuousClock.now - stopping < Self.prompt, "run() must return promptly when cancelled")
            await eventually("left gracefully") { log.left("collab-1") == .graceful }
            // The leader's request ended with the session (answered UNAVAILABLE, or cut short by
            // the close): it does not wait out its 90 s.
            await #expect(throws: (any Error).self) { try await pending.value }
            #expect(ContinuousClock.now - stopping < Self.prompt)
            // Stays stopped: no reconnect after a cancellation.
            try await Task.sleep(for: .milliseconds(300))
            #expect(leader.sessionCount == 0)
        }
    }

    @Test("a leader in a ServiceGroup: cancelling says GOODBYE to every collaborator and returns")
    func leaderCancellation() async throws {
        var configuration = LeaderConfiguration()
        configuration.server.session.heartbeatInterval = .milliseconds(200)
        configuration.server.session.drainTimeout = .seconds(2)
        let leader = Leader(
            configuration: configuration,
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet
        )
        let log = MembershipLog(leader)
        let group = ServiceGroup(services: [leader], logger: quiet)
        let running = Task { try await group.run() }
        let port = try await leader.listeningAddress().port!
        let collaborator = try await Self.collaborator("collab-2", port: port)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await collaborator.run() }
            await eventually("joined") {
                leader.collaborator("collab-2")?.state == .active && collaborator.session != nil
            }
            let session = try #require(collaborator.session)
            let stopping = ContinuousClock.now
            running.cancel()
            try await running.value
            #expect(ContinuousClock.now - stopping < Self.prompt, "the leader's run() must return promptly")
            await session.waitUntilClosed()
            #expect(session.closeReason == nil, "closed by the leader's GOODBYE, not an error")
            #expect(leader.sessionCount == 0)
            await eventually("the departure recorded") { log.left("collab-2") != nil }
            #expect(log.left("collab-2") == .graceful, "the leader said GOODBYE: a graceful departure")
            await collaborator.leave()
            try await tasks.waitForAll()
        }
    }

    @Test("run() runs once: a second call throws")
    func runsOnce() async throws {
        try await withLeader { _, port, _ in
            let collaborator = try await Self.collaborator("collab-1", port: port)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await collaborator.run() }
                await eventually("connected") { collaborator.session != nil }
                await #expect(throws: MessagingError.self) { try await collaborator.run() }
                #expect(collaborator.session != nil, "the second call leaves the first running")
                await collaborator.leave()
                try await tasks.waitForAll()
            }
        }
    }
}
