import Cluster
import EtcdElection
import Foundation
import Messaging
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

/// etcd as production runs it: `https` only, and a client certificate required
/// (`--client-cert-auth`). Its certificates come from one CA made here, in memory.
struct EtcdTLS {
    let authority: CertificateAuthority
    let files: EtcdTLSFiles
    let directory: String

    init() throws {
        self.authority = try CertificateAuthority(commonName: "etcd test CA")
        self.directory = NSTemporaryDirectory() + "smsg-etcd-tls-\(UUID())"
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        // etcd's own certificate serves clients and, for its JSON gateway, is a client too.
        let server = try self.authority.issue(
            CertificateRequest(
                commonName: "etcd",
                dnsNames: ["etcd", "localhost"],
                ipAddresses: ["127.0.0.1"],
                usage: [.server, .client]
            )
        )
        let ca = "\(self.directory)/ca.pem"
        try self.authority.root.certificatePEM.write(toFile: ca, atomically: true, encoding: .utf8)
        try server.certificatePEM.write(toFile: "\(self.directory)/etcd.pem", atomically: true, encoding: .utf8)
        try server.privateKeyPEM.write(toFile: "\(self.directory)/etcd.key", atomically: true, encoding: .utf8)
        self.files = EtcdTLSFiles(ca: ca, certificate: "\(self.directory)/etcd.pem", key: "\(self.directory)/etcd.key")
    }

    /// A client configuration for etcd: its CA, and a certificate of `name`'s own unless `nil`.
    /// Its ALPN is the configurations' default (`smsg/1`): the election must offer `http/1.1`
    /// whatever it says.
    func client(_ name: String?) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration(trustRoots: self.authority.trustRoots)
        if let name {
            let issued = try self.authority.issue(
                CertificateRequest(commonName: name, dnsNames: [name], usage: .client)
            )
            configuration.certificateChain = issued.certificateChain
            configuration.privateKey = issued.privateKey
        }
        return configuration
    }

    func election(_ etcd: EtcdCluster, name: String, client: String?) throws -> EtcdLeaderElection {
        var configuration = EtcdElectionConfiguration(endpoints: etcd.clientURLs, electionName: name)
        configuration.tls = try self.client(client)
        return try EtcdLeaderElection(configuration: configuration)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

@Suite("The election on etcd over mutual TLS", .serialized, .timeLimit(.minutes(2)))
struct EtcdTLSTests {
    @Test("a leader and a collaborator follow an election on etcd that requires client certificates")
    func leaderAndCollaborator() async throws {
        let tls = try EtcdTLS()
        defer { tls.remove() }
        let etcd = try await EtcdCluster(tls: tls.files)
        #expect(etcd.clientURLs.allSatisfy { $0.hasPrefix("https://") })

        let leaderElection = try tls.election(etcd, name: "secure", client: "leader")
        let leader = Leader(
            configuration: LeaderConfiguration(),
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet,
            election: leaderElection
        )
        leader.onRequest(topic: "term") { _, _ in ByteBuffer(string: "\(leader.leadership?.term ?? 0)") }
        let leaderRun = Task { try await leader.run() }
        var leadership = leader.leadershipEvents.makeAsyncIterator()
        #expect(await leadership.next() == .standby)
        guard case .elected(let term)? = await leadership.next() else {
            Issue.record("the leader was not elected")
            return
        }

        let collaboratorElection = try tls.election(etcd, name: "secure", client: "collab-1")
        let collaborator = Collaborator(
            election: collaboratorElection,
            transport: try await ClusterCertificates.collaboratorTransport("collab-1"),
            serverHostname: "localhost",
            configuration: CollaboratorConfiguration(nodeID: "collab-1")
        )
        let collaboratorRun = Task { try await collaborator.run() }
        let answer = try await collaborator.request(topic: "term", body: ByteBuffer(), timeout: .seconds(20))
        #expect(String(buffer: answer.body) == "\(term)")
        #expect(collaborator.highestTermSeen == term)

        await collaborator.leave()
        try await collaboratorRun.value
        leader.shutdown()
        try await leaderRun.value
        await collaboratorElection.shutdown()
        await leaderElection.shutdown()
    }

    @Test("without a client certificate etcd refuses the election, and the error says TLS refused it")
    func noClientCertificate() async throws {
        let tls = try EtcdTLS()
        defer { tls.remove() }
        let etcd = try await EtcdCluster(tls: tls.files)
        let election = try tls.election(etcd, name: "secure", client: nil)
        defer { Task { await election.shutdown() } }
        do {
            _ = try await election.campaign(address: "127.0.0.1:1001")
            Issue.record("etcd took a campaign without a client certificate")
        } catch let error as EtcdError {
            #expect(error.code == .unreachable, "\(error)")
            // Refused by TLS: a TLS error underneath (TLS 1.3 sends "certificate required"
            // after the handshake, as the first record the client reads).
            let tls = (error.cause as? MessagingError)?.tlsError ?? (error.cause as? TLSError)
            #expect(tls != nil || "\(error)".contains("certificate"), "\(String(reflecting: error))")
        }
    }

    @Test("a shut-down election ends its readers and refuses calls")
    func shutdown() async throws {
        let tls = try EtcdTLS()
        defer { tls.remove() }
        let etcd = try await EtcdCluster(tls: tls.files)
        let election = try tls.election(etcd, name: "secure", client: "leader")
        let won = try await election.campaign(address: "127.0.0.1:1001")
        var leaders = election.leaders().makeAsyncIterator()
        #expect(try await leaders.next() == ElectedLeader(term: won.term, address: "127.0.0.1:1001"))
        await election.resign(won)
        await election.shutdown()
        #expect(try await leaders.next() == nil)
        do {
            _ = try await election.campaign(address: "127.0.0.1:1001")
            Issue.record("a shut-down election campaigned")
        } catch let error as EtcdError {
            #expect(error.code == .shutDown)
        }
        // A reader that comes later has nothing to follow either.
        var late = election.leaders().makeAsyncIterator()
        #expect(try await late.next() == nil)
    }
}
