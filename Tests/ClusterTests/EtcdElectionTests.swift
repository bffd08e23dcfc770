import Cluster
import EtcdElection
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

/// Leases of 5 s where the test is not about timing: a stall of the test process (seconds,
/// sometimes, on two shared cores) must not end a leadership the test relies on.
private func etcdElection(_ etcd: EtcdCluster, name: String, ttl: Int = 5) throws -> EtcdLeaderElection {
    var configuration = EtcdElectionConfiguration(endpoints: etcd.clientURLs, electionName: name)
    configuration.leaseTTL = .seconds(ttl)
    return try EtcdLeaderElection(configuration: configuration)
}

/// The election on real etcd (Debian's etcd-server, started on loopback ports by each test).
@Suite("Leader election on etcd", .serialized, .timeLimit(.minutes(2)))
struct EtcdElectionTests {
    @Test("one candidate at a time is elected; terms grow; followers see each leader")
    func campaignAndObserve() async throws {
        let etcd = try await EtcdCluster()
        let first = try etcdElection(etcd, name: "campaign")
        let second = try etcdElection(etcd, name: "campaign")
        var leaders = first.leaders().makeAsyncIterator()

        let started = ContinuousClock.now
        let won = try await first.campaign(address: "127.0.0.1:1001")
        #expect(won.address == "127.0.0.1:1001")
        #expect(won.validUntil > started)
        #expect(try await leaders.next() == ElectedLeader(term: won.term, address: "127.0.0.1:1001"))

        let waiting = Task { try await second.campaign(address: "127.0.0.1:1002") }
        try await Task.sleep(for: .milliseconds(500))
        await first.resign(won)
        let next = try await waiting.value
        #expect(next.term > won.term)
        #expect(try await leaders.next() == ElectedLeader(term: next.term, address: "127.0.0.1:1002"))

        // Its lease revoked behind its back, the holder hears that it is gone.
        let holding = Task { try await second.hold(next) { _ in } }
        await first.resign(next)
        await #expect(throws: LeaderElectionError.self) { try await holding.value }
    }

    @Test("each leader is told once, though the follower also asks for it once per lease")
    func eachLeaderOnce() async throws {
        let etcd = try await EtcdCluster()
        let candidates = try etcdElection(etcd, name: "once")
        // A follower on one-second leases asks for the leader every second, besides observing.
        var leaders = try etcdElection(etcd, name: "once", ttl: 1).leaders().makeAsyncIterator()
        let first = try await candidates.campaign(address: "127.0.0.1:1001")
        #expect(try await leaders.next() == ElectedLeader(term: first.term, address: "127.0.0.1:1001"))
        // Three polls, each answered with the same leader.
        try await Task.sleep(for: .milliseconds(3_500))
        await candidates.resign(first)
        let second = try await candidates.campaign(address: "127.0.0.1:1002")
        #expect(try await leaders.next() == ElectedLeader(term: second.term, address: "127.0.0.1:1002"))
        await candidates.resign(second)
    }

    @Test("readers of one election share its observation: a later one is told the current leader at once")
    func sharedReaders() async throws {
        let etcd = try await EtcdCluster()
        let candidates = try etcdElection(etcd, name: "shared")
        let follower = try etcdElection(etcd, name: "shared")
        let first = try await candidates.campaign(address: "127.0.0.1:1001")
        var early: AsyncThrowingStream<ElectedLeader, any Error>.AsyncIterator? = follower.leaders().makeAsyncIterator()
        #expect(try await early?.next() == ElectedLeader(term: first.term, address: "127.0.0.1:1001"))
        var late = follower.leaders().makeAsyncIterator()
        #expect(try await late.next() == ElectedLeader(term: first.term, address: "127.0.0.1:1001"))
        // The first reader goes; the observation carries on for the other.
        early = nil
        await candidates.resign(first)
        let second = try await candidates.campaign(address: "127.0.0.1:1002")
        #expect(try await late.next() == ElectedLeader(term: second.term, address: "127.0.0.1:1002"))
        await candidates.resign(second)
        let third = try await candidates.campaign(address: "127.0.0.1:1003")
        #expect(try await late.next() == ElectedLeader(term: third.term, address: "127.0.0.1:1003"))
        await candidates.resign(third)
    }

    @Test("a collaborator refuses a leader whose term is lower than the one etcd gave for its address")
    func lowerTermRefused() async throws {
        let etcd = try await EtcdCluster()
        // A leader elected in its own election: an older term...
        var leaderConfiguration = LeaderConfiguration()
        leaderConfiguration.server.session.drainTimeout = .milliseconds(500)
        let stale = Leader(
            configuration: leaderConfiguration,
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet,
            election: try etcdElection(etcd, name: "stale")
        )
        let staleRun = Task { try await stale.run() }
        await eventually("the stale leader elected") { stale.leadership != nil }
        let staleTerm = try #require(stale.leadership?.term)
        let port = try await stale.listeningAddress().port!
        // ...at the address that the collaborator's election, later, gives a newer term.
        let followed = try etcdElection(etcd, name: "followed")
        let current = try await followed.campaign(address: "127.0.0.1:\(port)")
        #expect(current.term > staleTerm)
        var configuration = CollaboratorConfiguration(nodeID: "collab-1")
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(300))
        let collaborator = Collaborator(
            election: try etcdElection(etcd, name: "followed"),
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: configuration
        )
        var events = collaborator.events.makeAsyncIterator()
        let collaboratorRun = Task { try await collaborator.run() }
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
        #expect(refusal == "the leader's term \(staleTerm) is lower than term \(current.term), already seen")
        #expect(!connected)
        #expect(collaborator.session == nil)
        #expect(collaborator.highestTermSeen == current.term)
        await collaborator.leave()
        try await collaboratorRun.value
        await followed.resign(current)
        stale.shutdown()
        try await staleRun.value
    }

    @Test("the lease is renewed: validUntil moves on while the leadership is held")
    func renewals() async throws {
        let etcd = try await EtcdCluster()
        let election = try etcdElection(etcd, name: "renew")
        let won = try await election.campaign(address: "127.0.0.1:1001")
        let confirmations = NIOLockedValueBox<[ContinuousClock.Instant]>([])
        let holding = Task {
            try await election.hold(won) { until in confirmations.withLockedValue { $0.append(until) } }
        }
        // Four renewals per time to live: a few in three seconds, each later than the last.
        await eventually("three renewals", timeout: .seconds(20)) { confirmations.withLockedValue { $0.count } >= 3 }
        let seen = confirmations.withLockedValue { $0 }
        // Renewals overlap, so their answers may come in any order; each one confirms more.
        #expect(seen.allSatisfy { $0 > won.validUntil })
        #expect(seen.max()! > seen.min()!)
        holding.cancel()
        try await holding.value
        await election.resign(won)
    }

    @Test("renewals answered slowly (a busy etcd or machine) still keep the leadership without a gap")
    func slowRenewals() async throws {
        let etcd = try await EtcdCluster()
        let port = Int(etcd.clientURLs[0].split(separator: ":").last!)!
        let proxy = try await FaultProxy.start(targetPort: port)
        // 10 s leases: renewals every 2.5 s, each confirming until 8 s after it was sent.
        let direct = try etcdElection(etcd, name: "slow", ttl: 10)
        var configuration = EtcdElectionConfiguration(
            endpoints: ["http://127.0.0.1:\(proxy.port)"],
            electionName: "slow"
        )
        configuration.leaseTTL = .seconds(10)
        let slow = try EtcdLeaderElection(configuration: configuration)
        let won = try await direct.campaign(address: "127.0.0.1:1001")
        // Each way delayed 1.5 s: a renewal is answered 3 s or more after it was sent. Renewals
        // sent one after another (each after the last answer) would be confirmed every 5.5 s
        // or more, each confirmation reaching only 8 s past its own send: the leadership would
        // lapse between them.
        proxy.setDelay(.milliseconds(1_500))
        let until = NIOLockedValueBox(won.validUntil)
        let confirmations = NIOLockedValueBox(0)
        let holding = Task {
            try await slow.hold(won) { instant in
                until.withLockedValue { $0 = max($0, instant) }
                confirmations.withLockedValue { $0 += 1 }
            }
        }
        var lapses = 0
        let end = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < end {
            if ContinuousClock.now >= until.withLockedValue({ $0 }) { lapses += 1 }
            try await Task.sleep(for: .milliseconds(50))
        }
        holding.cancel()
        try await holding.value
        #expect(lapses == 0)
        #expect(confirmations.withLockedValue { $0 } >= 4)
        await proxy.close()
        await direct.resign(won)
    }

    @Test("a leader whose lease is revoked steps down; a collaborator's acknowledged sends all arrive")
    func acknowledgedAcrossFailover() async throws {
        let etcd = try await EtcdCluster()
        let received = NIOLockedValueBox<[String]>([])
        func candidate() throws -> (Leader, Task<Void, any Error>) {
            var configuration = LeaderConfiguration()
            configuration.server.session.heartbeatInterval = .milliseconds(200)
            configuration.server.session.drainTimeout = .milliseconds(500)
            configuration.campaignRetryDelay = .milliseconds(100)
            let leader = Leader(
                configuration: configuration,
                transport: try ClusterCertificates.leaderTransport(),
                logger: quiet,
                election: try etcdElection(etcd, name: "acked")
            )
            leader.on(topic: "work") { message, _ in
                received.withLockedValue { $0.append(String(buffer: message.body)) }
            }
            return (leader, Task { try await leader.run() })
        }
        let (first, firstRun) = try candidate()
        var firstEvents = first.leadershipEvents.makeAsyncIterator()
        #expect(await firstEvents.next() == .standby)
        #expect(await firstEvents.next() != nil)
        let (second, secondRun) = try candidate()
        var configuration = CollaboratorConfiguration(nodeID: "collab-1")
        configuration.session.heartbeatInterval = .milliseconds(200)
        configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(300))
        let collaborator = Collaborator(
            election: try etcdElection(etcd, name: "acked"),
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: configuration
        )
        let collaboratorRun = Task { try await collaborator.run() }
        let firstTerm = try #require(first.leadership?.term)
        let revoked = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
        let count = 400
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for index in 0..<count {
                    try await collaborator.sendAcknowledged(topic: "work", body: ByteBuffer(string: "\(index)"))
                }
            }
            group.addTask {
                await eventually("a third sent") { received.withLockedValue { $0.count } >= count / 3 }
                // The first leader's lease is revoked in etcd: it loses the leadership abruptly.
                let leadership = try #require(first.leadership)
                await (try etcdElection(etcd, name: "acked")).resign(leadership)
                revoked.withLockedValue { $0 = .now }
            }
            try await group.waitForAll()
        }
        // An ACK says the leader took the message; its handler runs just after: the last one
        // may still be on its way when the last send returns.
        let expected = Set((0..<count).map { "\($0)" })
        await eventually("every message handled", timeout: .seconds(10)) {
            Set(received.withLockedValue { $0 }) == expected
        }
        #expect(Set(received.withLockedValue { $0 }) == expected)
        let secondTerm = try #require(second.leadership?.term)
        #expect(secondTerm > firstTerm)
        // The first leader heard it from etcd (its next renewal, or the election's news of
        // the second), not by waiting out its 5-second lease.
        guard case .steppedDown(term: firstTerm, _)? = await firstEvents.next() else {
            Issue.record("the first leader did not step down")
            return
        }
        let steppedDown = ContinuousClock.now
        #expect(steppedDown - revoked.withLockedValue { $0! } < .seconds(5))
        #expect(collaborator.highestTermSeen ?? 0 >= secondTerm)
        await collaborator.leave()
        try await collaboratorRun.value
        first.shutdown()
        second.shutdown()
        try await firstRun.value
        try await secondRun.value
    }

    @Test("a leader that shuts down hands over at once: its lease is revoked, not left to expire")
    func gracefulHandover() async throws {
        let etcd = try await EtcdCluster()
        func candidate() throws -> (Leader, Task<Void, any Error>) {
            var configuration = LeaderConfiguration()
            configuration.server.session.drainTimeout = .milliseconds(500)
            // A lease far longer than the test may take to see the handover.
            let leader = Leader(
                configuration: configuration,
                transport: try ClusterCertificates.leaderTransport(),
                logger: quiet,
                election: try etcdElection(etcd, name: "handover", ttl: 60)
            )
            return (leader, Task { try await leader.run() })
        }
        let (first, firstRun) = try candidate()
        await eventually("the first elected") { first.leadership != nil }
        let (second, secondRun) = try candidate()
        try await Task.sleep(for: .milliseconds(300))
        #expect(second.leadership == nil)
        let stopped = ContinuousClock.now
        first.shutdown()
        try await firstRun.value
        await eventually("the second elected", timeout: .seconds(30)) { second.leadership != nil }
        #expect(ContinuousClock.now - stopped < .seconds(30))
        second.shutdown()
        try await secondRun.value
    }

    @Test("losing one of three etcd members changes nothing: the leader keeps its term")
    func oneMemberLost() async throws {
        let etcd = try await EtcdCluster(members: 3)
        var configuration = LeaderConfiguration()
        configuration.server.session.heartbeatInterval = .milliseconds(200)
        let leader = Leader(
            configuration: configuration,
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet,
            election: try etcdElection(etcd, name: "three")
        )
        let running = Task { try await leader.run() }
        let events = NIOLockedValueBox<[LeadershipEvent]>([])
        let recording = Task {
            for await event in leader.leadershipEvents {
                events.withLockedValue { $0.append(event) }
            }
        }
        await eventually("elected") { leader.leadership != nil }
        let term = try #require(leader.leadership?.term)
        // The member every call tries first goes.
        await etcd.kill(member: 0)
        // Longer than the lease's time to live: a leader that could not renew would have
        // stepped down by now.
        try await Task.sleep(for: .seconds(7))
        #expect(leader.leadership?.term == term)
        #expect(events.withLockedValue { $0 } == [.standby, .elected(term: term)])
        // A collaborator that starts now still finds the leader through the other members.
        var collaboratorConfiguration = CollaboratorConfiguration(nodeID: "collab-1")
        collaboratorConfiguration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(20))
        let collaborator = Collaborator(
            election: try etcdElection(etcd, name: "three"),
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: collaboratorConfiguration
        )
        let collaboratorRun = Task { try await collaborator.run() }
        await eventually("joined", timeout: .seconds(20)) { leader.collaborator("collab-1")?.state == .active }
        await collaborator.leave()
        try await collaboratorRun.value
        leader.shutdown()
        try await running.value
        await recording.value
    }
}
