import NIOCore
import SMSGTestSupport
import Testing

@testable import SecureTransport

@Suite("TLSConnection in memory")
struct TLSConnectionTests {
    static let versions: [TLSConfiguration.Version] = [.tls12, .tls13]

    private func contexts(version: TLSConfiguration.Version) throws -> (client: TLSContext, server: TLSContext) {
        var server = TestCertificates.serverConfiguration()
        server.minimumVersion = version
        server.maximumVersion = version
        var client = TestCertificates.clientConfiguration()
        client.minimumVersion = version
        client.maximumVersion = version
        return (try TLSContext(configuration: client), try TLSContext(configuration: server))
    }

    @Test("handshake, data both ways, close_notify", arguments: versions)
    func handshakeDataAndClose(version: TLSConfiguration.Version) throws {
        let (clientContext, serverContext) = try self.contexts(version: version)
        let pair = try InMemoryPair(client: clientContext, server: serverContext)
        guard case .complete = pair.handshake() else {
            Issue.record("handshake failed")
            return
        }
        let clientInfo = pair.client.handshakeInfo
        #expect(clientInfo.version == version)
        #expect(clientInfo.applicationProtocol == "smsg/1")
        #expect(clientInfo.peerCertificate?.commonName == "localhost")
        #expect(pair.server.handshakeInfo.peerCertificate == nil)

        for size in [1, 16_384, 1 << 20] {
            let payload = patternBuffer(size, step: 31)
            #expect(pair.client.writePlaintext(payload) == nil)
            pair.shuttle()
            let (atServer, serverResult) = InMemoryPair.readAll(pair.server)
            #expect(atServer == payload, "client → server, \(size) bytes")
            guard case .wantMoreCiphertext = serverResult else {
                Issue.record("unexpected server read result \(serverResult)")
                return
            }

            #expect(pair.server.writePlaintext(payload) == nil)
            pair.shuttle()
            let (atClient, _) = InMemoryPair.readAll(pair.client)
            #expect(atClient == payload, "server → client, \(size) bytes")
        }

        pair.client.sendCloseNotify()
        pair.shuttle()
        let (_, result) = InMemoryPair.readAll(pair.server)
        guard case .closeNotify = result else {
            Issue.record("server did not see close_notify: \(result)")
            return
        }
        #expect(pair.server.receivedCloseNotify)
        pair.server.sendCloseNotify()
        pair.shuttle()
        let (_, clientResult) = InMemoryPair.readAll(pair.client)
        guard case .closeNotify = clientResult else {
            Issue.record("client did not see close_notify: \(clientResult)")
            return
        }
    }

    @Test("end of input without close_notify is truncation")
    func truncation() throws {
        let (clientContext, serverContext) = try self.contexts(version: .tls13)
        let pair = try InMemoryPair(client: clientContext, server: serverContext)
        guard case .complete = pair.handshake() else {
            Issue.record("handshake failed")
            return
        }
        pair.server.markTransportEnded()
        let (_, result) = InMemoryPair.readAll(pair.server)
        guard case .failed(let error) = result else {
            Issue.record("expected a failure, got \(result)")
            return
        }
        #expect(error.code == .truncatedConnection)
    }

    @Test("contexts count their live connections")
    func liveConnectionCount() throws {
        let (clientContext, serverContext) = try self.contexts(version: .tls13)
        do {
            let pair = try InMemoryPair(client: clientContext, server: serverContext)
            #expect(clientContext.activeConnectionCount == 1)
            #expect(serverContext.activeConnectionCount == 1)
            _ = pair.handshake()
        }
        #expect(clientContext.activeConnectionCount == 0)
        #expect(serverContext.activeConnectionCount == 0)
    }
}
