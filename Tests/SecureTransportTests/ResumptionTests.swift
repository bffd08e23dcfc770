import NIOCore
import Testing

@testable import SecureTransport

@Suite("TLS 1.3 session resumption")
struct ResumptionTests {
    @Test("in memory: the second connection resumes the first one's session")
    func inMemory() throws {
        let serverContext = try TLSContext(configuration: TestCertificates.serverConfiguration())
        let clientContext = try TLSContext(configuration: TestCertificates.clientConfiguration())

        let first = try InMemoryPair(client: clientContext, server: serverContext, resumptionKey: "localhost:1")
        guard case .complete = first.handshake() else {
            Issue.record("first handshake failed")
            return
        }
        #expect(!first.client.handshakeInfo.sessionReused)
        // TLS 1.3 tickets arrive after the handshake and are taken in by a read.
        _ = InMemoryPair.readAll(first.client)
        #expect(clientContext.sessionCache.count == 1)

        let second = try InMemoryPair(client: clientContext, server: serverContext, resumptionKey: "localhost:1")
        guard case .complete = second.handshake() else {
            Issue.record("second handshake failed")
            return
        }
        #expect(second.client.handshakeInfo.sessionReused)
        #expect(second.server.handshakeInfo.sessionReused)
        // The resumed session still knows the server's certificate.
        #expect(second.client.handshakeInfo.peerCertificate?.commonName == "localhost")

        let other = try InMemoryPair(client: clientContext, server: serverContext, resumptionKey: "elsewhere:1")
        guard case .complete = other.handshake() else {
            Issue.record("third handshake failed")
            return
        }
        #expect(!other.client.handshakeInfo.sessionReused, "a session is offered only for its own key")
    }

    @Test("over loopback, with and without resumption enabled", arguments: [true, false])
    func loopback(enabled: Bool) async throws {
        var serverConfig = TestCertificates.serverConfiguration(clientAuthentication: .required)
        serverConfig.sessionResumption = enabled
        var clientConfig = TestCertificates.clientConfiguration(cert: "collab-1")
        clientConfig.sessionResumption = enabled
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: serverConfig)
        )
        let clientContext = try TLSContext(configuration: clientConfig)

        var reused: [Bool] = []
        for _ in 0..<2 {
            let client = try await LoopbackClient.connect(group: testGroup, port: server.port, context: clientContext)
            try await client.send(ByteBuffer(string: "x"))
            await client.log.wait("echo") { $0.bytes.readableBytes == 1 }
            reused.append(client.log.handshake?.sessionReused ?? false)
            try await client.channel.close()
        }
        #expect(reused == [false, enabled])
        let serverLog = try #require(await server.acceptedLog(count: 2))
        await serverLog.wait("second handshake") { $0.handshake != nil }
        #expect(serverLog.handshake?.sessionReused == enabled)
        // A resumed mutual-TLS session still identifies the client.
        #expect(serverLog.handshake?.peerCertificate?.identity == "collab-1")
        try await server.close()
    }
}
