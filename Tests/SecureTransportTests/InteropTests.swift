import Foundation
import NIOCore
import SMSGTestSupport
import Testing

@testable import SecureTransport

/// Our TLS against the openssl command-line tool, a real and independent peer.
@Suite("Interop with the openssl CLI")
struct InteropTests {
    @Test("our client against openssl s_server", arguments: [false, true])
    func clientAgainstSServer(clientCertificate: Bool) async throws {
        var arguments = [
            "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev",
            "-cert", TestCertificates.path("server.pem"), "-key", TestCertificates.path("server.key"),
            "-alpn", "smsg/1",
        ]
        if clientCertificate {
            arguments += ["-Verify", "1", "-verify_return_error", "-CAfile", TestCertificates.path("ca.pem")]
        }
        let server = try ChildProcess("openssl", arguments)
        defer { server.terminate() }
        await server.waitForOutput(containing: "ACCEPT 127.0.0.1:")
        let port = try #require(Self.acceptedPort(server.output))

        let client = try await LoopbackClient.connect(
            group: testGroup,
            port: port,
            context: try TLSContext(
                configuration: TestCertificates.clientConfiguration(cert: clientCertificate ? "collab-1" : nil)
            )
        )
        await client.log.wait("handshake") { $0.handshake != nil }
        #expect(client.log.handshake?.applicationProtocol == "smsg/1")
        #expect(client.log.handshake?.version == .tls13)
        // s_server -rev answers each line reversed.
        try await client.send(ByteBuffer(string: "smsg interop\n"))
        await client.log.wait("reversed line") { String(buffer: $0.bytes).contains("poretni gsms") }
        try await client.channel.close()
        await server.waitForExit()
        #expect(client.log.tlsErrors.isEmpty)
        if clientCertificate {
            #expect(server.output.contains("collab-1"))
        }
    }

    @Test("openssl s_client against our server", arguments: [false, true])
    func sClientAgainstServer(clientCertificate: Bool) async throws {
        let serverContext = try TLSContext(
            configuration: TestCertificates.serverConfiguration(
                clientAuthentication: clientCertificate ? .required : .none
            )
        )
        let server = try await LoopbackServer.start(group: testGroup, context: serverContext)
        var arguments = [
            "s_client", "-connect", "127.0.0.1:\(server.port)", "-servername", "localhost",
            "-CAfile", TestCertificates.path("ca.pem"), "-verify_return_error", "-verify_hostname", "localhost",
            "-alpn", "smsg/1",
        ]
        if clientCertificate {
            arguments += [
                "-cert", TestCertificates.path("collab-1.pem"), "-key", TestCertificates.path("collab-1.key"),
            ]
        }
        let client = try ChildProcess("openssl", arguments)
        defer { client.terminate() }
        await client.waitForOutput(containing: "Verify return code: 0 (ok)")
        #expect(client.output.contains("ALPN protocol: smsg/1"))
        client.write("echo through smsg\n")
        await client.waitForOutput(containing: "echo through smsg")
        client.closeInput()
        let status = await client.waitForExit()
        #expect(status == 0)

        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server closed") { $0.isClosed }
        #expect(serverLog.handshake?.applicationProtocol == "smsg/1")
        if clientCertificate {
            #expect(serverLog.handshake?.peerCertificate?.identity == "collab-1")
        } else {
            #expect(serverLog.handshake?.peerCertificate == nil)
        }
        try await server.close()
    }

    @Test("a TLS 1.1-only client is refused")
    func tls11Refused() async throws {
        let server = try await LoopbackServer.start(
            group: testGroup,
            context: try TLSContext(configuration: TestCertificates.serverConfiguration())
        )
        let client = try ChildProcess(
            "openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(server.port)", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
                "-CAfile", TestCertificates.path("ca.pem"),
            ]
        )
        defer { client.terminate() }
        client.closeInput()
        let status = await client.waitForExit()
        #expect(status != 0)
        let serverLog = try #require(await server.acceptedLog())
        await serverLog.wait("server refused") { $0.isClosed && !$0.tlsErrors.isEmpty }
        let error = try #require(serverLog.tlsErrors.first)
        #expect(error.code == .handshakeFailed)
        #expect(error.reason.contains("unsupported protocol"))
        try await server.close()
    }

    static func acceptedPort(_ output: String) -> Int? {
        guard let range = output.range(of: "ACCEPT 127.0.0.1:") else { return nil }
        let digits = output[range.upperBound...].prefix { $0.isNumber }
        return Int(digits)
    }
}
