import Foundation
import SMSGTestSupport
import Testing

/// `securemsg leader` and `securemsg collaborator` in an election on real etcd: several leader
/// processes, collaborators following the election, and the active leader killed, frozen, or
/// cut off from etcd.
@Suite("Leader failover on etcd (processes)", .serialized, .timeLimit(.minutes(3)))
struct LeaderFailoverTests {
    static let lease = "2"

    /// A leader process campaigning in `election`, with its metrics at `metricsPort`.
    static func startLeader(_ etcd: EtcdCluster, election: String, metricsPort: Int? = nil) throws -> ChildProcess {
        let certs = BenchServerTests.certificates
        return try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key",
                "--ca", "\(certs)/ca.pem", "--require-client-cert", "--etcd", etcd.endpoints, "--election", election,
                "--lease-ttl", Self.lease,
            ] + (metricsPort.map { ["--metrics", "127.0.0.1:\($0)"] } ?? [])
        )
    }

    /// A port free now (taken from the system and let go).
    static func freePort() -> Int {
        ClosedPort().port
    }

    /// The value of `name` on the metrics page at `port`.
    static func metric(_ name: String, port: Int) async -> Double? {
        guard let page = await httpGetOffPool(port: port, path: "/metrics") else { return nil }
        for line in page.split(separator: "\n") where line.hasPrefix("\(name) ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }

    /// A collaborator process following `election`.
    static func startCollaborator(_ etcd: EtcdCluster, election: String, id: String) throws -> ChildProcess {
        let certs = BenchServerTests.certificates
        return try ChildProcess(
            BenchServerTests.executable,
            [
                "collaborator", "--etcd", etcd.endpoints, "--election", election, "--id", id, "--cert",
                "\(certs)/\(id).pem", "--key", "\(certs)/\(id).key", "--ca", "\(certs)/ca.pem",
            ]
        )
    }

    /// The term in the last "elected term=N" line of `output`.
    static func electedTerm(_ output: String) -> UInt64? {
        output.split(separator: "\n").last { $0.hasPrefix("elected term=") }
            .flatMap { UInt64($0.dropFirst("elected term=".count)) }
    }

    /// An active leader, a standby one, and two collaborators joined to the active one.
    static func startGroup(
        _ etcd: EtcdCluster,
        election: String,
        metricsPort: Int? = nil
    ) async throws -> (
        active: ChildProcess, standby: ChildProcess, collaborators: [ChildProcess], term: UInt64
    ) {
        let active = try Self.startLeader(etcd, election: election)
        await active.waitForOutput(containing: "elected term=", timeout: 30)
        let term = try #require(Self.electedTerm(active.output))
        let standby = try Self.startLeader(etcd, election: election, metricsPort: metricsPort)
        await standby.waitForOutput(containing: "standby", timeout: 30)
        var collaborators: [ChildProcess] = []
        for id in ["collab-1", "collab-2"] {
            collaborators.append(try Self.startCollaborator(etcd, election: election, id: id))
        }
        for id in ["collab-1", "collab-2"] {
            await active.waitForOutput(containing: "joined \(id)", timeout: 30)
        }
        #expect(!standby.output.contains("joined"))
        return (active, standby, collaborators, term)
    }

    @Test("SIGKILL of the active leader: the standby is elected with a higher term and everyone joins it")
    func killActive() async throws {
        let etcd = try await EtcdCluster()
        let metricsPort = Self.freePort()
        let (active, standby, collaborators, term) = try await Self.startGroup(
            etcd,
            election: "kill",
            metricsPort: metricsPort
        )
        defer {
            for process in collaborators + [active, standby] { process.terminate() }
        }
        await eventually("the standby's gauge at 0") { await Self.metric("smsg_leader_active", port: metricsPort) == 0 }
        active.signal(SIGKILL)
        await standby.waitForOutput(containing: "elected term=", timeout: 30)
        let next = try #require(Self.electedTerm(standby.output))
        #expect(next > term)
        await eventually("the new leader's gauges") {
            let active = await Self.metric("smsg_leader_active", port: metricsPort)
            let term = await Self.metric("smsg_leader_term", port: metricsPort)
            return active == 1 && term == Double(next)
        }
        for id in ["collab-1", "collab-2"] {
            await standby.waitForOutput(containing: "joined \(id)", timeout: 30)
        }
        standby.signal(SIGTERM)
        #expect(await standby.waitForExit() == 0)
    }

    @Test("SIGSTOP of the active leader beyond its lease: on SIGCONT it steps down and nobody rejoins it")
    func freezeActive() async throws {
        let etcd = try await EtcdCluster()
        let (active, standby, collaborators, term) = try await Self.startGroup(etcd, election: "freeze")
        defer {
            active.signal(SIGCONT)
            for process in collaborators + [active, standby] { process.terminate() }
        }
        active.signal(SIGSTOP)
        await standby.waitForOutput(containing: "elected term=", timeout: 30)
        let next = try #require(Self.electedTerm(standby.output))
        #expect(next > term)
        for id in ["collab-1", "collab-2"] {
            await standby.waitForOutput(containing: "joined \(id)", timeout: 30)
        }
        let before = active.output
        #expect(!before.contains("stepped down"))
        active.signal(SIGCONT)
        await active.waitForOutput(containing: "stepped down term=\(term): ", timeout: 10)
        await active.waitForOutput(containing: "standby", timeout: 10)
        // A while longer: the collaborators stay with the new leader, and the old one serves
        // nobody.
        try await Task.sleep(for: .seconds(3))
        let after = String(active.output.dropFirst(before.count))
        #expect(!after.contains("joined"), "the frozen leader served after it ran again:\n\(after)")
        #expect(!after.contains("elected term=\(term)"))
        #expect(!standby.output.contains("left collab-"), "a collaborator left the new leader:\n\(standby.output)")
    }

    @Test("etcd unreachable from the active leader: it steps down within its lease")
    func etcdUnreachable() async throws {
        let etcd = try await EtcdCluster()
        let leader = try Self.startLeader(etcd, election: "cut")
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "elected term=", timeout: 30)
        let term = try #require(Self.electedTerm(leader.output))
        let collaborator = try Self.startCollaborator(etcd, election: "cut", id: "collab-1")
        defer { collaborator.terminate() }
        await leader.waitForOutput(containing: "joined collab-1", timeout: 30)
        let killed = ContinuousClock.now
        await etcd.kill(member: 0)
        await leader.waitForOutput(
            containing: "stepped down term=\(term): the lease was not confirmed in time",
            timeout: 10
        )
        // Four fifths of the lease from the last confirmed renewal: well within 2 s of the
        // kill, with a wide margin for a loaded machine.
        #expect(ContinuousClock.now - killed < .seconds(8))
        await collaborator.waitForOutput(containing: "collab-1: disconnected", timeout: 10)
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }
}
