import Foundation
import Messaging
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

/// `securemsg leader` reloading its certificate on SIGHUP, and checking a CRL.
@Suite("securemsg leader: SIGHUP reload and CRL")
struct LeaderReloadTests {
    static func connectCollaborator(
        port: Int,
        cert: String = "collab-1",
        nodeID: String? = nil
    ) async throws
        -> SecureClient
    {
        let certs = BenchServerTests.certificates
        var tls = TLSConfiguration.makeClientConfiguration(
            certificateChain: .file("\(certs)/\(cert).pem"),
            privateKey: .file("\(certs)/\(cert).key"),
            trustRoots: .file("\(certs)/ca.pem")
        )
        if !FileManager.default.fileExists(atPath: "\(certs)/\(cert).pem") {
            // Beyond the fixtures (collab-4, …): issued now, in memory, by the fixtures' CA.
            let issued = try CertificateAuthority(
                root: CertificateAndKey(
                    certificatePEM: try String(contentsOfFile: "\(certs)/ca.pem", encoding: .utf8),
                    privateKeyPEM: try String(contentsOfFile: "\(certs)/ca.key", encoding: .utf8)
                )
            ).issue(CertificateRequest(commonName: cert, dnsNames: [cert], usage: .client))
            tls.certificateChain = issued.certificateChain
            tls.privateKey = issued.privateKey
        }
        return try await SecureClient.connect(
            host: "127.0.0.1",
            port: port,
            transport: try TLSTransport(configuration: tls),
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: nodeID ?? cert)
        )
    }

    @Test("SIGHUP reloads the certificate for new connections; a broken one is refused and the old stays")
    func sighup() async throws {
        let certs = BenchServerTests.certificates
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-hup-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["leader.pem", "leader.key"] {
            try FileManager.default.copyItem(atPath: "\(certs)/\(name)", toPath: "\(directory)/\(name)")
        }
        let leader = try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "\(directory)/leader.pem", "--key",
                "\(directory)/leader.key", "--ca", "\(certs)/ca.pem", "--require-client-cert",
            ]
        )
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "listening on 127.0.0.1:")
        let port = try #require(BenchServerTests.listeningPort(leader.output))

        let first = try await Self.connectCollaborator(port: port)
        let before = first.session.tlsHandshake?.peerCertificate?.sha256Fingerprint

        // The server certificate (same CA, same names) replaces the leader's.
        for (target, source) in [("leader.pem", "server.pem"), ("leader.key", "server.key")] {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(certs)/\(source)"))
            try data.write(to: URL(fileURLWithPath: "\(directory)/\(target)"), options: .atomic)
        }
        leader.signal(SIGHUP)
        await leader.waitForOutput(containing: "TLS reloaded: certificate SHA-256")
        let second = try await Self.connectCollaborator(port: port, cert: "collab-2")
        let after = second.session.tlsHandshake?.peerCertificate?.sha256Fingerprint
        #expect(after != nil && after != before)
        #expect(leader.output.contains(second.session.tlsHandshake?.peerCertificate?.sha256FingerprintHex ?? "?"))

        // A key of another certificate: refused, and the reloaded certificate stays.
        let wrongKey = try Data(contentsOf: URL(fileURLWithPath: "\(certs)/collab-3.key"))
        try wrongKey.write(to: URL(fileURLWithPath: "\(directory)/leader.key"), options: .atomic)
        leader.signal(SIGHUP)
        await leader.waitForOutput(containing: "TLS reload refused")
        let third = try await Self.connectCollaborator(port: port, cert: "collab-3")
        #expect(third.session.tlsHandshake?.peerCertificate?.sha256Fingerprint == after)

        // The first session carried on through both reloads.
        try await first.send(topic: "still-here", body: ByteBuffer())
        #expect(first.session.currentState == .open)
        for client in [first, second, third] {
            await client.close()
        }
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }

    @Test("--crl refuses a revoked collaborator certificate")
    func crl() async throws {
        let certs = BenchServerTests.certificates
        let leader = try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key",
                "--ca", "\(certs)/ca.pem", "--require-client-cert", "--crl", "\(certs)/ca.crl.pem",
            ]
        )
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "listening on 127.0.0.1:")
        let port = try #require(BenchServerTests.listeningPort(leader.output))
        await #expect(throws: MessagingError.self) {
            // The certificate names collab-revoked: only its revocation stands in the way.
            _ = try await Self.connectCollaborator(port: port, cert: "revoked", nodeID: "collab-revoked")
        }
        let good = try await Self.connectCollaborator(port: port)
        await good.close()
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }
}

/// SIGTERM on a leader with collaborators attached.
@Suite("securemsg leader: SIGTERM with collaborators attached")
struct LeaderShutdownTests {
    @Test("every attached collaborator gets GOODBYE and the leader exits 0 within the drain deadline")
    func drain() async throws {
        let (leader, port) = try await LeaderCommandTests.startLeader()
        defer { leader.terminate() }
        var clients: [SecureClient] = []
        for index in 1...4 {
            clients.append(try await LeaderReloadTests.connectCollaborator(port: port, cert: "collab-\(index)"))
        }
        let started = ContinuousClock.now
        leader.signal(SIGTERM)
        for client in clients {
            // The leader's GOODBYE ends the message sequence cleanly (no error).
            for try await _ in client.messages {}
            await client.session.waitUntilClosed()
            #expect(client.session.closeReason == nil, "\(String(describing: client.session.closeReason))")
        }
        #expect(await leader.waitForExit() == 0)
        // The session drain timeout is 5 s; answered GOODBYEs end it long before.
        #expect(ContinuousClock.now - started < .seconds(5))
    }
}
