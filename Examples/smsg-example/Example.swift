import Logging
import Messaging
import NIOCore
import SecureTransport

/// A server that answers each request with its body reversed, and a client that asks it once,
/// both over TLS with the test certificates in certs/ (run scripts/gen-certs.sh first).
@main
struct Example {
    static func main() async throws {
        let logger = Logger(label: "smsg.example")

        let serverTLS = try TLSTransport(
            configuration: .makeServerConfiguration(
                certificateChain: .file("certs/server.pem"),
                privateKey: .file("certs/server.key")
            )
        )
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(host: "127.0.0.1", port: 0),
            transport: serverTLS,
            logger: logger
        ) { session in
            for try await message in session.messages where message.isRequest {
                let text = String(buffer: message.body)
                try await session.respond(to: message, body: ByteBuffer(string: String(text.reversed())))
            }
        }
        async let serving: Void = server.run()
        let port = try await server.listeningAddress().port!

        let clientTLS = try TLSTransport(configuration: .makeClientConfiguration(trustRoots: .file("certs/ca.pem")))
        let client = try await SecureClient.connect(
            host: "127.0.0.1",
            port: port,
            transport: clientTLS,
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: "example-client")
        )
        let reply = try await client.request(topic: "reverse", body: ByteBuffer(string: "hello, smsg"))
        print(String(buffer: reply.body))

        await client.close()
        server.shutdown()
        try await serving
    }
}
