import CoreMetrics
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import SecureTransport
public import ServiceLifecycle

/// An smsg/1 server over TLS or plain TCP.
///
/// Each accepted connection becomes a ``Session``; once its HELLO exchange is done, the
/// handler runs with it (in its own task) until it returns, and the session is then closed
/// gracefully. The server is a `Service`: `run()` serves until it is cancelled or a graceful
/// shutdown is triggered (``shutdown()`` or a `ServiceGroup` signal), which sends GOODBYE on
/// every session, waits up to the drain timeout, sends ERROR GOING_AWAY to the sessions still
/// open and closes them.
///
/// ```swift
/// let server = SecureMessagingServer(configuration: .init(port: 7443), transport: tls, logger: logger) { session in
///     for try await message in session.messages {
///         if message.isRequest {
///             try await session.respond(to: message, body: message.body)
///         }
///     }
/// }
/// try await server.run()
/// ```
public final class SecureMessagingServer: Service, Sendable {
    /// Serves one open session.
    public typealias Handler = @Sendable (Session) async throws -> Void
    /// Makes the ``MessageReceiver`` of a new session (called on its event loop).
    public typealias ReceiverFactory = @Sendable (Session) -> any MessageReceiver

    public let configuration: ServerConfiguration
    public let transport: any MessagingTransport
    /// The live sessions.
    public let registry = SessionRegistry()

    private let group: any EventLoopGroup
    private let logger: Logger
    private let handler: Handler
    private let receiverFactory: ReceiverFactory?
    private let listening = Eventual<SocketAddress>()
    private let serverChannel = NIOLockedValueBox<(any Channel)?>(nil)
    private let shuttingDown = NIOLockedValueBox(false)
    private let metrics: MessagingMetrics
    /// What new sessions are told and whether they are taken: see ``setAdmission(metadata:refusal:)``.
    private let admission = NIOLockedValueBox<(metadata: [String: String]?, refusal: ProtocolViolation?)>((nil, nil))

    /// Creates a server; nothing happens until ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: address, limits and session settings.
    ///   - transport: TLS or plain TCP.
    ///   - group: the event loops to run on.
    ///   - logger: where the server and its sessions log.
    ///   - metrics: where the server's counters go (the bootstrapped `MetricsSystem` by default).
    ///   - handler: runs once per open session, in its own task.
    public convenience init(
        configuration: ServerConfiguration,
        transport: any MessagingTransport,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics = MessagingMetrics(),
        handler: @escaping Handler
    ) {
        self.init(
            configuration: configuration,
            transport: transport,
            group: group,
            logger: logger,
            metrics: metrics,
            handler: handler,
            receiverFactory: nil
        )
    }

    /// Creates a server whose sessions hand their messages to a ``MessageReceiver`` on the
    /// event loop: the fast path for answering at once. Each session closes when its peer
    /// leaves or at shutdown.
    ///
    /// - Parameters:
    ///   - configuration: address, limits and session settings.
    ///   - transport: TLS or plain TCP.
    ///   - group: the event loops to run on.
    ///   - logger: where the server and its sessions log.
    ///   - metrics: where the server's counters go (the bootstrapped `MetricsSystem` by default).
    ///   - receiver: makes the receiver of each new session, on its event loop.
    public convenience init(
        configuration: ServerConfiguration,
        transport: any MessagingTransport,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics = MessagingMetrics(),
        receiver: @escaping ReceiverFactory
    ) {
        self.init(
            configuration: configuration,
            transport: transport,
            group: group,
            logger: logger,
            metrics: metrics,
            handler: { session in await session.waitUntilClosed() },
            receiverFactory: receiver
        )
    }

    private init(
        configuration: ServerConfiguration,
        transport: any MessagingTransport,
        group: any EventLoopGroup,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics,
        handler: @escaping Handler,
        receiverFactory: ReceiverFactory?
    ) {
        self.receiverFactory = receiverFactory
        self.metrics = metrics
        self.configuration = configuration
        self.transport = transport
        self.group = group
        self.logger = logger
        self.handler = handler
    }

    /// Changes what new connections get from now on: the HELLO `metadata` (`nil`: the
    /// configuration's), and a refusal (`nil`: they are served) — ERROR with its code and
    /// reason instead of HELLO, then the connection closes. Sessions already open are not
    /// touched.
    package func setAdmission(metadata: [String: String]?, refusal: ProtocolViolation?) {
        self.admission.withLockedValue { $0 = (metadata, refusal) }
    }

    /// The number of live connections: exact at every moment.
    public var activeSessionCount: Int { self.registry.count }

    /// The address the server listens on, once it does.
    ///
    /// - Throws: the error that kept ``run()`` from listening (a port taken, a refused
    ///   configuration); `CancellationError` when the calling task is cancelled first.
    public func listeningAddress() async throws -> SocketAddress {
        try await self.listening.value()
    }

    /// Makes ``listeningAddress()`` throw `error`: a service around the server refused to run
    /// it.
    package func refuseToListen(_ error: any Error) {
        self.listening.complete(.failure(error))
    }

    /// Serves until its task is cancelled, its `ServiceGroup` shuts down gracefully, or
    /// ``shutdown()`` is called; each way, it stops accepting, says GOODBYE to every session
    /// (ERROR GOING_AWAY to those that do not answer within the drain timeout), and returns
    /// once they are all closed.
    public func run() async throws {
        let channel: NIOAsyncChannel<Session, Never>
        do {
            channel = try await ServerBootstrap(group: self.group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.recvAllocator, value: ServerConfiguration.receiveBufferAllocator)
                .childChannelOption(
                    .writeBufferWaterMark,
                    value: .init(
                        low: self.configuration.session.flowControl.writeBufferLowWatermark,
                        high: self.configuration.session.flowControl.writeBufferHighWatermark
                    )
                )
                .bind(host: self.configuration.host, port: self.configuration.port) { child in
                    child.eventLoop.makeCompletedFuture { try self.setUp(child) }
                }
        } catch {
            self.listening.complete(.failure(error))
            throw error
        }
        self.serverChannel.withLockedValue { $0 = channel.channel }
        if let address = channel.channel.localAddress {
            self.logger.info("listening", metadata: ["address": "\(address.addressText)"])
            self.listening.complete(.success(address))
        }
        if self.shuttingDown.withLockedValue({ $0 }) {
            channel.channel.close(promise: nil)
        }

        try await withTaskCancellationOrGracefulShutdownHandler {
            try await channel.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    var failure: (any Error)?
                    do {
                        for try await session in inbound where self.receiverFactory == nil {
                            // A receiver runs on the event loop: its sessions need no task (nor
                            // its memory) of their own.
                            group.addTask { await self.serve(session) }
                        }
                    } catch is CancellationError {
                        // Cancelled: shut down like any other way.
                    } catch {
                        failure = error
                    }
                    // No more connections: say GOODBYE to the sessions still here.
                    let remaining = self.registry.all
                    for session in remaining {
                        session.beginClose(goingAway: true)
                    }
                    for session in remaining {
                        await session.waitUntilClosed()
                    }
                    if let failure { throw failure }
                }
            }
        } onCancelOrGracefulShutdown: {
            self.shutdown()
        }
        self.logger.info("stopped")
    }

    /// Rebuilds the TLS context from its files (certificate, key, trust roots, CRLs) and uses
    /// it for new handshakes; sessions already open carry on with the context they started with.
    ///
    /// - Returns: the new context (`TLSContext.localCertificate` tells which certificate it
    ///   presents).
    /// - Throws: `TLSError` when the files cannot be used (a broken certificate, a key that
    ///   does not match it); the old context then stays in use. A server without TLS throws
    ///   `TLSError.Code.invalidConfiguration`.
    @discardableResult
    public func reloadTLS() throws -> TLSContext {
        guard let tls = self.transport as? TLSTransport else {
            throw TLSError(.invalidConfiguration, "the server does not use TLS")
        }
        do {
            let context = try tls.reload()
            self.logger.notice(
                "TLS context reloaded",
                metadata: ["certificate_sha256": "\(context.localCertificate?.sha256FingerprintHex ?? "none")"]
            )
            return context
        } catch {
            self.logger.error("TLS reload refused; the previous context stays in use", metadata: ["error": "\(error)"])
            throw error
        }
    }

    /// Stops accepting connections and closes every session gracefully; `run()` returns once
    /// they are all closed.
    public func shutdown() {
        let channel: (any Channel)? = self.shuttingDown.withLockedValue { down in
            down = true
            return self.serverChannel.withLockedValue { $0 }
        }
        channel?.close(promise: nil)
    }

    /// Sends a message to every open session without waiting on any of them. A session that
    /// cannot take it now holds it within its bound; one that would need more is closed as a
    /// slow consumer (ERROR OVERLOADED). One slow session never holds the others back. Returns
    /// the number of sessions that took the message.
    @discardableResult
    public func broadcast(topic: String, body: ByteBuffer) -> Int {
        var taken = 0
        for session in self.registry.open where session.offer(topic: topic, body: body) {
            taken += 1
        }
        return taken
    }

    private func setUp(_ channel: any Channel) throws -> Session {
        let config = self.configuration
        let sessionID = SessionIDGenerator.next()
        let session = Session(
            channel: channel,
            sessionID: sessionID,
            configuration: config.session,
            metrics: self.metrics
        )
        self.metrics.sessionsTotal.increment()
        let admission = self.admission.withLockedValue { $0 }
        var rejection: ProtocolViolation?
        if self.shuttingDown.withLockedValue({ $0 }) {
            rejection = ProtocolViolation(.goingAway, "server shutting down")
        } else if let refusal = admission.refusal {
            rejection = refusal
        } else if self.registry.add(session, limit: config.maxConnections) {
            let registry = self.registry
            let metrics = self.metrics
            metrics.sessionsActive.increment()
            channel.closeFuture.whenComplete { _ in
                registry.remove(session)
                metrics.sessionsActive.decrement()
            }
        } else {
            rejection = ProtocolViolation(.serverBusy, "connection limit reached")
        }
        try self.transport.configure(channel, serverHostname: nil)
        let hello = config.session.makeHello(
            nodeID: config.nodeID,
            role: config.role,
            metadata: admission.metadata ?? config.metadata,
            sessionID: sessionID
        )
        var logger = self.logger
        logger[metadataKey: "session_id"] = "\(sessionID)"
        if let remote = channel.remoteAddress {
            logger[metadataKey: "remote"] = "\(remote.addressText)"
        }
        let handler = SessionHandler(
            role: .server,
            hello: hello,
            configuration: config.session,
            session: session,
            waitsForReadyEvent: self.transport.isSecure,
            requireCertificateIdentity: config.requireCertificateIdentity,
            identityMapping: config.identityMapping,
            rejection: rejection,
            metrics: self.metrics,
            receiver: self.receiverFactory?(session),
            logger: logger
        )
        session.attach(handler)
        try channel.addSessionHandlers(handler)
        return session
    }

    private func serve(_ session: Session) async {
        do {
            try await session.waitUntilOpen()
        } catch {
            await session.waitUntilClosed()
            return
        }
        do {
            try await self.handler(session)
            session.beginClose()
        } catch  where Task.isCancelled {
            // The server is being cancelled, and the handler with it: a graceful end, not the
            // handler's failure.
            self.logger.debug(
                "session handler ended by the server's cancellation",
                metadata: ["session_id": "\(session.sessionID ?? "")", "error": "\(error)"]
            )
            session.beginClose(goingAway: true)
        } catch let error as MessagingError where session.currentState == .closed {
            // The connection ended under the handler (the peer vanished, or broke the protocol).
            self.logger.debug(
                "session ended",
                metadata: ["session_id": "\(session.sessionID ?? "")", "error": "\(error)"]
            )
        } catch {
            self.logger.error(
                "session handler failed",
                metadata: ["session_id": "\(session.sessionID ?? "")", "error": "\(error)"]
            )
            session.fail(code: .internal, reason: "internal error")
        }
        await session.waitUntilClosed()
    }
}
