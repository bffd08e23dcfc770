import NIOCore
import Testing

@testable import SecureTransport

/// Every way a handshake must be refused: a readable TLSError, a closed connection, no hang.
@Suite("Refused handshakes")
struct RefusalTests {
    /// Connects a client to a server and waits until both sides have closed.
    private func refuse(
        server serverConfig: TLSConfiguration,
        client clientConfig: TLSConfiguration,
        serverHostname: String = "localhost"
    ) async throws -> (client: PeerLog, server: PeerLog) {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: serverConfig)
        )
        defer { Task { try? await server.close() } }
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: clientConfig),
            serverHostname: serverHostname
        )
        // With TLS 1.3 a client can finish its side before the server refuses it; a read
        // (here: the echo the server would send) is where it learns of the refusal.
        try? await client.send(ByteBuffer(string: "are we connected?"))
        let serverLog = try #require(await server.acceptedLog())
        await client.log.wait("client closed", timeout: 5) { $0.isClosed }
        await serverLog.wait("server closed", timeout: 5) { $0.isClosed }
        #expect(client.log.bytes.readableBytes == 0, "no application data may cross a refused connection")
        return (client.log, serverLog)
    }

    @Test("a server certificate from an unknown CA")
    func unknownCA() async throws {
        let (client, server) = try await self.refuse(
            server: TestCertificates.serverConfiguration(cert: "other"),
            client: TestCertificates.clientConfiguration()
        )
        let error = try #require(client.tlsErrors.first)
        #expect(error.code == .certificateVerificationFailed)
        #expect(error.reason.contains("unable to get local issuer certificate"))
        #expect(server.tlsErrors.first?.code == .certificateRejected)
    }

    @Test("an expired server certificate")
    func expired() async throws {
        let (client, _) = try await self.refuse(
            server: TestCertificates.serverConfiguration(cert: "expired"),
            client: TestCertificates.clientConfiguration()
        )
        let error = try #require(client.tlsErrors.first)
        #expect(error.code == .certificateVerificationFailed)
        #expect(error.reason.contains("certificate has expired"))
    }

    @Test("a server certificate for another host name")
    func wrongHost() async throws {
        let (client, _) = try await self.refuse(
            server: TestCertificates.serverConfiguration(cert: "wronghost"),
            client: TestCertificates.clientConfiguration()
        )
        let error = try #require(client.tlsErrors.first)
        #expect(error.code == .certificateVerificationFailed)
        #expect(error.reason.contains("hostname mismatch"))
    }

    @Test("a server name that is not in the certificate, given as an IP address")
    func wrongIPAddress() async throws {
        let (client, _) = try await self.refuse(
            server: TestCertificates.serverConfiguration(),
            client: TestCertificates.clientConfiguration(),
            serverHostname: "127.0.0.2"
        )
        let error = try #require(client.tlsErrors.first)
        #expect(error.code == .certificateVerificationFailed)
        #expect(error.reason.contains("IP address mismatch"))
    }

    @Test("no client certificate where one is required")
    func missingClientCertificate() async throws {
        let (client, server) = try await self.refuse(
            server: TestCertificates.serverConfiguration(clientAuthentication: .required),
            client: TestCertificates.clientConfiguration()
        )
        let error = try #require(server.tlsErrors.first)
        #expect(error.code == .certificateRequired)
        #expect(error.reason.contains("no certificate"))
        #expect(client.tlsErrors.first?.code == .certificateRequired)
    }

    @Test("a client certificate from an unrelated CA")
    func clientCertificateFromUnrelatedCA() async throws {
        let (client, server) = try await self.refuse(
            server: TestCertificates.serverConfiguration(clientAuthentication: .required),
            client: TestCertificates.clientConfiguration(cert: "other")
        )
        let error = try #require(server.tlsErrors.first)
        #expect(error.code == .certificateVerificationFailed)
        #expect(error.reason.contains("unable to get local issuer certificate"))
        #expect(client.tlsErrors.first?.code == .certificateRejected)
    }

    @Test("ALPN offered without smsg/1")
    func wrongApplicationProtocol() async throws {
        var clientConfig = TestCertificates.clientConfiguration()
        clientConfig.applicationProtocols = ["h2", "http/1.1"]
        let (client, server) = try await self.refuse(
            server: TestCertificates.serverConfiguration(),
            client: clientConfig
        )
        #expect(server.tlsErrors.first?.code == .noApplicationProtocol)
        #expect(client.tlsErrors.first?.code == .noApplicationProtocol)
        #expect(client.tlsErrors.first?.reason.contains("no application protocol") == true)
    }

    @Test("a client that offers no ALPN is accepted")
    func noALPNAccepted() async throws {
        var clientConfig = TestCertificates.clientConfiguration()
        clientConfig.applicationProtocols = []
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: clientConfig)
        )
        try await client.send(ByteBuffer(string: "hi"))
        await client.log.wait("echo") { $0.bytes.readableBytes == 2 }
        #expect(client.log.handshake?.applicationProtocol == nil)
        try await client.channel.close()
        try await server.close()
    }

    @Test("plaintext bytes sent to the TLS port")
    func plaintextToTLSPort() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try await LoopbackClient.connect(group: testGroup, port: server.port, context: nil)
        try await client.send(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server refused") { $0.isClosed }
        await client.log.wait("client closed") { $0.isClosed }
        let error = try #require(serverLog.tlsErrors.first)
        #expect(error.code == .handshakeFailed)
        #expect(error.reason.contains("wrong version number") || error.reason.contains("http request"))
        try await server.close()
    }

    @Test("a client that connects and sends nothing is closed at the handshake timeout")
    func silentClient() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration()),
            handshakeTimeout: .milliseconds(300)
        )
        let started = ContinuousClock.now
        let client = try await LoopbackClient.connect(group: testGroup, port: server.port, context: nil)
        await client.log.wait("client closed by the server", timeout: 5) { $0.isClosed }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(250))
        let serverLog = try #require(await server.acceptedLog())
        #expect(serverLog.tlsErrors.first?.code == .handshakeTimeout)
        // Nothing at all was sent to a peer that never started its handshake.
        #expect(client.log.bytes.readableBytes == 0)
        try await server.close()
    }
}
