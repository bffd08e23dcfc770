public import Logging
public import NIOCore
public import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A client connection to an smsg/1 server.
///
/// ```swift
/// let client = try await SecureClient.connect(
///     host: "127.0.0.1", port: 7443,
///     transport: try TLSTransport(configuration: .makeClientConfiguration(trustRoots: .file("ca.pem"))),
///     serverHostname: "localhost",
///     configuration: ClientConfiguration(nodeID: "collab-1")
/// )
/// let reply = try await client.session.request(topic: "time", body: ByteBuffer())
/// await client.close()
/// ```
public final class SecureClient: Sendable {
    /// The session with the server.
    public let session: Session

    private init(session: Session) {
        self.session = session
    }

    /// Connects, completes the TLS handshake (with a TLS transport) and the HELLO exchange.
    ///
    /// - Parameters:
    ///   - host: the server's address or DNS name.
    ///   - port: the server's port.
    ///   - transport: TLS or plain TCP.
    ///   - serverHostname: the name the server's certificate must carry; defaults to `host`.
    ///   - configuration: this side's HELLO and session settings.
    ///   - group: the event loops to run on.
    ///   - logger: where the session logs; by default the task-local `Logger.current`.
    ///   - metrics: where the session counts frames, bytes, backpressure and handshake
    ///     failures (the `smsg_` metrics of ``MessagingMetrics``); `nil`: nowhere.
    ///   - receiver: makes a ``MessageReceiver`` that takes the session's messages on its
    ///     event loop instead of ``messages``.
    /// - Throws: ``MessagingError`` with ``MessagingError/Code/connectFailed`` and the reason
    ///   (TCP, TLS or HELLO) when the session does not open; `CancellationError` when the task
    ///   is cancelled while the TLS handshake or HELLO is under way (the connection is closed).
    public static func connect(
        host: String,
        port: Int,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        configuration: ClientConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics? = nil,
        receiver: SecureMessagingServer.ReceiverFactory? = nil
    ) async throws -> SecureClient {
        guard Hello.isValidNodeID(configuration.nodeID) else {
            throw MessagingError(.connectFailed, "invalid node_id")
        }
        let hello = configuration.session.makeHello(
            nodeID: configuration.nodeID,
            role: configuration.role,
            metadata: configuration.metadata
        )
        let session: Session
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: ServerConfiguration.receiveBufferAllocator)
            .channelOption(
                .writeBufferWaterMark,
                value: .init(
                    low: configuration.session.flowControl.writeBufferLowWatermark,
                    high: configuration.session.flowControl.writeBufferHighWatermark
                )
            )
        let initializer: @Sendable (any Channel) -> EventLoopFuture<Session> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try transport.configure(channel, serverHostname: serverHostname ?? host)
                let session = Session(
                    channel: channel,
                    sessionID: nil,
                    configuration: configuration.session,
                    metrics: metrics
                )
                let handler = SessionHandler(
                    role: .client,
                    hello: hello,
                    configuration: configuration.session,
                    session: session,
                    waitsForReadyEvent: transport.isSecure,
                    metrics: metrics,
                    receiver: receiver?(session),
                    logger: logger
                )
                session.attach(handler)
                try channel.addSessionHandlers(handler)
                return session
            }
        }
        do {
            if let address = try? SocketAddress(ipAddress: host, port: port) {
                // An address needs no resolver (nor its trip through another thread).
                session = try await bootstrap.connect(to: address, channelInitializer: initializer)
            } else {
                session = try await bootstrap.connect(host: host, port: port, channelInitializer: initializer)
            }
        } catch {
            throw MessagingError(.connectFailed, describeConnectFailure(error, host: host, port: port))
        }
        do {
            try await withTaskCancellationHandler {
                try await session.waitUntilOpen()
            } onCancel: {
                // Cancelling the caller abandons the attempt: the TLS handshake and HELLO (which a
                // silent peer could drag out to their timeouts) are not waited for.
                session.channel.close(promise: nil)
            }
        } catch let error as MessagingError {
            if Task.isCancelled { throw CancellationError() }
            throw MessagingError(.connectFailed, error.reason, errorCode: error.errorCode, tlsError: error.tlsError)
        }
        return SecureClient(session: session)
    }

    /// The messages received, in order.
    public var messages: InboundMessages { self.session.messages }

    /// Sends a message; see ``Session/send(topic:headers:body:ackRequested:)``.
    public func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        try await self.session.send(topic: topic, headers: headers, body: body, ackRequested: ackRequested)
    }

    /// Sends a message if sending is not blocked; see ``Session/trySend(topic:body:)``.
    @discardableResult
    public func trySend(topic: String, body: ByteBuffer) -> Bool {
        self.session.trySend(topic: topic, body: body)
    }

    /// Sends a REQUEST and waits for its RESPONSE; see ``Session/request(topic:headers:body:timeout:)``.
    public func request(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await self.session.request(topic: topic, headers: headers, body: body, timeout: timeout)
    }

    /// Closes gracefully (GOODBYE) and waits until the connection is closed.
    public func close() async {
        await self.session.close()
    }
}

/// One readable line for a failed TCP connect: "connection refused by 127.0.0.1:7443" rather
/// than the socket error's own text.
func describeConnectFailure(_ error: any Error, host: String, port: Int) -> String {
    let target = addressText(host: host, port: port)
    // A name with several addresses: each one's failure; they are usually alike.
    if let failures = error as? NIOConnectionError {
        if let first = failures.connectionErrors.first {
            return describeConnectFailure(first.error, host: host, port: port)
        }
        if failures.dnsAError != nil || failures.dnsAAAAError != nil {
            return "cannot resolve \(host)"
        }
        return "no address for \(host)"
    }
    if let error = error as? IOError {
        switch error.errnoCode {
        case ECONNREFUSED: return "connection refused by \(target)"
        case ETIMEDOUT: return "no answer from \(target) (timed out)"
        case EHOSTUNREACH: return "\(target) is unreachable (no route to the host)"
        case ENETUNREACH: return "\(target) is unreachable (no route to its network)"
        case ECONNRESET: return "connection reset by \(target)"
        default: return "cannot connect to \(target): \(String(cString: strerror(error.errnoCode)))"
        }
    }
    if case ChannelError.connectTimeout(let timeout) = error {
        return "no answer from \(target) within \(timeout.nanoseconds / 1_000_000) ms"
    }
    return "cannot connect to \(target): \(error)"
}
