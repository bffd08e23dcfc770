import Foundation
import NIOCore
import Testing

@testable import SecureTransport

/// Certificates made in process by ``CertificateAuthority``, used for real handshakes.
@Suite("CertificateAuthority and PeerCertificate")
struct CertificateAuthorityTests {
    static let authority = Result { try CertificateAuthority(commonName: "test CA") }

    static func contexts(
        server: CertificateAndKey,
        client: CertificateAndKey,
        trust authority: CertificateAuthority
    ) throws -> (client: TLSContext, server: TLSContext) {
        var serverConfiguration = TLSConfiguration.makeServerConfiguration(
            certificateChain: server.certificateChain,
            privateKey: server.privateKey
        )
        serverConfiguration.trustRoots = authority.trustRoots
        serverConfiguration.clientAuthentication = .required
        var clientConfiguration = TLSConfiguration.makeClientConfiguration(trustRoots: authority.trustRoots)
        clientConfiguration.certificateChain = client.certificateChain
        clientConfiguration.privateKey = client.privateKey
        return (try TLSContext(configuration: clientConfiguration), try TLSContext(configuration: serverConfiguration))
    }

    @Test("issued certificates complete a mutual TLS handshake, and the peer sees every field")
    func mutualHandshake() throws {
        let authority = try Self.authority.get()
        let server = try authority.issue(
            CertificateRequest(
                commonName: "leader",
                dnsNames: ["leader", "localhost"],
                ipAddresses: ["127.0.0.1", "::1"]
            )
        )
        let client = try authority.issue(
            CertificateRequest(
                commonName: "collab-1",
                dnsNames: ["collab-1"],
                uris: ["spiffe://example.org/node/collab-1"],
                usage: .client,
                validity: .seconds(7 * 86_400)
            )
        )
        let (clientContext, serverContext) = try Self.contexts(server: server, client: client, trust: authority)
        let pair = try InMemoryPair(client: clientContext, server: serverContext)
        guard case .complete = pair.handshake() else {
            Issue.record("handshake failed")
            return
        }
        let seenByClient = try #require(pair.client.handshakeInfo.peerCertificate)
        #expect(seenByClient.dnsNames == ["leader", "localhost"])
        #expect(seenByClient.ipAddresses == ["127.0.0.1", "0:0:0:0:0:0:0:1"])
        #expect(seenByClient.issuer == "CN=test CA")

        let seenByServer = try #require(pair.server.handshakeInfo.peerCertificate)
        #expect(seenByServer.commonName == "collab-1")
        #expect(seenByServer.uris == ["spiffe://example.org/node/collab-1"])
        #expect(seenByServer.serialNumber.count == 32, "a 127-bit serial: \(seenByServer.serialNumber)")
        #expect(seenByServer.serialNumber != seenByClient.serialNumber)
        let now = Date()
        #expect(abs(seenByServer.notValidBefore.timeIntervalSince(now) + 300) < 30)
        #expect(abs(seenByServer.notValidAfter.timeIntervalSince(now) - 7 * 86_400) < 30)
    }

    @Test("serial, dates and issuer read as openssl prints them, for a fixture certificate")
    func fieldsMatchOpenSSL() throws {
        let path = TestCertificates.path("collab-1.pem")
        let certificate = try PeerCertificate(pem: try String(contentsOfFile: path, encoding: .utf8))
        let serial = try Self.openssl(["x509", "-in", path, "-noout", "-serial"])
        #expect("serial=\(certificate.serialNumber)\n" == serial)
        let end = try Self.openssl(["x509", "-in", path, "-noout", "-enddate", "-dateopt", "iso_8601"])
        // "notAfter=2028-09-03 02:46:56Z"
        let stamp = end.dropFirst("notAfter=".count).trimmingCharacters(in: .whitespacesAndNewlines)
        let expected = ISO8601DateFormatter().date(from: stamp.replacingOccurrences(of: " ", with: "T"))
        #expect(certificate.notValidAfter == expected, "\(end)")
        #expect(certificate.issuer == "CN=smsg Test CA")
    }

    static func openssl(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    @Test("a certificate from another authority is refused")
    func otherAuthorityRefused() throws {
        let authority = try Self.authority.get()
        let stranger = try CertificateAuthority(commonName: "stranger CA")
        let server = try authority.issue(CertificateRequest(commonName: "leader", dnsNames: ["localhost"]))
        let client = try stranger.issue(CertificateRequest(commonName: "collab-1", dnsNames: ["collab-1"]))
        let (clientContext, serverContext) = try Self.contexts(server: server, client: client, trust: authority)
        let pair = try InMemoryPair(client: clientContext, server: serverContext)
        guard case .serverFailed(let error) = pair.handshake() else {
            Issue.record("the server took a certificate from another authority")
            return
        }
        #expect(error.code == .certificateVerificationFailed, "\(error)")
    }

    @Test("a client-only certificate cannot serve")
    func usageIsEnforced() throws {
        let authority = try Self.authority.get()
        let clientOnly = try authority.issue(
            CertificateRequest(commonName: "x", dnsNames: ["localhost"], usage: .client)
        )
        let client = try authority.issue(CertificateRequest(commonName: "collab-1", dnsNames: ["collab-1"]))
        let (clientContext, serverContext) = try Self.contexts(server: clientOnly, client: client, trust: authority)
        let pair = try InMemoryPair(client: clientContext, server: serverContext)
        guard case .clientFailed(let error) = pair.handshake() else {
            Issue.record("a clientAuth-only certificate served")
            return
        }
        #expect(error.code == .certificateVerificationFailed, "\(error)")
    }

    @Test(
        "names that cannot go in a certificate are refused before anything is made",
        arguments: [
            CertificateRequest(commonName: "x", dnsNames: ["a,DNS:evil.example"]),
            CertificateRequest(commonName: "x", dnsNames: ["-bad.example"]),
            CertificateRequest(commonName: "x", dnsNames: [""]),
            CertificateRequest(commonName: "x", ipAddresses: ["300.1.2.3"]),
            CertificateRequest(commonName: "x", ipAddresses: ["127.0.0.1,DNS:evil"]),
            CertificateRequest(commonName: "x", ipAddresses: ["10.0.0.1\n"], uris: ["spiffe://a/b"]),
            CertificateRequest(commonName: "x", ipAddresses: ["1.2.3.4 x"]),
            CertificateRequest(commonName: "x", uris: ["no-scheme"]),
            CertificateRequest(commonName: "x", uris: ["spiffe://a/b,DNS:evil"]),
            CertificateRequest(commonName: "", dnsNames: ["x"]),
            CertificateRequest(commonName: "x", usage: []),
            CertificateRequest(commonName: "x", validity: .zero),
        ]
    )
    func badRequests(request: CertificateRequest) throws {
        let authority = try Self.authority.get()
        let error = #expect(throws: TLSError.self) { try authority.issue(request) }
        #expect(error?.code == .invalidCertificate, "\(String(describing: error))")
    }

    @Test("an existing authority is checked: its key must match and it must be a CA")
    func loadingAnAuthority() throws {
        let authority = try Self.authority.get()
        let reloaded = try CertificateAuthority(root: authority.root)
        #expect(reloaded.root == authority.root)

        let other = try CertificateAuthority(commonName: "other")
        let mismatched = CertificateAndKey(
            certificatePEM: authority.root.certificatePEM,
            privateKeyPEM: other.root.privateKeyPEM
        )
        let keyError = #expect(throws: TLSError.self) { try CertificateAuthority(root: mismatched) }
        #expect(keyError?.code == .invalidPrivateKey)

        let leaf = try authority.issue(CertificateRequest(commonName: "leaf", dnsNames: ["leaf"]))
        let leafError = #expect(throws: TLSError.self) { try CertificateAuthority(root: leaf) }
        #expect(leafError?.code == .invalidCertificate)
    }

    @Test("identity mappings: first DNS name, common name, URI under a prefix, custom")
    func identityMappings() throws {
        let authority = try Self.authority.get()
        let issued = try authority.issue(
            CertificateRequest(
                commonName: "common",
                dnsNames: ["dns-1", "dns-2"],
                uris: ["https://example.org/x", "spiffe://example.org/node/collab-7"]
            )
        )
        let certificate = try PeerCertificate(pem: issued.certificatePEM)
        #expect(IdentityMapping.firstDNSName.identity(of: certificate) == "dns-1")
        #expect(certificate.identity == "dns-1")
        #expect(IdentityMapping.commonName.identity(of: certificate) == "common")
        #expect(IdentityMapping.uri().identity(of: certificate) == "https://example.org/x")
        #expect(IdentityMapping.uri(prefix: "spiffe://example.org/node/").identity(of: certificate) == "collab-7")
        #expect(IdentityMapping.uri(prefix: "spiffe://other.org/").identity(of: certificate) == nil)
        let custom = IdentityMapping.custom("serial") { $0.serialNumber }
        #expect(custom.identity(of: certificate) == certificate.serialNumber)
        #expect(custom == .custom("serial") { _ in nil })
        #expect(custom != .firstDNSName)

        let cnOnly = try authority.issue(CertificateRequest(commonName: "only-cn"))
        let cnCertificate = try PeerCertificate(pem: cnOnly.certificatePEM)
        #expect(IdentityMapping.firstDNSName.identity(of: cnCertificate) == "only-cn")
        #expect(IdentityMapping.uri().identity(of: cnCertificate) == nil)
    }

    @Test("a node's request: its id first among the DNS names, loopback names for a server, no other name first")
    func nodeRequests() throws {
        let server = try CertificateRequest.node(
            "leader",
            usage: [.server, .client],
            dnsNames: ["leader.example", "localhost"]
        )
        #expect(server.commonName == "leader")
        #expect(server.dnsNames == ["leader", "localhost", "leader.example"])
        #expect(server.ipAddresses == ["127.0.0.1", "::1"])
        let client = try CertificateRequest.node("collab_1", usage: .client)
        #expect(client.commonName == "collab_1")
        #expect(client.dnsNames.isEmpty)
        #expect(throws: TLSError.self) { try CertificateRequest.node("collab_1", usage: [.server, .client]) }
        #expect(throws: TLSError.self) { try CertificateRequest.node("collab_1", usage: .client, dnsNames: ["x"]) }
    }
}
