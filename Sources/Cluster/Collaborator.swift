public import Logging
public import Messaging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import ServiceLifecycle

/// Settings of a ``Collaborator``.
public struct CollaboratorConfiguration: Sendable, Hashable {
    /// The node_id; with client certificates it must be the certificate's identity.
    public var nodeID: String
    public var role: String = "collaborator"
    /// The application status announced in HELLO and carried by every PING.
    public var status: String?
    /// More HELLO metadata.
    public var metadata: [String: String] = [:]
    public var session = SessionConfiguration()
    public var reconnect = ReconnectPolicy()
    /// The most REQUESTs from the leader in handlers at once; beyond, RESOURCE_EXHAUSTED.
    public var maximumConcurrentRequests = 64

    public init(nodeID: String, status: String? = nil) {
        self.nodeID = nodeID
        self.status = status
    }
}

/// A collaborator: connects to its leader and stays connected (reconnecting with backoff),
/// registers with its status, keeps the leader informed of status changes through its
/// heartbeats, runs handlers by topic, and leaves gracefully (GOODBYE) when shut down.
public final class Collaborator: Service, Sendable {
    public let configuration: CollaboratorConfiguration
    private let client: ReconnectingClient
    /// The handlers by topic (`on(topic:_:)`, `onRequest(topic:_:)`).
    public let router: Router
    private let status: NIOLockedValueBox<String?>
    /// When the last status PING went out, and whether one is already scheduled.
    private let statusPing = NIOLockedValueBox<(last: ContinuousClock.Instant?, scheduled: Bool)>((nil, false))

    /// Connection changes (connected, disconnected, reconnecting, gave up).
    public var events: AsyncStream<ConnectionEvent> { self.client.events }

    /// Starts connecting to the leader at once; ``run()`` handles what the leader sends.
    public init(
        leaderHost: String,
        leaderPort: Int,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        configuration: CollaboratorConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "smsg.collaborator", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.configuration = configuration
        self.router = Router(maximumConcurrentRequests: configuration.maximumConcurrentRequests, logger: logger)
        let status = NIOLockedValueBox(configuration.status)
        self.status = status
        var client = ClientConfiguration(nodeID: configuration.nodeID)
        client.role = configuration.role
        client.metadata = configuration.metadata
        if let initial = configuration.status {
            client.metadata["status"] = initial
        }
        client.session = configuration.session
        self.client = ReconnectingClient(
            host: leaderHost,
            port: leaderPort,
            transport: transport,
            serverHostname: serverHostname,
            configuration: client,
            policy: configuration.reconnect,
            group: group,
            logger: logger
        ) { session in
            // Every connection starts by telling the leader the current status.
            if let current = status.withLockedValue({ $0 }) {
                session.setPingStatus(ByteBuffer(string: current))
                session.ping()
            }
        }
    }

    /// The session with the leader now, if connected.
    public var session: Session? { self.client.currentSession }

    /// Runs `handler` for every DATA (not REQUEST) on `topic` from the leader; see ``Router``
    /// for how failures and ordering are handled.
    public func on(topic: String, _ handler: @escaping Router.MessageHandler) {
        self.router.on(topic: topic, handler)
    }

    /// Answers every REQUEST on `topic` from the leader with the body `handler` returns; a
    /// thrown `RequestError` answers with its code, anything else thrown with FAILED.
    public func onRequest(
        topic: String,
        _ handler: @escaping @Sendable (Message, HandlerContext) async throws -> ByteBuffer
    ) {
        self.router.onRequest(topic: topic, handler)
    }

    /// Answers every REQUEST on `topic` with the headers and body `handler` returns.
    public func onRequest(topic: String, _ handler: @escaping Router.RequestHandler) {
        self.router.onRequest(topic: topic, handler)
    }

    /// Changes the status. The leader hears of it with an extra PING — at once, or, when a
    /// status PING went out less than one heartbeat interval ago, at the end of that interval
    /// (carrying the latest status): at most one status PING per interval. Every later PING
    /// carries it too.
    public func setStatus(_ status: String) {
        precondition(status.utf8.count <= Frame.maximumPingPayload, "a status is at most 65,536 bytes")
        self.status.withLockedValue { $0 = status }
        self.client.currentSession?.setPingStatus(ByteBuffer(string: status))
        let interval = Duration(self.configuration.session.heartbeatInterval)
        let now = ContinuousClock.now
        let wait: Duration? = self.statusPing.withLockedValue { ping in
            if ping.scheduled { return nil }
            guard let last = ping.last, now - last < interval else {
                ping.last = now
                return .zero
            }
            ping.scheduled = true
            return interval - (now - last)
        }
        guard let wait else { return }
        if wait == .zero {
            self.client.currentSession?.ping()
            return
        }
        Task {
            try? await Task.sleep(for: wait)
            self.statusPing.withLockedValue { ping in
                ping.scheduled = false
                ping.last = ContinuousClock.now
            }
            if let session = self.client.currentSession, let current = self.status.withLockedValue({ $0 }) {
                session.setPingStatus(ByteBuffer(string: current))
                session.ping()
            }
        }
    }

    /// Sends DATA to the leader (waiting for a connection if needed).
    public func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        try await self.client.send(topic: topic, headers: headers, body: body, ackRequested: ackRequested)
    }

    /// Sends DATA to the leader and returns once the leader's application took it (its ACK
    /// came), repeating it across reconnects until then; throws if the collaborator leaves
    /// first. See `ReconnectingClient.sendAcknowledged(topic:body:)`.
    public func sendAcknowledged(topic: String, body: ByteBuffer) async throws {
        try await self.client.sendAcknowledged(topic: topic, body: body)
    }

    /// Sends a REQUEST to the leader and waits for the RESPONSE; the timeout covers waiting for
    /// a connection too.
    ///
    /// - Throws: `RequestError` when the leader did not serve it (NO_HANDLER, FAILED, …).
    public func request(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: TimeAmount? = nil
    ) async throws -> Message {
        try await self.client.request(topic: topic, headers: headers, body: body, timeout: timeout)
    }

    /// Handles the leader's messages until shut down; then leaves gracefully (GOODBYE).
    public func run() async throws {
        await withGracefulShutdownHandler {
            // Handlers' failures are answered and logged by the router: it ends only when the
            // client does.
            _ = await self.router.serve(self.client.messages)
        } onGracefulShutdown: {
            Task { await self.client.close() }
        }
    }

    /// Leaves the group gracefully: GOODBYE, then the connection closes and ``run()`` returns.
    public func leave() async {
        await self.client.close()
    }
}
