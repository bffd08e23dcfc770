import Foundation
import Messaging
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

/// `securemsg bench server` as a real process, driven by our client.
@Suite("securemsg bench server")
struct BenchServerTests {
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let certificates: String = {
        let directory = "\(repositoryRoot)/certs"
        _ = try? runProcess("bash", ["\(repositoryRoot)/scripts/gen-certs.sh", directory])
        return directory
    }()

    /// The securemsg binary next to the test bundle.
    static var executable: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return bundle.appendingPathComponent("securemsg").path
    }

    static func listeningPort(_ output: String) -> Int? {
        guard let range = output.range(of: "listening on 127.0.0.1:") else { return nil }
        return Int(output[range.upperBound...].prefix { $0.isNumber })
    }

    @Test("echoes over mutual TLS and stops on SIGTERM")
    func echoOverMutualTLS() async throws {
        let certs = Self.certificates
        let server = try ChildProcess(
            Self.executable,
            [
                "bench", "server", "--listen", "127.0.0.1:0", "--cert", "\(certs)/server.pem", "--key",
                "\(certs)/server.key", "--ca", "\(certs)/ca.pem", "--client-auth", "required",
            ]
        )
        defer { server.terminate() }
        await server.waitForOutput(containing: "listening on 127.0.0.1:")
        let port = try #require(Self.listeningPort(server.output))

        let tls = TLSConfiguration.makeClientConfiguration(
            certificateChain: .file("\(certs)/collab-1.pem"),
            privateKey: .file("\(certs)/collab-1.key"),
            trustRoots: .file("\(certs)/ca.pem")
        )
        let client = try await SecureClient.connect(
            host: "127.0.0.1",
            port: port,
            transport: try TLSTransport(configuration: tls),
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: "collab-1")
        )
        let reply = try await client.request(
            topic: "bench",
            headers: ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-k": "v"],
            body: ByteBuffer(string: "ping")
        )
        #expect(String(buffer: reply.body) == "ping")
        // The request's headers come back; the reserved smsg-timeout-ms it carried does not.
        #expect(
            reply.headers == ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-k": "v"]
        )
        try await client.send(topic: "echo", body: ByteBuffer(string: "data"), ackRequested: true)
        var messages = client.messages.makeAsyncIterator()
        let echo = try #require(try await messages.next())
        #expect(echo.topic == "echo")
        #expect(echo.id == 1)
        for _ in 0..<200 where client.session.acksReceived == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(client.session.acksReceived == 1)

        server.signal(SIGTERM)
        let status = await server.waitForExit()
        #expect(status == 0)
        await client.session.waitUntilClosed()
    }

    @Test("refuses bad arguments with a clear message")
    func badArguments() async throws {
        let missingKey = try ChildProcess(Self.executable, ["bench", "server", "--listen", "127.0.0.1:0"])
        #expect(await missingKey.waitForExit() != 0)
        #expect(missingKey.output.contains("--cert and --key are required"))

        let badListen = try ChildProcess(Self.executable, ["bench", "server", "--plaintext", "--listen", "nowhere"])
        #expect(await badListen.waitForExit() != 0)
        #expect(badListen.output.contains("HOST:PORT"))
    }
}
