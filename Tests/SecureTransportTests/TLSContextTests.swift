import Foundation
import NIOCore
import Testing

@testable import SecureTransport

@Suite("TLSContext configuration")
struct TLSContextTests {
    private func expectError(
        _ code: TLSError.Code,
        containing text: String,
        sourceLocation: SourceLocation = #_sourceLocation,
        _ configure: (inout TLSConfiguration) -> Void
    ) {
        var config = TestCertificates.serverConfiguration()
        configure(&config)
        do {
            _ = try TLSContext(configuration: config)
            Issue.record("expected \(code)", sourceLocation: sourceLocation)
        } catch let error as TLSError {
            #expect(error.code == code, sourceLocation: sourceLocation)
            #expect(error.reason.contains(text), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("bad inputs give clear errors")
    func badInputs() {
        self.expectError(.invalidCertificate, containing: "cannot open") {
            $0.certificateChain = .file("/nonexistent/server.pem")
        }
        self.expectError(.invalidPrivateKey, containing: "cannot open") {
            $0.privateKey = .file("/nonexistent/server.key")
        }
        self.expectError(.invalidPrivateKey, containing: "does not match") {
            $0.privateKey = .file(TestCertificates.path("collab-1.key"))
        }
        self.expectError(.invalidPrivateKey, containing: "needs a passphrase") {
            $0.privateKey = .file(TestCertificates.path("encrypted.key"))
        }
        self.expectError(.invalidPrivateKey, containing: "cannot read the private key") {
            $0.privateKey = .file(TestCertificates.path("encrypted.key"))
            $0.privateKeyPassphrase = "wrong"
        }
        self.expectError(.invalidCertificate, containing: "no PEM certificate") {
            $0.certificateChain = .pem(Array("not a certificate".utf8))
        }
        self.expectError(.invalidConfiguration, containing: "TLS 1.2 cipher") {
            $0.tls12CipherSuites = "NOT-A-CIPHER"
        }
        self.expectError(.invalidConfiguration, containing: "key-exchange group") {
            $0.groups = "nonsense"
        }
        self.expectError(.invalidConfiguration, containing: "minimum version") {
            $0.minimumVersion = .tls13
            $0.maximumVersion = .tls12
        }
        self.expectError(.invalidTrustRoots, containing: "cannot load CA file") {
            $0.trustRoots = .file("/nonexistent/ca.pem")
            $0.clientAuthentication = .required
        }
        self.expectError(.invalidTrustRoots, containing: "needs trust roots") {
            $0.clientAuthentication = .optional
        }
        self.expectError(.invalidCertificate, containing: "needs a certificate") {
            $0.certificateChain = nil
            $0.privateKey = nil
        }
    }

    @Test("keys and trust roots load from files, PEM bytes, a CA directory and with a passphrase")
    func sources() throws {
        let certificate = try Data(contentsOf: URL(fileURLWithPath: TestCertificates.path("server.pem")))
        let key = try Data(contentsOf: URL(fileURLWithPath: TestCertificates.path("server.key")))
        let ca = try Data(contentsOf: URL(fileURLWithPath: TestCertificates.path("ca.pem")))
        let passphrase = try String(contentsOfFile: TestCertificates.path("encrypted.pass"), encoding: .utf8)

        var fromBytes = TLSConfiguration.makeServerConfiguration(
            certificateChain: .pem(Array(certificate)),
            privateKey: .pem(Array(key))
        )
        fromBytes.trustRoots = .pem(Array(ca))
        fromBytes.clientAuthentication = .optional
        _ = try TLSContext(configuration: fromBytes)

        var encrypted = TestCertificates.serverConfiguration()
        encrypted.privateKey = .file(TestCertificates.path("encrypted.key"))
        encrypted.privateKeyPassphrase = passphrase.trimmingCharacters(in: .newlines)
        _ = try TLSContext(configuration: encrypted)

        let directory = TLSConfiguration.makeClientConfiguration(
            trustRoots: .directory(TestCertificates.path("ca-dir"))
        )
        _ = try TLSContext(configuration: directory)
        _ = try TLSContext(configuration: .makeClientConfiguration(trustRoots: .system))
        _ = try TLSContext(configuration: TestCertificates.serverConfiguration(cert: "server-rsa"))
    }

    @Test("a context made from a CA directory verifies a server")
    func caDirectoryVerifies() throws {
        let client = try TLSContext(
            configuration: .makeClientConfiguration(trustRoots: .directory(TestCertificates.path("ca-dir")))
        )
        let server = try TLSContext(configuration: TestCertificates.serverConfiguration(cert: "server-rsa"))
        let pair = try InMemoryPair(client: client, server: server)
        guard case .complete = pair.handshake() else {
            Issue.record("handshake failed")
            return
        }
        #expect(pair.client.handshakeInfo.cipherSuite.hasPrefix("TLS_AES"))
    }

    @Test("the description never shows the passphrase or key bytes")
    func redactedDescription() {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: .pem(Array("CERT".utf8)),
            privateKey: .pem(Array("-----BEGIN PRIVATE KEY----- secret".utf8))
        )
        config.privateKeyPassphrase = "hunter2"
        let text = "\(config) \(String(reflecting: config))"
        #expect(!text.contains("hunter2"))
        #expect(!text.contains("secret"))
        #expect(text.contains("<redacted>"))
    }

    @Test("a verifying client needs the server's name")
    func clientNeedsName() throws {
        let context = try TLSContext(configuration: TestCertificates.clientConfiguration())
        #expect(throws: TLSError.self) {
            _ = try TLSConnection(context: context, allocator: .init(), serverHostname: nil)
        }
    }
}
