import ArgumentParser
import NIOCore
import NIOPosix
import SecureTransport

/// `securemsg demo`: a mutual-TLS echo over loopback with the certificates in `--certs`.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a mutual-TLS echo between a server and a client on 127.0.0.1."
    )

    @Option(help: "Directory with the certificates made by scripts/gen-certs.sh.")
    var certs: String = "certs"

    func run() async throws {
        let serverConfig = TLSConfiguration.makeMutualTLSServerConfiguration(
            certificateChain: .file("\(self.certs)/leader.pem"),
            privateKey: .file("\(self.certs)/leader.key"),
            trustRoots: .file("\(self.certs)/ca.pem")
        )
        let clientConfig = TLSConfiguration.makeClientConfiguration(
            certificateChain: .file("\(self.certs)/collab-1.pem"),
            privateKey: .file("\(self.certs)/collab-1.key"),
            trustRoots: .file("\(self.certs)/ca.pem")
        )
        let serverContext = try TLSContext(configuration: serverConfig)
        let clientContext = try TLSContext(configuration: clientConfig)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)

        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        TLSHandler(context: serverContext),
                        DemoEchoHandler()
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let port = server.localAddress?.port ?? 0
        print("server: listening on 127.0.0.1:\(port) (mutual TLS, certificate CN=leader)")

        let replies = group.next().makePromise(of: String.self)
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        TLSHandler(context: clientContext, serverHostname: "localhost"),
                        DemoClientHandler(message: "hello over mutual TLS", reply: replies)
                    )
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        let reply = try await replies.futureResult.get()
        print("client: echo received: \(reply)")
        try await client.close()
        try await server.close()
        try await group.shutdownGracefully()
        print("demo: done")
    }
}

/// Echoes every plaintext byte and reports the client it served.
final class DemoEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSHandshakeCompleted {
            let peer = event.info.peerCertificate?.identity ?? "anonymous"
            print("server: handshake \(event.info.version) \(event.info.cipherSuite) with client \(peer)")
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? TLSError, error.code == .truncatedConnection {
            return
        }
        print("server: \(error)")
    }
}

/// Sends one message after the handshake and completes `reply` with what comes back.
final class DemoClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let message: String
    private let reply: EventLoopPromise<String>
    private var received = ""

    init(message: String, reply: EventLoopPromise<String>) {
        self.message = message
        self.reply = reply
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSHandshakeCompleted {
            let server = event.info.peerCertificate?.identity ?? "?"
            let alpn = event.info.applicationProtocol ?? "none"
            print("client: verified server \(server), ALPN \(alpn)")
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: self.message)), promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.received += buffer.readString(length: buffer.readableBytes) ?? ""
        if self.received.utf8.count >= self.message.utf8.count {
            self.reply.succeed(self.received)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.reply.fail(error)
        context.close(promise: nil)
    }
}
