import Logging
import Messaging
public import NIOCore
import NIOHTTP1
public import NIOPosix
public import Prometheus
public import ServiceLifecycle

/// Serves a Prometheus registry as text at `GET /metrics` over plain HTTP/1.1.
///
/// Every metric family gets a `# HELP` line: the package's own from `MetricDescriptions`, the
/// application's from `help`, and the name itself for any other (metrics made through
/// swift-metrics carry no description, and Prometheus' linter, `promtool check metrics`,
/// wants one).
///
/// Bind it to loopback or a management network: it has no authentication.
public final class PrometheusEndpoint: Service, Sendable {
    public let registry: PrometheusCollectorRegistry
    private let host: String
    private let port: Int
    private let group: any EventLoopGroup
    private let listening = Eventual<SocketAddress>()
    private let help: [String: String]

    /// - Parameters:
    ///   - host: the address to listen on.
    ///   - port: the port (0: any free one; see ``listeningAddress()``).
    ///   - registry: the metrics to serve.
    ///   - help: descriptions of the application's own metrics, by name.
    ///   - group: the event loops to serve on.
    public init(
        host: String,
        port: Int,
        registry: PrometheusCollectorRegistry,
        help: [String: String] = [:],
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.host = host
        self.port = port
        self.registry = registry
        self.help = MetricDescriptions.all.merging(help) { $1 }
        self.group = group
    }

    /// The registry's exposition with a `# HELP` line before each family's `# TYPE` line.
    public func exposition() -> String {
        Self.describe(String(decoding: self.registry.emitToBuffer(), as: UTF8.self), help: self.help)
    }

    /// `registry`'s exposition with a `# HELP` line before each family's `# TYPE` line: the
    /// package's descriptions (`MetricDescriptions`), then `help`, then the name itself.
    public static func exposition(of registry: PrometheusCollectorRegistry, help: [String: String] = [:]) -> String {
        Self.describe(
            String(decoding: registry.emitToBuffer(), as: UTF8.self),
            help: MetricDescriptions.all.merging(help) { $1 }
        )
    }

    /// Help text as the text format asks: backslash and newline escaped.
    private static func escaped(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    static func describe(_ text: String, help: [String: String]) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count + 64 * help.count)
        var previous: Substring = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), !previous.hasPrefix("# HELP ") {
                let name = line.dropFirst("# TYPE ".count).prefix { $0 != " " }
                let text = help[String(name)] ?? String(name)
                out += "# HELP \(name) \(Self.escaped(text))\n"
            }
            out += line
            out += "\n"
            previous = line
        }
        // split() gave one more (empty) piece after a final newline than there were lines.
        if text.hasSuffix("\n") || text.isEmpty {
            out.removeLast()
        }
        return out
    }

    /// The address served, once bound.
    public func listeningAddress() async throws -> SocketAddress {
        try await self.listening.value()
    }

    public func run() async throws {
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: self.group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(endpoint: self))
                    }
                }
                .bind(host: self.host, port: self.port)
                .get()
        } catch {
            self.listening.complete(.failure(error))
            throw error
        }
        self.listening.complete(.success(channel.localAddress!))
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let endpoint: PrometheusEndpoint

    init(endpoint: PrometheusEndpoint) {
        self.endpoint = endpoint
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = Self.unwrapInboundIn(data) else { return }
        let found = request.method == .GET && (request.uri == "/metrics" || request.uri.hasPrefix("/metrics?"))
        var body = ByteBuffer()
        if found {
            body.writeString(self.endpoint.exposition())
        } else {
            body.writeString("not found\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers)
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}
