import Foundation
import NIOCore
import NIOPosix
import SMSGTestSupport
import Testing

@testable import SecureTransport

@Suite("TLSHandler over loopback")
struct TLSHandlerTests {
    @Test(
        "echo in both directions",
        arguments: [TLSConfiguration.Version.tls12, .tls13]
    )
    func echo(version: TLSConfiguration.Version) async throws {
        var serverConfig = TestCertificates.serverConfiguration()
        serverConfig.minimumVersion = version
        serverConfig.maximumVersion = version
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: serverConfig)
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: TestCertificates.clientConfiguration())
        )
        await client.log.wait("handshake") { $0.handshake != nil }
        #expect(client.log.handshake?.version == version)
        #expect(client.log.handshake?.applicationProtocol == "smsg/1")
        #expect(client.log.handshake?.peerCertificate?.dnsNames.contains("localhost") == true)

        var expected = ByteBuffer()
        for (index, size) in [1, 16_384, 1 << 20].enumerated() {
            var payload = patternBuffer(size, seed: UInt8(index))
            try await client.send(payload)
            expected.writeBuffer(&payload)
            let target = expected.readableBytes
            await client.log.wait("echo of \(size) bytes") { $0.bytes.readableBytes >= target }
        }
        #expect(client.log.bytes == expected)

        try await client.channel.close()
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server side closed") { $0.isClosed }
        // The client sent close_notify, so the server saw a clean close, not a truncation.
        #expect(serverLog.tlsErrors.isEmpty)
        #expect(client.log.tlsErrors.isEmpty)
        try await server.close()
    }

    @Test("many small writes in one flush arrive in order")
    func coalescedWrites() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: TestCertificates.clientConfiguration())
        )
        let messages = (0..<1000).map { patternBuffer(64, seed: UInt8(truncatingIfNeeded: $0)) }
        // A write larger than the coalescing limit between small ones.
        let mixed = [patternBuffer(10, seed: 1), patternBuffer(100_000, seed: 9), patternBuffer(10, seed: 2)]
        let channel = client.channel
        for batch in [messages, mixed] {
            try await channel.eventLoop.submit {
                for message in batch {
                    channel.write(message, promise: nil)
                }
                channel.flush()
            }.get()
        }
        var expected = ByteBuffer()
        for var message in messages + mixed {
            expected.writeBuffer(&message)
        }
        let total = expected.readableBytes
        await client.log.wait("all echoes") { $0.bytes.readableBytes >= total }
        #expect(client.log.bytes == expected)
        try await client.channel.close()
        try await server.close()
    }

    @Test("mutual TLS: the server sees the client's certificate")
    func mutualTLS() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(
                configuration: TestCertificates.serverConfiguration(clientAuthentication: .required)
            )
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: TestCertificates.clientConfiguration(cert: "collab-1"))
        )
        try await client.send(ByteBuffer(string: "ping"))
        await client.log.wait("echo") { $0.bytes.readableBytes == 4 }
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server handshake") { $0.handshake != nil }
        let peer = try #require(serverLog.handshake?.peerCertificate)
        #expect(peer.commonName == "collab-1")
        #expect(peer.dnsNames == ["collab-1"])
        #expect(peer.identity == "collab-1")
        #expect(peer.subject == "CN=collab-1")
        #expect(peer.sha256FingerprintHex == (try opensslFingerprint(TestCertificates.path("collab-1.pem"))))
        try await client.channel.close()
        try await server.close()
    }

    @Test("close(mode: .output) sends close_notify and keeps reading")
    func halfClose() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: TestCertificates.clientConfiguration())
        )
        await client.log.wait("handshake") { $0.handshake != nil }
        try await client.channel.close(mode: .output)
        // The server answers our close_notify with its own and closes: a clean close both ways.
        await client.log.wait("client closed") { $0.isClosed }
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server closed") { $0.isClosed }
        #expect(client.log.tlsErrors.isEmpty)
        #expect(serverLog.tlsErrors.isEmpty)
        try await server.close()
    }

    @Test("an end of input without close_notify is reported as truncation")
    func truncationOverLoopback() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: server.port,
            context: try TLSContext(configuration: TestCertificates.clientConfiguration())
        )
        try await client.send(ByteBuffer(string: "x"))
        await client.log.wait("echo") { $0.bytes.readableBytes == 1 }
        // Close with the gate shut: the socket closes but no close_notify goes out.
        try await client.dropOutgoingBytes()
        try await client.channel.close()
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("truncation reported") { log in
            log.tlsErrors.contains { $0.code == .truncatedConnection }
        }
        try await server.close()
    }
}

/// The SHA-256 fingerprint of a PEM certificate as the openssl CLI prints it.
func opensslFingerprint(_ path: String) throws -> String {
    let output = try runProcess("openssl", ["x509", "-in", path, "-noout", "-fingerprint", "-sha256"])
    // "sha256 Fingerprint=AB:CD:..."
    return String(output.split(separator: "=").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
}
