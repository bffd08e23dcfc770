import ArgumentParser
import Logging
import Messaging
import MetricsEndpoint
import NIOCore
import Prometheus
import SecureTransport
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg bench server`: the echo server of benchmarks and external tests.
struct BenchServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Run an smsg/1 echo server.",
        discussion: """
            Echoes every DATA: a REQUEST gets a RESPONSE with its id; other DATA comes back as new \
            DATA (same topic and body) with the server's own sequence id; ACK_REQUESTED gets an ACK. \
            Prints "listening on HOST:PORT" once it accepts connections; stops cleanly on SIGINT or SIGTERM.
            """
    )

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one).")
    var listen: String = "127.0.0.1:0"

    @Option(help: "Server certificate chain (PEM). Required unless --plaintext.")
    var cert: String?

    @Option(help: "Server private key (PEM). Required unless --plaintext.")
    var key: String?

    @Option(help: "CA certificates (PEM) that client certificates must chain to.")
    var ca: String?

    @Option(help: "Client certificates: none, optional or required.")
    var clientAuth: ClientAuthOption = .none

    @Flag(help: "Plain TCP instead of TLS.")
    var plaintext = false

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics.")
    var metrics: String?

    @Flag(help: "Consume DATA without echoing it (REQUESTs are still answered).")
    var sink = false

    @Option(help: "Microseconds the application waits after taking each message (a slow consumer).")
    var consumeDelayUs: Int = 0

    @Flag(help: "Echo from an async task per session (Session.messages) instead of on the event loop.")
    var asyncHandler = false

    @Option(help: "The most sessions at once; more are refused with SERVER_BUSY.")
    var maxConnections: Int = ServerConfiguration(port: 0).maxConnections

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "warning"

    func validate() throws {
        _ = try HostPort(self.listen)
        if let metrics = self.metrics {
            _ = try HostPort(metrics)
        }
        guard Logger.Level(rawValue: self.logLevel) != nil else {
            throw ValidationError("unknown log level \(self.logLevel)")
        }
        if !self.plaintext, self.cert == nil || self.key == nil {
            throw ValidationError("--cert and --key are required unless --plaintext is given")
        }
        guard self.maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        if self.clientAuth != .none, self.ca == nil {
            throw ValidationError("--client-auth \(self.clientAuth.rawValue) needs --ca")
        }
    }

    func run() async throws {
        let address = try HostPort(self.listen)
        var logger = Logger(label: "securemsg.bench.server")
        logger.logLevel = Logger.Level(rawValue: self.logLevel) ?? .warning
        let transport: any MessagingTransport
        if self.plaintext {
            transport = PlainTCPTransport()
        } else {
            var tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: .file(self.cert!),
                privateKey: .file(self.key!)
            )
            if let ca = self.ca {
                tls.trustRoots = .file(ca)
            }
            tls.clientAuthentication = self.clientAuth.value
            do {
                transport = try TLSTransport(configuration: tls)
            } catch let error as TLSError {
                throw ValidationError("TLS configuration refused: \(error.reason)")
            }
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var serverMetrics = MessagingMetrics()
        if let metrics = self.metrics {
            let metricsAddress = try HostPort(metrics)
            let registry = PrometheusCollectorRegistry()
            serverMetrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
            let endpoint = PrometheusEndpoint(host: metricsAddress.host, port: metricsAddress.port, registry: registry)
            services.append(.init(service: endpoint))
        }
        var configuration = ServerConfiguration(host: address.host, port: address.port)
        configuration.maxConnections = self.maxConnections
        let server: SecureMessagingServer
        if self.sink || self.consumeDelayUs > 0 || self.asyncHandler {
            server = SecureMessagingServer(
                configuration: configuration,
                transport: transport,
                logger: logger,
                metrics: serverMetrics,
                handler: Self.handler(sink: self.sink, delay: .microseconds(self.consumeDelayUs))
            )
        } else {
            server = SecureMessagingServer(
                configuration: configuration,
                transport: transport,
                logger: logger,
                metrics: serverMetrics,
                receiver: { _ in EchoReceiver() }
            )
        }
        services.insert(.init(service: server), at: 0)
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                let bound = try await server.listeningAddress()
                print("listening on \(addressText(host: address.host, port: bound.port ?? address.port))")
                // Whoever started us may be reading a pipe: the line must not wait in a buffer.
                fflush(nil)
            }
            try await tasks.waitForAll()
        }
    }

    /// The echo of the benchmarks, or with `sink` a consumer that answers only REQUESTs.
    static func handler(sink: Bool, delay: Duration) -> SecureMessagingServer.Handler {
        { session in
            for try await message in session.messages {
                if delay > .zero {
                    try await Task.sleep(for: delay)
                }
                if message.isRequest {
                    // The request's headers come back (Message.headers holds no reserved smsg- ones).
                    try await session.respond(to: message, headers: message.headers, body: message.body)
                } else if !sink {
                    try await session.send(topic: message.topic, body: message.body)
                }
            }
        }
    }
}

/// The echo on the event loop: each message is answered as it is decoded; a REQUEST's RESPONSE
/// carries the request's headers back, without the reserved `smsg-` ones.
final class EchoReceiver: MessageReceiver {
    func received(_ message: Message, session: LoopSession) {
        if message.isRequest {
            session.respond(to: message, headers: message.headers, body: message.body)
        } else {
            session.send(topic: message.topic, body: message.body)
        }
    }
}

enum ClientAuthOption: String, ExpressibleByArgument, CaseIterable {
    case none
    case optional
    case required

    var value: TLSConfiguration.ClientAuthentication {
        switch self {
        case .none: .none
        case .optional: .optional
        case .required: .required
        }
    }
}

/// A HOST:PORT argument; IPv6 hosts in brackets (`[::1]:7443`).
struct HostPort: CustomStringConvertible {
    var description: String {
        addressText(host: self.host, port: self.port)
    }

    var host: String
    var port: Int

    init(_ text: String) throws {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ValidationError("expected [HOST]:PORT, got \(text)") }
            portPart = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw ValidationError("expected HOST:PORT, got \(text)") }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65_535).contains(port) else {
            throw ValidationError("expected HOST:PORT with a port from 0 to 65535, got \(text)")
        }
        self.host = String(hostPart)
        self.port = port
    }
}
