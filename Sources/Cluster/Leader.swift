import CoreMetrics
public import Logging
public import Messaging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import SecureTransport
public import ServiceLifecycle
public import Tracing

/// Settings of a ``Leader``.
public struct LeaderConfiguration: Sendable, Hashable {
    /// The server under the leader (its sessions always list the `interest` extension: the
    /// leader takes its collaborators' topic interest). By default the leader's node_id is
    /// "leader" and a collaborator's node_id must be its client certificate's identity
    /// (`requireCertificateIdentity`): the transport must then ask for client certificates
    /// (mutual TLS), or ``Leader/run()`` refuses to start. Over plain TCP, or TLS without client
    /// certificates, set `server.requireCertificateIdentity = false`: a node_id is then taken
    /// as given.
    public var server: ServerConfiguration
    /// When set, only these node_ids may join; others get ERROR UNAUTHORIZED.
    public var allowList: Set<String>?
    /// How long a gone collaborator's record is kept before it is removed.
    public var goneRetention: Duration = .seconds(60)
    /// The most REQUESTs of one collaborator in handlers at once; beyond, its further
    /// messages wait and it is told FLOW SLOW_DOWN (``Router``).
    public var maximumConcurrentRequests = 64
    /// With an election: the address collaborators are told to connect to (`host:port`);
    /// `nil`: the address the leader listens on.
    public var advertisedAddress: String?
    /// With an election: how long a leader that stepped down, or whose campaign failed, waits
    /// before it campaigns again.
    public var campaignRetryDelay: Duration = .seconds(1)
    /// Which topics get a label of their own in the request metrics (``RequestMetrics``).
    public var requestMetricsTopics: RequestMetrics.Topics = .handled
    /// How requests to any collaborator that handles a topic are spread
    /// (``Leader/request(toAnyHandling:headers:body:timeout:options:)``).
    public var dispatch = DispatchConfiguration()

    public init(host: String = "127.0.0.1", port: Int = 0) {
        self.server = ServerConfiguration(host: host, port: port)
        self.server.nodeID = "leader"
        self.server.role = "leader"
        self.server.requireCertificateIdentity = true
    }
}

/// The leader of a group of collaborators: it accepts them (over mutual TLS, normally), keeps
/// a record of each — identity, address, status, round trip, and state active → suspect →
/// gone — reports membership changes on ``events``, runs handlers by topic, and reaches one
/// collaborator or all of them.
///
/// With a ``LeaderElection`` the leader is one of several candidates: it serves only while it
/// holds the leadership. Standby, it refuses every connection with ERROR GOING_AWAY "not the
/// active leader" (it listens, so collaborators that come too early get a clear answer).
/// Elected, it serves with the election's term, announced in its HELLO metadata (`term`), and
/// keeps its lease alive; when the lease is lost, or not confirmed before
/// ``Leadership/validUntil`` on its own clock, it steps down at once — ERROR GOING_AWAY to
/// every session, refusing new ones, and no message handled after that instant — and campaigns
/// again. ``leadershipEvents`` tells each change.
///
/// One collaborator per node_id: a second connection with a node_id already connected
/// replaces the first (which gets ERROR GOING_AWAY). A broadcast never waits on one slow or
/// failing collaborator.
public final class Leader: Service, MessageRouting, Sendable {
    public let configuration: LeaderConfiguration
    /// Membership changes, in order.
    public let events: AsyncStream<MembershipEvent>
    /// With an election: standby, elected and stepped-down, in order.
    public let leadershipEvents: AsyncStream<LeadershipEvent>
    /// The election the leader campaigns in, if any.
    public let election: (any LeaderElection)?

    private let server: SecureMessagingServer
    private let transport: any MessagingTransport
    private let started = NIOLockedValueBox(false)
    let state = NIOLockedValueBox(State())
    /// The handlers by topic (`on(topic:_:)`, `onRequest(topic:_:)`).
    public let router: Router
    /// The coder of typed messages (JSON unless given another).
    public let coder: MessageCoder
    private let eventContinuation: AsyncStream<MembershipEvent>.Continuation
    private let leadershipContinuation: AsyncStream<LeadershipEvent>.Continuation
    /// With an election: 1 while elected, else 0; and the term held (the last one, after).
    private let activeGauge: Gauge
    private let termGauge: Gauge
    let logger: Logger
    let tracing: MessageTracing
    let dispatchMetrics: DispatchMetrics

    struct State {
        var records: [String: CollaboratorRecord] = [:]
        var sessions: [String: Session] = [:]
        var goneSince: [String: ContinuousClock.Instant] = [:]
        /// The leadership held now (with an election).
        var leadership: Leadership?
        /// Dispatched requests waiting for a collaborator with room.
        var dispatch = DispatchState()
    }

    public init(
        configuration: LeaderConfiguration,
        transport: any MessagingTransport,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics = MessagingMetrics(),
        tracer: (any Tracer)? = nil,
        coder: MessageCoder = .json,
        election: (any LeaderElection)? = nil
    ) {
        self.configuration = configuration
        self.transport = transport
        self.election = election
        self.activeGauge = Gauge(label: "smsg_leader_active", factory: metrics.factory)
        self.termGauge = Gauge(label: "smsg_leader_term", factory: metrics.factory)
        self.coder = coder
        self.logger = logger
        self.tracing = MessageTracing(configured: tracer)
        self.dispatchMetrics = DispatchMetrics(factory: metrics.factory)
        self.router = Router(
            maximumConcurrentRequests: configuration.maximumConcurrentRequests,
            logger: logger,
            metrics: metrics.factory,
            requestTopics: configuration.requestMetricsTopics,
            tracer: tracer
        )
        (self.events, self.eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        (self.leadershipEvents, self.leadershipContinuation) = AsyncStream.makeStream(
            bufferingPolicy: .bufferingNewest(1_000)
        )
        // The handler refers to the leader, which is not built yet: route through a box. The
        // box holds it weakly: the leader holds the server, which holds this handler.
        let box = WeakBox<Leader>()
        var server = configuration.server
        // Collaborators tell which topics they handle (PROTOCOL.md 8.5).
        server.session.extensions.insert(.interest)
        self.server = SecureMessagingServer(
            configuration: server,
            transport: transport,
            group: group,
            logger: logger,
            metrics: metrics
        ) { session in
            guard let leader = box.value else { return }
            try await leader.serve(session)
        }
        box.value = self
    }

    // MARK: - Membership

    /// Every collaborator the leader knows (including gone ones still kept), by node_id.
    public var collaborators: [CollaboratorRecord] {
        self.refresh()
        return self.state.withLockedValue { $0.records.values.sorted { $0.nodeID < $1.nodeID } }
    }

    /// The connected collaborators (active or suspect) that handle `topic` (REQUESTs or other
    /// messages on it), as they announced (``CollaboratorRecord/interest``), by node_id. Those
    /// that announced nothing are not among them.
    public func collaborators(handling topic: String) -> [CollaboratorRecord] {
        self.collaborators.filter { record in
            record.state != .gone && record.interest?.handles(topic) == true
        }
    }

    /// The sessions open now (collaborators, and connections still saying HELLO or closing).
    public var sessionCount: Int { self.server.activeSessionCount }

    /// The record of one collaborator.
    public func collaborator(_ nodeID: String) -> CollaboratorRecord? {
        self.refresh()
        return self.state.withLockedValue { $0.records[nodeID] }
    }

    /// The address the leader listens on, once it does.
    public func listeningAddress() async throws -> SocketAddress {
        try await self.server.listeningAddress()
    }

    // MARK: - Reaching collaborators

    /// Sends a REQUEST to one collaborator and waits for its RESPONSE, in a client span whose
    /// trace context goes along in the headers (where the collaborator has the `headers`
    /// extension).
    ///
    /// - Throws: `RequestError`, whatever ended the request (see `RequestError` for the
    ///   table): the collaborator's code when it did not serve it; `unavailable` when it is not
    ///   connected, its connection is lost, or this leader does not lead now;
    ///   `deadlineExceeded` at the timeout; `cancelled` when the calling task is.
    public func request(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await self.router.made(topic: topic) {
            try await self.tracedRequest(to: nodeID, topic: topic, headers: headers, body: body, timeout: timeout)
        }
    }

    /// A request in a client span, its trace context in its headers.
    private func tracedRequest(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?
    ) async throws -> Message {
        try await self.tracing.request(topic: topic, peer: nodeID) {
            try TopicInterest.refuseReserved(topic)
            try self.requireServing()
            self.outstanding(nodeID, by: 1)
            return try await self.outstandingRequest(
                to: nodeID,
                topic: topic,
                headers: headers,
                body: body,
                timeout: timeout
            )
        }
    }

    /// Sends a REQUEST carrying `value` to one collaborator and decodes its answer, both
    /// through ``coder``; see ``request(to:topic:headers:body:timeout:)``.
    ///
    /// - Throws: `RequestError` as the `body:` form; `invalidArgument`, with the
    ///   ``MessageCodingError`` as its cause, when `value` does not encode or the answer does
    ///   not decode.
    public func request<Response: Decodable>(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        value: some Encodable,
        as type: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> Response {
        try await self.router.made(topic: topic) {
            let body = try self.coder.requestBody(value)
            let answer = try await self.tracedRequest(
                to: nodeID,
                topic: topic,
                headers: headers,
                body: body,
                timeout: timeout
            )
            return try self.coder.answer(type, of: answer)
        }
    }

    /// Sends DATA carrying `value` (encoded by ``coder``) to one collaborator.
    public func send(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        value: some Encodable
    ) async throws {
        try await self.send(to: nodeID, topic: topic, headers: headers, body: try self.coder.body(value))
    }

    /// Sends DATA to one collaborator, with the current trace context in its headers.
    public func send(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer
    ) async throws {
        try TopicInterest.refuseReserved(topic)
        try self.requireServing()
        let session = try self.session(of: nodeID)
        try await session.send(topic: topic, headers: self.tracing.headers(headers, on: session), body: body)
    }

    /// Whom a broadcast reaches.
    public enum BroadcastReach: Sendable, Hashable {
        /// The collaborators that handle the topic's messages, as they announced
        /// (``CollaboratorRecord/interest``), and those that announced nothing.
        case interested
        /// Every connected collaborator, whatever it handles.
        case all
    }

    /// Sends DATA to the connected collaborators without waiting on any of them; returns how
    /// many took it. By default it reaches those that handle `topic` (and those that announced
    /// nothing: an older collaborator); `.all` reaches every one. A collaborator that cannot
    /// take it now holds it within its session's bound, or is closed as a slow consumer (see
    /// `Session.offer(topic:body:)`). With an election, only while it leads (0 otherwise).
    @discardableResult
    public func broadcast(topic: String, body: ByteBuffer, reach: BroadcastReach = .interested) -> Int {
        guard self.isServing(at: .now), topic != TopicInterest.updateTopic else { return 0 }
        let sessions = self.state.withLockedValue { state in
            state.sessions.compactMap { nodeID, session -> Session? in
                if reach == .interested, let interest = state.records[nodeID]?.interest,
                    !interest.handlesMessages(on: topic)
                {
                    return nil
                }
                return session
            }
        }
        var taken = 0
        for session in sessions where session.offer(topic: topic, body: body) {
            taken += 1
        }
        return taken
    }

    func session(of nodeID: String) throws -> Session {
        guard let session = self.state.withLockedValue({ $0.sessions[nodeID] }) else {
            throw MessagingError(.notConnected, "no collaborator \(nodeID) is connected")
        }
        return session
    }

    // MARK: - Service

    /// Listens and serves until its task is cancelled, its `ServiceGroup` shuts down
    /// gracefully, or ``shutdown()`` is called; keeps the records up to date meanwhile
    /// (suspect, gone, removal). Each way, it says GOODBYE to every collaborator, returns once
    /// they are all gone, and ends ``events``.
    ///
    /// - Throws: `MessagingError` with `MessagingError.Code.alreadyRunning` when called while
    ///   running or after it ran (a leader runs once); with
    ///   `MessagingError.Code.invalidConfiguration` when the configuration requires
    ///   collaborators' certificate identities (`server.requireCertificateIdentity`, on by
    ///   default) and the transport asks for no client certificate, which would refuse every
    ///   collaborator.
    public func run() async throws {
        let again = self.started.withLockedValue { started in
            defer { started = true }
            return started
        }
        if again {
            throw MessagingError(.alreadyRunning, "a leader runs once")
        }
        if let problem = Self.identityProblem(self.configuration, transport: self.transport) {
            let error = MessagingError(.invalidConfiguration, problem)
            // Whoever waits for the address hears why there will be none.
            self.server.refuseToListen(error)
            self.eventContinuation.finish()
            self.leadershipContinuation.finish()
            throw error
        }
        let interval = Self.sweepMilliseconds(self.configuration)
        defer {
            self.eventContinuation.finish()
            self.leadershipContinuation.finish()
        }
        if self.election != nil {
            self.server.setAdmission(metadata: nil, refusal: Self.standbyRefusal)
            self.activeGauge.record(0)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(interval))
                    self.refresh()
                }
            }
            if let election = self.election {
                group.addTask { await self.lead(in: election) }
            }
            defer { group.cancelAll() }
            try await self.server.run()
        }
    }

    /// Reloads the TLS certificate, key, trust roots and CRLs from disk for new connections;
    /// see `SecureMessagingServer.reloadTLS()`.
    @discardableResult
    public func reloadTLS() throws -> TLSContext {
        try self.server.reloadTLS()
    }

    /// Says GOODBYE to every collaborator (GOING_AWAY to those that do not answer within the
    /// drain timeout) and makes ``run()`` return once they are all gone.
    public func shutdown() {
        self.server.shutdown()
    }

    /// Why `configuration` would refuse every collaborator over `transport`, if it would: the
    /// node_id must be the client certificate's identity, and no certificate is asked for.
    static func identityProblem(_ configuration: LeaderConfiguration, transport: any MessagingTransport) -> String? {
        guard configuration.server.requireCertificateIdentity else { return nil }
        let asksForCertificates: Bool
        if let tls = transport as? TLSTransport {
            asksForCertificates = tls.context.configuration.clientAuthentication != .none
        } else {
            // Plain TCP carries no certificate; another transport is taken at its word.
            asksForCertificates = transport.isSecure
        }
        guard !asksForCertificates else { return nil }
        return "the leader requires each collaborator's node_id to be its client certificate's identity "
            + "(LeaderConfiguration.server.requireCertificateIdentity), but its transport asks for no client "
            + "certificate: every collaborator would be refused. Use mutual TLS (clientAuthentication "
            + ".required), or set server.requireCertificateIdentity = false to trust the node_id as given"
    }

    private static func sweepMilliseconds(_ configuration: LeaderConfiguration) -> Int64 {
        max(10, TimeAmount(configuration.server.session.heartbeatInterval).nanoseconds / 4_000_000)
    }

    // MARK: - Per collaborator

    private func serve(_ session: Session) async throws {
        guard let hello = session.peer else { return }
        let nodeID = hello.nodeID
        if let allowed = self.configuration.allowList, !allowed.contains(nodeID) {
            session.refuse(.notAllowed, code: .unauthorized, reason: "node not allowed")
            return
        }
        let announcesInterest = session.extensions.contains(.interest)
        var interest: TopicInterest?
        if announcesInterest, let document = hello.metadata[TopicInterest.metadataKey] {
            do {
                interest = try TopicInterest(document: Array(document.utf8))
            } catch {
                session.fail(code: .protocolError, reason: "invalid interest announcement")
                self.logger.warning("a collaborator's HELLO had \(error)", metadata: ["node_id": "\(nodeID)"])
                return
            }
        }
        var metadata = hello.metadata
        if announcesInterest {
            metadata[TopicInterest.metadataKey] = nil
        }
        let now = ContinuousClock.now
        var record = CollaboratorRecord(
            nodeID: nodeID,
            certificateIdentity: session.peerIdentity,
            remoteAddress: session.remoteAddress?.addressText,
            role: hello.role,
            connectedSince: now,
            lastSeen: now,
            roundTrip: nil,
            status: hello.metadata["status"],
            metadata: metadata,
            state: .active,
            sessionID: session.sessionID,
            interest: interest
        )
        // Admitted and recorded in one step, so a step-down either sees this session (and ends
        // it) or comes first (and it is refused here).
        let admission = self.state.withLockedValue { state -> (admitted: Bool, term: UInt64?, replaced: Session?) in
            var term: UInt64?
            if self.election != nil {
                guard let leadership = state.leadership, ContinuousClock.now < leadership.validUntil else {
                    return (false, nil, nil)
                }
                term = leadership.term
            }
            let old = state.sessions[nodeID]
            // Requests to its former connection still count until they end.
            record.outstandingRequests = state.records[nodeID]?.outstandingRequests ?? 0
            state.sessions[nodeID] = session
            state.records[nodeID] = record
            state.goneSince[nodeID] = nil
            self.serveWaiters(&state)
            return (true, term, old)
        }
        guard admission.admitted else {
            session.fail(code: Self.standbyRefusal.code, reason: Self.standbyRefusal.reason)
            return
        }
        let term = admission.term
        if self.election != nil {
            // Past the leadership's end on this process's clock, or once another term began,
            // nothing more is taken from this session — not even ACKed (a leader that was frozen
            // may run again before it has stepped down).
            session.admitMessages { [weak self] in self?.isServing(at: .now, term: term) ?? false }
        }
        if let replaced = admission.replaced {
            replaced.fail(code: .goingAway, reason: "replaced by a newer connection")
            self.eventContinuation.yield(.left(nodeID: nodeID, reason: .replaced))
        }
        self.eventContinuation.yield(.joined(record))
        // Weak: the session keeps its listener, so a strong reference would keep the session
        // (and its channel) alive forever after it closed.
        session.onPeerStatus { [weak self, weak session] blob in
            guard let self, let session else { return }
            self.statusReceived(nodeID: nodeID, session: session, status: String(buffer: blob))
        }

        var reason = LeaveReason.graceful
        // Handlers' failures are answered and logged by the router: only the end of the
        // connection ends this.
        let messages = session.messages.compactMap { message -> SessionMessage? in
            if announcesInterest, message.topic == TopicInterest.updateTopic {
                self.interestUpdated(nodeID: nodeID, session: session, update: message)
                return nil
            }
            return SessionMessage(message: message, session: session)
        }
        let ended = await self.router.serve(messages)
        if !self.isServing(at: .now, term: term) {
            // The messages ended because the leadership did.
            session.fail(code: Self.standbyRefusal.code, reason: Self.standbyRefusal.reason)
        }
        if let error = ended as? MessagingError {
            reason = error.errorCode == .timeout ? .timeout : .connectionLost(error.reason)
        } else if ended is CancellationError {
            // The leader is being cancelled: it says GOODBYE to everyone.
            reason = .graceful
        } else if let ended {
            reason = .connectionLost("\(ended)")
        }
        await session.waitUntilClosed()
        let stillCurrent = self.state.withLockedValue { state -> Bool in
            guard state.sessions[nodeID] === session else { return false }
            state.sessions[nodeID] = nil
            state.records[nodeID]?.state = .gone
            state.goneSince[nodeID] = ContinuousClock.now
            self.serveWaiters(&state)
            return true
        }
        if stillCurrent {
            self.eventContinuation.yield(.left(nodeID: nodeID, reason: reason))
        }
    }

    /// An `interest` update (PROTOCOL.md 8.5): the record takes it, or the session is closed
    /// with PROTOCOL_ERROR when it is invalid.
    private func interestUpdated(nodeID: String, session: Session, update: Message) {
        let interest: TopicInterest
        do {
            interest = try TopicInterest(update: update)
        } catch {
            self.logger.warning("a collaborator sent \(error)", metadata: ["node_id": "\(nodeID)"])
            session.fail(code: .protocolError, reason: "invalid interest announcement")
            return
        }
        let changed = self.state.withLockedValue { state -> Bool in
            guard state.sessions[nodeID] === session, state.records[nodeID]?.interest != interest else { return false }
            state.records[nodeID]?.interest = interest
            self.serveWaiters(&state)
            return true
        }
        if changed {
            self.eventContinuation.yield(.interestChanged(nodeID: nodeID, interest: interest))
        }
    }

    private func statusReceived(nodeID: String, session: Session, status: String) {
        let changed = self.state.withLockedValue { state -> Bool in
            guard state.sessions[nodeID] === session, state.records[nodeID]?.status != status else { return false }
            state.records[nodeID]?.status = status
            return true
        }
        if changed {
            self.eventContinuation.yield(.statusChanged(nodeID: nodeID, status: status))
        }
    }

    /// Brings the records up to date: last seen, round trip, active ↔ suspect, and removal of
    /// gone records past their retention.
    private func refresh() {
        let now = ContinuousClock.now
        let nowDeadline = NIODeadline.now()
        var events: [MembershipEvent] = []
        self.state.withLockedValue { state in
            for (nodeID, session) in state.sessions {
                guard var record = state.records[nodeID] else { continue }
                let silence = nowDeadline - session.lastReceived
                record.lastSeen = now - .nanoseconds(silence.nanoseconds)
                record.roundTrip = session.lastRoundTrip
                let interval = TimeAmount.milliseconds(Int64(session.peer?.heartbeatMilliseconds ?? 5000))
                let next = record.state.connected(silence: silence, heartbeatInterval: interval)
                if next != record.state {
                    record.state = next
                    events.append(next == .suspect ? .suspect(nodeID: nodeID) : .active(nodeID: nodeID))
                }
                state.records[nodeID] = record
            }
            for (nodeID, since) in state.goneSince where now - since >= self.configuration.goneRetention {
                state.goneSince[nodeID] = nil
                state.records[nodeID] = nil
                state.dispatch.forget(nodeID)
            }
            if !events.isEmpty {
                // Who may be dispatched to has changed.
                self.serveWaiters(&state)
            }
        }
        for event in events {
            self.eventContinuation.yield(event)
        }
    }
}

/// A change of a ``Leader``'s place in its election.
public enum LeadershipEvent: Sendable, Hashable {
    /// Not the leader: campaigning, refusing collaborators.
    case standby
    /// Elected: serving collaborators with this term.
    case elected(term: UInt64)
    /// The leadership of this term ended: the lease was lost or not confirmed in time.
    case steppedDown(term: UInt64, reason: String)
}

// MARK: - Election

extension Leader {
    static let standbyRefusal = ProtocolViolation(.goingAway, "not the active leader")

    /// The leadership held now; `nil` while standby (always `nil` without an election).
    public var leadership: Leadership? {
        self.state.withLockedValue { $0.leadership }
    }

    /// Whether the leader serves collaborators at `now` (in `term`, when given): always without
    /// an election; with one, while it holds a leadership (of that term) whose lease cannot
    /// have expired.
    func isServing(at now: ContinuousClock.Instant, term: UInt64? = nil) -> Bool {
        guard self.election != nil else { return true }
        return self.state.withLockedValue { state in
            guard let leadership = state.leadership, term == nil || leadership.term == term else { return false }
            return now < leadership.validUntil
        }
    }

    /// Throws unless the leader serves now (with an election: while it leads).
    func requireServing() throws {
        guard self.isServing(at: .now) else {
            throw MessagingError(.notConnected, "not the active leader")
        }
    }

    /// Campaigns, serves each won term until it ends, and campaigns again, until cancelled;
    /// a leadership held when cancelled is given up (after the leader stopped serving).
    func lead(in election: any LeaderElection) async {
        while !Task.isCancelled {
            self.leadershipContinuation.yield(.standby)
            self.logger.info("standby: campaigning")
            let leadership: Leadership
            do {
                let address = try await self.advertisedAddress()
                leadership = try await election.campaign(address: address)
            } catch is CancellationError {
                return
            } catch {
                self.logger.warning("campaign failed", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: self.configuration.campaignRetryDelay)
                continue
            }
            if Task.isCancelled {
                // Elected as the leader was shutting down: hand over at once.
                await Self.resign(leadership, in: election)
                return
            }
            self.activate(leadership)
            let reason = await self.holdLeadership(leadership, in: election)
            await Self.resign(leadership, in: election)
            if reason == nil || Task.isCancelled { return }
            try? await Task.sleep(for: self.configuration.campaignRetryDelay)
        }
    }

    /// Gives up `leadership` even when the calling task is cancelled (a leader shutting down
    /// hands over at once instead of letting its lease run out).
    private static func resign(_ leadership: Leadership, in election: any LeaderElection) async {
        await Task { await election.resign(leadership) }.value
    }

    private func advertisedAddress() async throws -> String {
        if let configured = self.configuration.advertisedAddress {
            return configured
        }
        let address = try await self.server.listeningAddress()
        guard let host = address.ipAddress, let port = address.port else {
            throw LeaderElectionError("the leader listens on \(address), which has no host and port to advertise")
        }
        if host == "0.0.0.0" || host == "::" {
            throw LeaderElectionError(
                "the leader listens on every address (\(host)): set the address to advertise to collaborators"
            )
        }
        return addressText(host: host, port: port)
    }

    /// Serves `leadership` until it ends and steps down the moment it does — before waiting for
    /// the watches to finish; returns why it ended (`nil`: cancelled, the leader shutting down).
    private func holdLeadership(_ leadership: Leadership, in election: any LeaderElection) async -> String? {
        await withTaskGroup(of: String?.self) { group in
            group.addTask {
                do {
                    try await election.hold(leadership) { until in
                        self.confirm(term: leadership.term, until: until)
                    }
                    return nil
                } catch is CancellationError {
                    return nil
                } catch {
                    return "\(error)"
                }
            }
            group.addTask {
                // A newer leader means this one's key is gone (its lease revoked or expired):
                // the election may say so before a renewal does.
                do {
                    for try await elected in election.leaders() where elected.term > leadership.term {
                        return "a newer leader was elected (\(elected))"
                    }
                } catch {
                    // Following failed: the renewals and the clock still decide.
                }
                try? await Task.sleep(for: .seconds(365 * 24 * 3600))
                return nil
            }
            group.addTask {
                // The leader's own clock: steps down when the lease was not confirmed in time,
                // whatever the election says (or cannot say).
                while true {
                    guard let until = self.state.withLockedValue({ $0.leadership?.validUntil }) else { return nil }
                    if ContinuousClock.now >= until {
                        return "the lease was not confirmed in time"
                    }
                    do {
                        try await Task.sleep(until: until, clock: .continuous)
                    } catch {
                        return nil
                    }
                }
            }
            let first = await group.next() ?? nil
            let reason = Task.isCancelled ? nil : first
            // Shutting down, the server says GOODBYE to everyone itself.
            self.stepDown(leadership, reason: reason ?? "the leader is shutting down", failSessions: reason != nil)
            group.cancelAll()
            return reason
        }
    }

    private func activate(_ leadership: Leadership) {
        self.state.withLockedValue { $0.leadership = leadership }
        var metadata = self.configuration.server.metadata
        metadata["term"] = "\(leadership.term)"
        self.server.setAdmission(metadata: metadata, refusal: nil)
        self.activeGauge.record(1)
        self.termGauge.record(Int64(clamping: leadership.term))
        self.logger.notice(
            "elected",
            metadata: ["term": "\(leadership.term)", "address": "\(leadership.address)"]
        )
        self.leadershipContinuation.yield(.elected(term: leadership.term))
    }

    private func confirm(term: UInt64, until: ContinuousClock.Instant) {
        self.state.withLockedValue { state in
            guard state.leadership?.term == term, let current = state.leadership?.validUntil, until > current else {
                return
            }
            state.leadership?.validUntil = until
        }
    }

    /// Stops serving: refuses new sessions and, with `failSessions`, sends ERROR GOING_AWAY on
    /// every open one.
    private func stepDown(_ leadership: Leadership, reason: String, failSessions: Bool) {
        self.server.setAdmission(metadata: nil, refusal: Self.standbyRefusal)
        let sessions = self.state.withLockedValue { state in
            state.leadership = nil
            return Array(state.sessions.values)
        }
        self.activeGauge.record(0)
        for session in sessions where failSessions {
            session.fail(code: .goingAway, reason: "the leader stepped down")
        }
        self.logger.warning("stepped down", metadata: ["term": "\(leadership.term)", "reason": "\(reason)"])
        self.leadershipContinuation.yield(.steppedDown(term: leadership.term, reason: reason))
    }
}

/// A weak reference behind a lock.
final class WeakBox<Object: AnyObject & Sendable>: Sendable {
    private let box = NIOLockedValueBox<Weak>(Weak())

    private struct Weak {
        weak var object: Object?
    }

    var value: Object? {
        get { self.box.withLockedValue { $0.object } }
        set { self.box.withLockedValue { $0.object = newValue } }
    }
}
