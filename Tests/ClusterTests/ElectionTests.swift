import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

@testable import Cluster

/// A leader in an election, on 127.0.0.1 with mutual TLS, running until the test ends it.
private func startCandidate(
    _ election: any LeaderElection,
    configure: (inout LeaderConfiguration) -> Void = { _ in }
) throws -> (Leader, Task<Void, any Error>) {
    var configuration = LeaderConfiguration()
    configuration.server.session.heartbeatInterval = .milliseconds(200)
    configuration.server.session.drainTimeout = .milliseconds(500)
    configuration.campaignRetryDelay = .milliseconds(50)
    configure(&configuration)
    let leader = Leader(
        configuration: configuration,
        transport: try ClusterCertificates.leaderTransport(),
        logger: quiet,
        election: election
    )
    return (leader, Task { try await leader.run() })
}

/// A collaborator that follows `election`.
private func startFollower(
    _ name: String,
    election: any LeaderElection
) async throws -> (Collaborator, Task<Void, any Error>) {
    var configuration = CollaboratorConfiguration(nodeID: name)
    configuration.session.heartbeatInterval = .milliseconds(200)
    configuration.reconnect = ReconnectPolicy(
        initialDelay: .milliseconds(20),
        multiplier: 2,
        maximumDelay: .milliseconds(300)
    )
    let collaborator = Collaborator(
        election: election,
        transport: try await ClusterCertificates.collaboratorTransport(name),
        serverHostname: "localhost",
        configuration: configuration
    )
    return (collaborator, Task { try await collaborator.run() })
}

/// Records what a leader handled on topic "work".
private final class Deliveries: Sendable {
    let bodies = NIOLockedValueBox<[String]>([])

    func attach(to leader: Leader) {
        leader.on(topic: "work") { message, _ in
            self.bodies.withLockedValue { $0.append(String(buffer: message.body)) }
        }
    }

    var all: [String] { self.bodies.withLockedValue { $0 } }
}

@Suite("Leader election (in memory)", .timeLimit(.minutes(2)))
struct ElectionTests {
    @Test("a standby leader refuses collaborators with GOING_AWAY; the elected one announces its term")
    func standbyRefuses() async throws {
        let election = InMemoryLeaderElection()
        // Someone else leads: term 1 belongs to a candidate that is not a Leader.
        let other = try await election.campaign(address: "127.0.0.1:1")
        let (standby, running) = try startCandidate(election)
        let port = try await standby.listeningAddress().port!
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: port,
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: "collab-1"),
            policy: .never
        )
        var events = client.events.makeAsyncIterator()
        await #expect(throws: MessagingError.self) { try await client.run() }
        guard case .disconnected(let error)? = await events.next() else {
            Issue.record("no disconnection")
            return
        }
        #expect(error?.reason.contains("not the active leader") == true)
        #expect(standby.leadership == nil)

        // The other candidate resigns: this leader is elected with term 2 and says so in HELLO.
        await election.resign(other)
        var leadership = standby.leadershipEvents.makeAsyncIterator()
        #expect(await leadership.next() == .standby)
        #expect(await leadership.next() == .elected(term: 2))
        let session = try await SecureClient.connect(
            host: "127.0.0.1",
            port: port,
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: "collab-1")
        ).session
        #expect(session.peer?.metadata["term"] == "2")
        await session.close()
        standby.shutdown()
        try await running.value
    }

    @Test("a leader whose lease is lost steps down; collaborators move to the next leader")
    func failover() async throws {
        let election = InMemoryLeaderElection()
        let (first, firstRun) = try startCandidate(election)
        var firstEvents = first.leadershipEvents.makeAsyncIterator()
        #expect(await firstEvents.next() == .standby)
        #expect(await firstEvents.next() == .elected(term: 1))
        let (second, secondRun) = try startCandidate(election)
        let (collaborator, collaboratorRun) = try await startFollower("collab-1", election: election)
        await eventually("first.collaborator(\"collab-1\")?.state == .active") {
            first.collaborator("collab-1")?.state == .active
        }

        election.loseLease()
        // Told by its hold ("lease expired") or by the election ("a newer leader…"), whichever
        // comes first.
        guard case .steppedDown(term: 1, _)? = await firstEvents.next() else {
            Issue.record("the first leader did not step down")
            return
        }
        #expect(await firstEvents.next() == .standby)
        await eventually("second.collaborator(\"collab-1\")?.state == .active") {
            second.collaborator("collab-1")?.state == .active
        }
        #expect(second.leadership?.term == 2)
        #expect(first.leadership == nil)
        #expect(collaborator.highestTermSeen == 2)
        // The stepped-down leader refused the collaborator ever after.
        #expect(first.collaborator("collab-1")?.state == .gone)

        await collaborator.leave()
        try await collaboratorRun.value
        first.shutdown()
        second.shutdown()
        try await firstRun.value
        try await secondRun.value
    }

    @Test("a collaborator refuses a leader whose term is lower than one it has seen")
    func lowerTermRefused() async throws {
        // The real leader has term 1 in its own election...
        let leaderElection = InMemoryLeaderElection()
        let (leader, leaderRun) = try startCandidate(leaderElection)
        let port = try await leader.listeningAddress().port!
        await eventually("leader.leadership?.term == 1") { leader.leadership?.term == 1 }
        // ...while the collaborator's election says term 3 is at that same address.
        let followed = InMemoryLeaderElection()
        for _ in 0..<2 {
            await followed.resign(try await followed.campaign(address: "127.0.0.1:1"))
        }
        _ = try await followed.campaign(address: "127.0.0.1:\(port)")
        let (collaborator, collaboratorRun) = try await startFollower("collab-1", election: followed)
        var events = collaborator.events.makeAsyncIterator()
        var refusal: String?
        var connected = false
        while let event = await events.next() {
            if case .connected = event {
                connected = true
            }
            if case .disconnected(let error?) = event {
                refusal = error.reason
                break
            }
        }
        #expect(refusal == "the leader's term 1 is lower than term 3, already seen")
        // The HELLO exchange completed (that is how the term is learnt), and the collaborator
        // left at once: it never served a message of that leader.
        #expect(!connected)
        #expect(collaborator.session == nil)
        await eventually("the refused collaborator gone") { leader.collaborator("collab-1")?.state == .gone }
        await collaborator.leave()
        try await collaboratorRun.value
        leader.shutdown()
        try await leaderRun.value
    }

    @Test("past its lease, on its own clock, a leader serves nothing")
    func ownClock() async throws {
        let election = InMemoryLeaderElection(leaseTime: .seconds(60))
        let (leader, running) = try startCandidate(election)
        await eventually("leader.leadership != nil") { leader.leadership != nil }
        let until = try #require(leader.leadership?.validUntil)
        #expect(leader.isServing(at: until - .milliseconds(1)))
        #expect(!leader.isServing(at: until))
        #expect(!leader.isServing(at: until + .seconds(3600)))
        leader.shutdown()
        try await running.value
    }

    @Test("acknowledged sends before, during and after a failover all reach a leader")
    func acknowledgedAcrossFailover() async throws {
        let election = InMemoryLeaderElection()
        let deliveries = Deliveries()
        let (first, firstRun) = try startCandidate(election)
        deliveries.attach(to: first)
        await eventually("first.leadership != nil") { first.leadership != nil }
        let (second, secondRun) = try startCandidate(election)
        deliveries.attach(to: second)
        let (collaborator, collaboratorRun) = try await startFollower("collab-1", election: election)
        let count = 300
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for index in 0..<count {
                    try await collaborator.sendAcknowledged(topic: "work", body: ByteBuffer(string: "\(index)"))
                }
            }
            group.addTask {
                await eventually("deliveries.all.count >= count / 3") { deliveries.all.count >= count / 3 }
                election.loseLease()
            }
            try await group.waitForAll()
        }
        // An ACK says the leader took the message; its handler runs just after.
        let expected = Set((0..<count).map { "\($0)" })
        await eventually("every message handled") { Set(deliveries.all) == expected }
        #expect(Set(deliveries.all) == expected)
        #expect(second.leadership?.term == 2)
        await collaborator.leave()
        try await collaboratorRun.value
        first.shutdown()
        second.shutdown()
        try await firstRun.value
        try await secondRun.value
    }

    @Test("a standby leader's run() returns at once when its task is cancelled")
    func standbyCancel() async throws {
        let election = InMemoryLeaderElection()
        _ = try await election.campaign(address: "127.0.0.1:1")
        let (standby, running) = try startCandidate(election)
        _ = try await standby.listeningAddress()
        running.cancel()
        try await running.value
        #expect(standby.leadership == nil)
    }
}
