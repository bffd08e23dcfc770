import Foundation
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

@testable import Messaging

/// Certificate reload, revocation lists and key logging: what an operator does to a running
/// server.
@Suite("TLS operations")
struct TLSOperationsTests {
    /// A scratch directory holding copies of the named certificate files.
    static func scratchCopies(_ names: [String]) throws -> String {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("smsg-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for name in names {
            try FileManager.default.copyItem(atPath: Certificates.path(name), toPath: "\(directory)/\(name)")
        }
        return directory
    }

    static func replace(_ target: String, with source: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Certificates.path(source)))
        try data.write(to: URL(fileURLWithPath: target), options: .atomic)
    }

    static func fingerprint(_ client: SecureClient) -> [UInt8]? {
        client.session.tlsHandshake?.peerCertificate?.sha256Fingerprint
    }

    @Test("reload with 20 sessions open: they carry on, new clients see the new certificate, a broken one is refused")
    func reloadUnderLoad() async throws {
        let directory = try Self.scratchCopies(["server.pem", "server.key"])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: .file("\(directory)/server.pem"),
            privateKey: .file("\(directory)/server.key")
        )
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(),
            transport: try TLSTransport(configuration: tls),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!

        var clients: [SecureClient] = []
        for index in 0..<20 {
            clients.append(try await connect(.tls, port: port, nodeID: "client-\(index)"))
        }
        let original = try #require(Self.fingerprint(clients[0]))

        // A new certificate and key from the same CA (RSA this time), then reload.
        try Self.replace("\(directory)/server.pem", with: "server-rsa.pem")
        try Self.replace("\(directory)/server.key", with: "server-rsa.key")
        let context = try server.reloadTLS()
        let renewed = try #require(context.localCertificate?.sha256Fingerprint)
        #expect(renewed != original)

        for (index, client) in clients.enumerated() {
            let reply = try await client.request(topic: "after-reload", body: ByteBuffer(string: "\(index)"))
            #expect(String(buffer: reply.body) == "\(index)")
            #expect(Self.fingerprint(client) == original, "an open session keeps its certificate")
        }
        let fresh = try await connect(.tls, port: port, nodeID: "fresh")
        #expect(Self.fingerprint(fresh) == renewed, "a new client sees the new certificate")

        // A key that does not match the certificate: refused, and the renewed context stays.
        try Self.replace("\(directory)/server.key", with: "collab-1.key")
        do {
            try server.reloadTLS()
            Issue.record("a mismatched key was accepted")
        } catch let error as TLSError {
            #expect(error.code == .invalidPrivateKey, "\(error)")
        }
        // An unreadable certificate: refused the same way.
        try "not a certificate".write(toFile: "\(directory)/server.pem", atomically: true, encoding: .utf8)
        #expect(throws: TLSError.self) { try server.reloadTLS() }

        let afterRefusals = try await connect(.tls, port: port, nodeID: "after-refusals")
        #expect(Self.fingerprint(afterRefusals) == renewed)
        for client in clients + [fresh, afterRefusals] {
            _ = try await client.request(topic: "still-here", body: ByteBuffer())
            await client.close()
        }
        server.shutdown()
        try await running.value
    }

    @Test("a plaintext server has no TLS to reload")
    func reloadWithoutTLS() async throws {
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(),
            transport: PlainTCPTransport(),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        _ = try await server.listeningAddress()
        do {
            try server.reloadTLS()
            Issue.record("a plaintext server reloaded TLS")
        } catch let error as TLSError {
            #expect(error.code == .invalidConfiguration)
        }
        server.shutdown()
        try await running.value
    }

    /// A mutual-TLS server whose trust store checks the CRLs in `crl`.
    static func withCRLServer<T>(crl: String, _ body: (Int) async throws -> T) async throws -> T {
        var tls = TLSConfiguration.makeMutualTLSServerConfiguration(
            certificateChain: .file(Certificates.path("server.pem")),
            privateKey: .file(Certificates.path("server.key")),
            trustRoots: .file(Certificates.path("ca.pem")),
            clientAuthentication: .required
        )
        tls.crlFile = Certificates.path(crl)
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(),
            transport: try TLSTransport(configuration: tls),
            logger: quietLogger,
            handler: echoHandler
        )
        let running = Task { try await server.run() }
        let port = try await server.listeningAddress().port!
        let result = try await body(port)
        server.shutdown()
        try await running.value
        return result
    }

    @Test("a revoked client certificate is refused; the same certificate passes an empty CRL")
    func revocation() async throws {
        try await Self.withCRLServer(crl: "ca.crl.pem") { port in
            do {
                let client = try await connect(.tls, port: port, nodeID: "revoked", cert: "revoked")
                Issue.record("a revoked certificate was accepted")
                await client.close()
            } catch let error as MessagingError {
                #expect(error.code == .connectFailed)
            }
            let good = try await connect(.tls, port: port, nodeID: "collab-1", cert: "collab-1")
            _ = try await good.request(topic: "ok", body: ByteBuffer())
            await good.close()
        }
        try await Self.withCRLServer(crl: "ca-empty.crl.pem") { port in
            let client = try await connect(.tls, port: port, nodeID: "revoked", cert: "revoked")
            _ = try await client.request(topic: "ok", body: ByteBuffer())
            await client.close()
        }
    }

    @Test("an unusable CRL file is refused when the context is built")
    func badCRL() throws {
        var tls = TLSConfiguration.makeMutualTLSServerConfiguration(
            certificateChain: .file(Certificates.path("server.pem")),
            privateKey: .file(Certificates.path("server.key")),
            trustRoots: .file(Certificates.path("ca.pem")),
            clientAuthentication: .required
        )
        for (file, expected) in [
            ("/nonexistent/crl.pem", "cannot read CRL file"), (Certificates.path("ca.pem"), "no CRL"),
        ] {
            tls.crlFile = file
            do {
                _ = try TLSContext(configuration: tls)
                Issue.record("\(file) was accepted as a CRL file")
            } catch let error as TLSError {
                #expect(error.code == .invalidTrustRoots)
                #expect(error.reason.contains(expected), "\(error.reason)")
            }
        }
        var noRoots = TLSConfiguration.makeServerConfiguration(
            certificateChain: .file(Certificates.path("server.pem")),
            privateKey: .file(Certificates.path("server.key"))
        )
        noRoots.crlFile = Certificates.path("ca.crl.pem")
        #expect(throws: TLSError.self) { _ = try TLSContext(configuration: noRoots) }
    }

    @Test("key logging writes the NSS key log lines of every handshake to a 0600 file")
    func keyLog() async throws {
        let directory = try Self.scratchCopies([])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/keys.log"
        var tls = TLSConfiguration.makeClientConfiguration(trustRoots: .file(Certificates.path("ca.pem")))
        tls.keyLogFile = path
        #expect(tls.description.contains("TLS SECRETS ARE BEING LOGGED"))
        let transport = try TLSTransport(configuration: tls)
        try await withServer(.tls) { _, port in
            for index in 0..<2 {
                let client = try await SecureClient.connect(
                    host: "127.0.0.1",
                    port: port,
                    transport: transport,
                    serverHostname: "localhost",
                    configuration: ClientConfiguration(nodeID: "logged-\(index)")
                )
                _ = try await client.request(topic: "x", body: ByteBuffer())
                await client.close()
            }
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        let labels = lines.map { $0.split(separator: " ").first.map(String.init) ?? "" }
        for label in [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
        ] {
            #expect(labels.filter { $0 == label }.count == 2, "\(label) once per connection")
        }
        #expect(lines.allSatisfy { $0.split(separator: " ").count == 3 })
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }
}
