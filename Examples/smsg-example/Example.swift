import Logging
import Messaging
import NIOCore
import SecureTransport

/// A server that answers each request with its body reversed, and a client that asks it once,
/// both over TLS with the certificates in certs/: make them with `securemsg certs ca --dir certs`
/// and `securemsg certs issue leader --server --dir certs` (scripts/gen-certs.sh makes them too).
@main
struct Example {
    static func main() async throws {
        let logger = Logger(label: "smsg.example")

        let serverTLS = try TLSTransport(
            configuration: .makeServerConfiguration(
                certificateChain: .file("certs/leader.pem"),
                privateKey: .file("certs/leader.key")
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
