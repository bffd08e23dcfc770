import CoreMetrics
public import Logging
public import Messaging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import ServiceLifecycle
public import Tracing

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
    /// The most REQUESTs from the leader in handlers at once; beyond, its further
    /// messages wait and it is told FLOW SLOW_DOWN (``Router``).
    public var maximumConcurrentRequests = 64
    /// Which topics get a label of their own in the request metrics (``RequestMetrics``).
    public var requestMetricsTopics: RequestMetrics.Topics = .handled
    /// Whether it tells the leader the topics it handles (PROTOCOL.md 8.5, `interest`): in the
    /// HELLO, and again whenever handlers are added or removed. A leader then sends it only the
    /// broadcasts it handles and dispatches to it only requests it answers.
    public var announcesInterest = true

    public init(nodeID: String, status: String? = nil) {
        self.nodeID = nodeID
        self.status = status
    }
}

/// A collaborator: connects to its leader and stays connected (reconnecting with backoff),
/// registers with its status, keeps the leader informed of status changes through its
/// heartbeats, runs handlers by topic, and leaves gracefully (GOODBYE) when shut down.
///
/// A `Service`: nothing happens until ``run()``, which returns when its task is cancelled, when
/// its `ServiceGroup` shuts down gracefully, or after ``leave()``, each time having said
/// GOODBYE on the open connection.
public final class Collaborator: Service, MessageRouting, Sendable {
    public let configuration: CollaboratorConfiguration
    private let client: ReconnectingClient
    /// The handlers by topic (`on(topic:_:)`, `onRequest(topic:_:)`).
    public let router: Router
    /// The coder of typed messages (JSON unless given another).
    public let coder: MessageCoder
    private let status: NIOLockedValueBox<String?>
    /// A signal per status change, for ``run()`` to tell the leader (the newest one kept).
    private let statusChanges: AsyncStream<Void>
    private let statusChangeContinuation: AsyncStream<Void>.Continuation
    private let started = NIOLockedValueBox(false)
    private let tracing: MessageTracing
    /// With an election: who leads, and the highest term seen.
    private let follower: LeaderFollower?
    private let logger: Logger

    /// Connection changes (connected, disconnected, reconnecting, gave up).
    public var events: AsyncStream<ConnectionEvent> { self.client.events }

    /// Makes a collaborator; it connects to the leader once ``run()`` runs.
    public convenience init(
        leaderHost: String,
        leaderPort: Int,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        configuration: CollaboratorConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics? = nil,
        tracer: (any Tracer)? = nil,
        coder: MessageCoder = .json
    ) {
        let target = ReconnectingClient.Target(host: leaderHost, port: leaderPort, serverHostname: serverHostname)
        self.init(
            target: { target },
            follower: nil,
            transport: transport,
            configuration: configuration,
            group: group,
            logger: logger,
            metrics: metrics,
            tracer: tracer,
            coder: coder
        )
    }

    /// Makes a collaborator that follows the leader `election` elects: it connects to the
    /// elected leader once ``run()`` runs, moves to a new one as soon as the election says so,
    /// and never joins a leader whose HELLO announces a term lower than the highest it has seen
    /// (nor a server that announces none). Acknowledged sends not yet acknowledged go again to
    /// the new leader. It retries after an identity refusal too
    /// (`ReconnectPolicy.retriesIdentityRefusals` is set): the next leader elected may take it.
    ///
    /// - Parameters:
    ///   - election: the election to follow, e.g. an `EtcdLeaderElection`.
    ///   - transport: how to reach each leader (TLS with this collaborator's certificate).
    ///   - serverHostname: the name every leader's certificate must carry; `nil`: the host of
    ///     the elected leader's address.
    ///   - configuration: identity, heartbeats, reconnection and limits.
    ///   - group: the event loops of the connections.
    ///   - logger: where connection changes and failovers are logged; by default the
    ///     task-local `Logger.current`.
    ///   - metrics: where the connection's session counts frames, bytes and backpressure, and
    ///     the router requests and handler failures; `nil` (the default): the session counts
    ///     nothing (its families are the server's), the router counts in the bootstrapped
    ///     `MetricsSystem`.
    ///   - tracer: the tracer of sends and handlers; `nil`: the global one.
    ///   - coder: the coder of typed messages.
    public convenience init(
        election: any LeaderElection,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        configuration: CollaboratorConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics? = nil,
        tracer: (any Tracer)? = nil,
        coder: MessageCoder = .json
    ) {
        let follower = LeaderFollower(election: election)
        var configuration = configuration
        configuration.reconnect.retriesIdentityRefusals = true
        self.init(
            target: {
                let leader = try await follower.leaderToJoin()
                let (host, port) = try leader.hostAndPort()
                return ReconnectingClient.Target(host: host, port: port, serverHostname: serverHostname)
            },
            follower: follower,
            transport: transport,
            configuration: configuration,
            group: group,
            logger: logger,
            metrics: metrics,
            tracer: tracer,
            coder: coder
        )
    }

    private init(
        target: @escaping @Sendable () async throws -> ReconnectingClient.Target,
        follower: LeaderFollower?,
        transport: any MessagingTransport,
        configuration: CollaboratorConfiguration,
        group: any EventLoopGroup,
        logger: Logger,
        metrics: MessagingMetrics?,
        tracer: (any Tracer)?,
        coder: MessageCoder
    ) {
        self.follower = follower
        self.logger = logger
        self.configuration = configuration
        self.coder = coder
        self.tracing = MessageTracing(configured: tracer)
        self.router = Router(
            maximumConcurrentRequests: configuration.maximumConcurrentRequests,
            logger: logger,
            metrics: metrics?.factory ?? MetricsSystem.factory,
            requestTopics: configuration.requestMetricsTopics,
            tracer: tracer
        )
        let status = NIOLockedValueBox(configuration.status)
        self.status = status
        (self.statusChanges, self.statusChangeContinuation) = AsyncStream.makeStream(
            bufferingPolicy: .bufferingNewest(1)
        )
        var client = ClientConfiguration(nodeID: configuration.nodeID)
        client.role = configuration.role
        client.metadata = configuration.metadata
        if let initial = configuration.status {
            client.metadata["status"] = initial
        }
        client.session = configuration.session
        let announcer = configuration.announcesInterest ? InterestAnnouncer(router: self.router) : nil
        if announcer != nil {
            client.session.extensions.insert(.interest)
        }
        var admit: (@Sendable (Session) -> String?)?
        if let follower {
            admit = { session in follower.admit(session) }
        }
        let announcedTarget: @Sendable () async throws -> ReconnectingClient.Target = {
            var next = try await target()
            if let announcer {
                next.helloMetadata[TopicInterest.metadataKey] = announcer.forHello()
            }
            return next
        }
        self.client = ReconnectingClient(
            target: announcedTarget,
            admit: admit,
            transport: transport,
            configuration: client,
            policy: configuration.reconnect,
            group: group,
            logger: logger,
            metrics: metrics
        ) { session in
            // Every connection starts by telling the leader the current status, and the
            // handlers' changes since its HELLO was made.
            if let current = status.withLockedValue({ $0 }) {
                session.setPingStatus(ByteBuffer(string: current))
                session.ping()
            }
            announcer?.announce(on: session)
        }
        if let announcer {
            let client = self.client
            self.router.observeHandlerChanges {
                if let session = client.currentSession {
                    announcer.announce(on: session)
                }
            }
        }
    }

    /// Messages sent with `sendAcknowledged` whose ACK has not come yet.
    public var unacknowledgedCount: Int { self.client.unacknowledgedCount }

    /// The session with the leader now, if connected.
    public var session: Session? { self.client.currentSession }

    /// Changes the status. The leader hears of it with an extra PING — at once, or, when a
    /// status PING went out less than one heartbeat interval ago, at the end of that interval
    /// (carrying the latest status): at most one status PING per interval. Every later PING
    /// carries it too, and so does the HELLO of every later connection.
    public func setStatus(_ status: String) {
        precondition(status.utf8.count <= Frame.maximumPingPayload, "a status is at most 65,536 bytes")
        self.status.withLockedValue { $0 = status }
        self.client.currentSession?.setPingStatus(ByteBuffer(string: status))
        self.statusChangeContinuation.yield()
    }

    /// Sends a status PING for each status change, at most one per heartbeat interval, until
    /// cancelled.
    private func announceStatusChanges() async {
        let interval = self.configuration.session.heartbeatInterval
        var last: ContinuousClock.Instant?
        // What went out, on which session: a new session learnt the status from its HELLO and
        // first PING, so only a change since then needs another.
        var announced: (status: String, session: ObjectIdentifier)?
        for await _ in self.statusChanges {
            if let last {
                let wait = interval - (ContinuousClock.now - last)
                if wait > .zero {
                    do {
                        try await Task.sleep(for: wait)
                    } catch {
                        return
                    }
                }
            }
            // The newest status: changes made while waiting go out together.
            guard let current = self.status.withLockedValue({ $0 }), let session = self.client.currentSession,
                announced?.status != current || announced?.session != ObjectIdentifier(session)
            else { continue }
            session.setPingStatus(ByteBuffer(string: current))
            session.ping()
            announced = (current, ObjectIdentifier(session))
            last = ContinuousClock.now
        }
    }

    /// Sends a REQUEST carrying `value` to the leader and decodes its answer, both through
    /// ``coder``; see ``request(topic:headers:body:timeout:)``.
    ///
    /// - Throws: `RequestError` as the `body:` form; `invalidArgument`, with the
    ///   ``MessageCodingError`` as its cause, when `value` does not encode or the answer does
    ///   not decode.
    public func request<Response: Decodable>(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        value: some Encodable,
        as type: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> Response {
        try await self.router.made(topic: topic) {
            let body = try self.coder.requestBody(value)
            let answer = try await self.tracedRequest(topic: topic, headers: headers, body: body, timeout: timeout)
            return try self.coder.answer(type, of: answer)
        }
    }

    /// Sends DATA carrying `value` (encoded by ``coder``) to the leader.
    public func send(topic: String, headers: MessageHeaders = MessageHeaders(), value: some Encodable) async throws {
        try await self.send(topic: topic, headers: headers, body: try self.coder.body(value))
    }

    /// Sends DATA to the leader (waiting for a connection if needed).
    public func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        try TopicInterest.refuseReserved(topic)
        let tracing = self.tracing
        try await self.client.send(
            topic: topic,
            headers: { tracing.headers(headers, on: $0) },
            body: body,
            ackRequested: ackRequested
        )
    }

    /// Sends DATA to the leader and returns once the leader's application took it (its ACK
    /// came), repeating it across reconnects until then; throws if the collaborator leaves
    /// first. See `ReconnectingClient.sendAcknowledged(topic:body:)`.
    public func sendAcknowledged(topic: String, body: ByteBuffer) async throws {
        try TopicInterest.refuseReserved(topic)
        try await self.client.sendAcknowledged(topic: topic, body: body)
    }

    /// Sends a REQUEST to the leader and waits for the RESPONSE; the timeout covers waiting for
    /// a connection too. It runs in a client span whose trace context goes along in the
    /// headers (where the leader has the `headers` extension).
    ///
    /// - Throws: `RequestError`, whatever ended the request (see `RequestError` for the
    ///   table): the leader's code when it did not serve it (NO_HANDLER, FAILED, …);
    ///   `deadlineExceeded` when no answer (or no connection) came within the timeout;
    ///   `unavailable` when the connection was lost or the collaborator left; `cancelled` when
    ///   the calling task is.
    public func request(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await self.router.made(topic: topic) {
            try await self.tracedRequest(topic: topic, headers: headers, body: body, timeout: timeout)
        }
    }

    /// A request in a client span, its trace context in its headers.
    private func tracedRequest(
        topic: String,
        headers: MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?
    ) async throws -> Message {
        try await self.tracing.request(topic: topic, peer: nil) {
            try TopicInterest.refuseReserved(topic)
            let tracing = self.tracing
            return try await self.client.request(
                topic: topic,
                headers: { tracing.headers(headers, on: $0) },
                body: body,
                timeout: timeout
            )
        }
    }

    /// Connects to the leader (and reconnects), handles what it sends, and announces status
    /// changes, until the task is cancelled, the `ServiceGroup` shuts down gracefully, or
    /// ``leave()`` is called; says GOODBYE on the open connection, waits until it is closed, and
    /// returns.
    ///
    /// - Throws: `MessagingError` with `MessagingError.Code.gaveUp` when its reconnect policy
    ///   ran out of attempts; with `MessagingError.Code.alreadyRunning` when called while
    ///   running or after it ran: a collaborator runs once.
    public func run() async throws {
        let again = self.started.withLockedValue { started in
            defer { started = true }
            return started
        }
        if again {
            throw MessagingError(.alreadyRunning, "a collaborator runs once")
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Handlers' failures are answered and logged by the router: it ends only when the
            // client does.
            group.addTask {
                // A leader never announces interest: an announcement from it breaks PROTOCOL.md
                // 8.5 (where the extension is in force).
                let messages = self.client.messages.compactMap { received -> SessionMessage? in
                    if received.message.topic == TopicInterest.updateTopic,
                        received.session.extensions.contains(.interest)
                    {
                        received.session.fail(code: .protocolError, reason: "invalid interest announcement")
                        return nil
                    }
                    return received
                }
                _ = await self.router.serve(messages)
            }
            group.addTask { await self.announceStatusChanges() }
            if let follower = self.follower {
                group.addTask { await self.follow(follower) }
            }
            defer { group.cancelAll() }
            // Returns after GOODBYE, when cancelled, shut down or left.
            try await self.client.run()
        }
    }

    /// The highest leader term seen (with an election): in a leader's HELLO or from the
    /// election.
    public var highestTermSeen: UInt64? { self.follower?.highestTerm }

    /// Follows the election until cancelled, or until the election ends its sequence (it was
    /// shut down): each new leader is the one to join, at once. A sequence that fails is asked
    /// for again after a second.
    private func follow(_ follower: LeaderFollower) async {
        while !Task.isCancelled {
            do {
                for try await leader in follower.election.leaders() {
                    guard follower.learn(leader) else { continue }
                    self.logger.info("the election has a new leader", metadata: ["leader": "\(leader)"])
                    self.client.moveOn(reason: "moving to the leader of term \(leader.term)") { session in
                        // Already with it (or a newer one).
                        (LeaderFollower.term(of: session) ?? 0) >= leader.term
                    }
                }
                return
            } catch is CancellationError {
                return
            } catch {
                self.logger.warning("cannot follow the election", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Leaves the group gracefully: GOODBYE, then the connection closes; returns once ``run()``
    /// has returned.
    public func leave() async {
        await self.client.close()
    }
}

/// Tells the leader what a collaborator's router handles (PROTOCOL.md 8.5): in each HELLO, then
/// with an update on the open session whenever it differs from what the leader was last told.
final class InterestAnnouncer: Sendable {
    private let router: Router
    /// The document the leader was last told (in a HELLO or an update).
    private let announced = NIOLockedValueBox<String?>(nil)

    init(router: Router) {
        self.router = router
    }

    /// The document for the HELLO of a new connection.
    func forHello() -> String {
        self.announced.withLockedValue { announced in
            let document = self.router.interest.encoded()
            announced = document
            return document
        }
    }

    /// Sends an update on `session` if what the router handles is not what was last told, and
    /// the session has `interest` in force.
    func announce(on session: Session) {
        guard session.extensions.contains(.interest) else { return }
        self.announced.withLockedValue { announced in
            // Read under the lock too: a change decided later is never sent first.
            let document = self.router.interest.encoded()
            guard announced != document else { return }
            announced = document
            // Under the lock: two changes at once go out in the order they were decided, so
            // the leader's last word is the latest (offer only queues it on the event loop).
            session.offer(topic: TopicInterest.updateTopic, body: ByteBuffer(string: document))
        }
    }
}

/// What a collaborator knows of its election: the leader to join and the highest term seen.
final class LeaderFollower: Sendable {
    let election: any LeaderElection

    private struct State {
        var leader: ElectedLeader?
        var highestTerm: UInt64?
        var waiters: [UInt64: CheckedContinuation<ElectedLeader, any Error>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    init(election: any LeaderElection) {
        self.election = election
    }

    var highestTerm: UInt64? { self.state.withLockedValue { $0.highestTerm } }

    static func term(of session: Session) -> UInt64? {
        session.peer?.metadata["term"].flatMap { UInt64($0) }
    }

    /// Takes `leader` as the one to join, unless its term is lower than one already seen or
    /// it is the one known; returns whether it was taken.
    func learn(_ leader: ElectedLeader) -> Bool {
        let waiters: [CheckedContinuation<ElectedLeader, any Error>]? = self.state.withLockedValue { state in
            if let highest = state.highestTerm, leader.term < highest { return nil }
            if state.leader == leader { return nil }
            state.leader = leader
            state.highestTerm = max(state.highestTerm ?? 0, leader.term)
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        guard let waiters else { return false }
        for waiter in waiters {
            waiter.resume(returning: leader)
        }
        return true
    }

    /// The leader to join: the newest one known, once there is one.
    func leaderToJoin() async throws -> ElectedLeader {
        let key = self.state.withLockedValue { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let known: Result<ElectedLeader, any Error>? = self.state.withLockedValue { state in
                    if let leader = state.leader { return .success(leader) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[key] = continuation
                    return nil
                }
                if let known {
                    continuation.resume(with: known)
                }
            }
        } onCancel: {
            self.state.withLockedValue { $0.waiters.removeValue(forKey: key) }?.resume(throwing: CancellationError())
        }
    }

    /// Whether to join the server of `session`: a reason to refuse it, or `nil`. A leader
    /// announces its term in HELLO; the highest seen rises with it.
    func admit(_ session: Session) -> String? {
        guard let term = Self.term(of: session) else {
            return "the server announced no leader term"
        }
        return self.state.withLockedValue { state in
            if let highest = state.highestTerm, term < highest {
                return "the leader's term \(term) is lower than term \(highest), already seen"
            }
            state.highestTerm = max(state.highestTerm ?? 0, term)
            return nil
        }
    }
}
