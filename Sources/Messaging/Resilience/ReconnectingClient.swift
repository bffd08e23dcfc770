public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import ServiceLifecycle

/// What happens to a ``ReconnectingClient``'s connection.
public enum ConnectionEvent: Sendable, Hashable {
    /// A session is open (again). The id is the server's session id.
    case connected(sessionID: String?)
    /// The session ended; `nil` when the client itself closed it.
    case disconnected(MessagingError?)
    /// The next attempt, and how long the client waits before it.
    case reconnecting(attempt: Int, delay: Duration)
    /// The policy ran out of attempts: the client stops.
    case gaveUp(MessagingError?)
}

/// What `send` does while there is no connection.
public enum DisconnectedSendPolicy: Sendable, Hashable {
    /// Wait for the next connection; at most `capacity` sends wait at once, and more fail with
    /// ``MessagingError/Code/outboxFull``.
    case wait(capacity: Int)
    /// Fail at once with ``MessagingError/Code/notConnected``.
    case failFast
}

/// A client that keeps a session to one server open: it reconnects by itself after a lost
/// or refused connection, with the backoff of its ``ReconnectPolicy``, and repeats HELLO with
/// the same node_id.
///
/// Delivery: a message sent with `ackRequested: true` is kept until the server ACKs it (its
/// application took it) and sent again after every reconnect until then — **at least once**:
/// a message whose ACK was lost with the connection arrives twice, and resent messages may
/// overtake newer ones. Messages without ACK are at most once. Requests in flight when the
/// connection is lost fail with ``RequestError/Code/unavailable`` (the
/// ``MessagingError/Code/connectionClosed`` error as its cause); they are not repeated.
///
/// Messages from the server arrive on ``messages`` across reconnects, and connection changes on
/// ``events``.
///
/// Nothing happens until ``run()``: it connects, reconnects, and returns when its task is
/// cancelled, when a `ServiceGroup` shuts down gracefully, when ``close()`` is called, or when
/// the policy gives up; an open connection is closed with GOODBYE first. Sends and requests
/// made before `run()` starts wait for the connection like any other (see
/// ``DisconnectedSendPolicy``).
public final class ReconnectingClient: Service, Sendable {
    /// Where to connect next, asked before each attempt.
    package struct Target: Sendable, Hashable {
        package var host: String
        package var port: Int
        /// The name the server's certificate must carry; `nil`: `host`.
        package var serverHostname: String?
        /// HELLO metadata for this attempt, over the configuration's.
        package var helloMetadata: [String: String]

        package init(host: String, port: Int, serverHostname: String?, helloMetadata: [String: String] = [:]) {
            self.host = host
            self.port = port
            self.serverHostname = serverHostname
            self.helloMetadata = helloMetadata
        }
    }

    private let target: @Sendable () async throws -> Target
    private let admit: (@Sendable (Session) -> String?)?
    private let transport: any MessagingTransport
    private let configuration: ClientConfiguration
    private let policy: ReconnectPolicy
    private let disconnectedSends: DisconnectedSendPolicy
    private let group: any EventLoopGroup
    private let logger: Logger
    private let metrics: MessagingMetrics?
    private let sleep: @Sendable (Duration) async throws -> Void
    private let onConnected: (@Sendable (Session) -> Void)?
    private let state = NIOLockedValueBox(State())
    private let eventContinuation: AsyncStream<ConnectionEvent>.Continuation

    /// Connection changes, in order.
    public let events: AsyncStream<ConnectionEvent>
    /// Messages from the server, across reconnects, each with the session it came on (to
    /// answer a REQUEST on). Taken straight from the current session's queue, so flow control
    /// holds: a reader that stops reading makes the server slow down. One reader at a time.
    public var messages: ReconnectingMessages { ReconnectingMessages(client: self) }

    /// DATA id → local number, for one session: ACKs of an old session never touch the
    /// messages of a newer one.
    private final class AckTracker: Sendable {
        let inFlight = NIOLockedValueBox<[UInt64: UInt64]>([:])
    }

    private struct State {
        var session: Session?
        var tracker = AckTracker()
        var waiters: [UInt64: CheckedContinuation<Session, any Error>] = [:]
        var readers: [UInt64: CheckedContinuation<Session?, Never>] = [:]
        var nextReader: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var stopped = false
        var stopReason: MessagingError?
        /// Messages sent with ACK requested and not yet ACKed, by local number.
        var unacked: [UInt64: (topic: String, body: ByteBuffer)] = [:]
        /// Callers of `sendAcknowledged` waiting for the ACK, by local number.
        var ackWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextLocal: UInt64 = 0
        var phase = RunPhase.idle
        /// Callers of `close()` waiting for `run()` to return.
        var runEndWaiters: [CheckedContinuation<Void, Never>] = []
        /// `run()`'s watch for the client's stopping.
        var stopWaiter: CheckedContinuation<Void, Never>?
        /// A backoff wait to cut short (``moveOn(reason:)``), or a call to move on that came
        /// while none was waiting.
        var nudgeWaiter: CheckedContinuation<Void, Never>?
        var nudged = false
    }

    private enum RunPhase {
        case idle
        case running
        case ended
    }

    /// Makes a client; it connects once ``run()`` runs.
    ///
    /// - Parameters:
    ///   - host: the server's address or DNS name.
    ///   - port: the server's port.
    ///   - transport: TLS or plain TCP.
    ///   - serverHostname: the name the server's certificate must carry; defaults to `host`.
    ///   - configuration: this side's HELLO and session settings.
    ///   - policy: how long to wait between attempts, and when to give up.
    ///   - disconnectedSends: what a send does while no connection is open.
    ///   - clock: the clock backoff delays are slept on (a test clock needs no real waiting).
    ///   - group: the event loops to run on.
    ///   - logger: where connection changes are logged; by default the task-local
    ///     `Logger.current`.
    ///   - metrics: where each connection's session counts frames, bytes, backpressure and
    ///     handshake failures; `nil`: nowhere.
    ///   - onConnected: called with each new session as soon as it is open, before anything is
    ///     sent on it.
    public convenience init(
        host: String,
        port: Int,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        configuration: ClientConfiguration,
        policy: ReconnectPolicy = ReconnectPolicy(),
        disconnectedSends: DisconnectedSendPolicy = .wait(capacity: 1024),
        clock: some Clock<Duration> = ContinuousClock(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics? = nil,
        onConnected: (@Sendable (Session) -> Void)? = nil
    ) {
        let target = Target(host: host, port: port, serverHostname: serverHostname)
        self.init(
            target: { target },
            admit: nil,
            transport: transport,
            configuration: configuration,
            policy: policy,
            disconnectedSends: disconnectedSends,
            clock: clock,
            group: group,
            logger: logger,
            metrics: metrics,
            onConnected: onConnected
        )
    }

    /// Makes a client whose server can change: `target` is asked before each attempt (it may
    /// wait until a server is known), and `admit` sees each new session first — a reason it
    /// returns refuses that session (it is closed and counts as a failed attempt).
    package init(
        target: @escaping @Sendable () async throws -> Target,
        admit: (@Sendable (Session) -> String?)?,
        transport: any MessagingTransport,
        configuration: ClientConfiguration,
        policy: ReconnectPolicy = ReconnectPolicy(),
        disconnectedSends: DisconnectedSendPolicy = .wait(capacity: 1024),
        clock: some Clock<Duration> = ContinuousClock(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger.current,
        metrics: MessagingMetrics? = nil,
        onConnected: (@Sendable (Session) -> Void)? = nil
    ) {
        self.onConnected = onConnected
        self.metrics = metrics
        self.target = target
        self.admit = admit
        self.transport = transport
        self.configuration = configuration
        self.policy = policy
        self.disconnectedSends = disconnectedSends
        self.group = group
        self.logger = logger
        self.sleep = { try await clock.sleep(for: $0) }
        (self.events, self.eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1024))
    }

    /// The session now open, if any.
    public var currentSession: Session? { self.state.withLockedValue { $0.session } }

    /// Messages sent with ACK requested that the server has not acknowledged yet.
    public var unacknowledgedCount: Int { self.state.withLockedValue { $0.unacked.count } }

    /// Calls waiting for a connection now.
    var waitingForConnectionCount: Int { self.state.withLockedValue { $0.waiters.count } }

    // MARK: - Sending

    /// Sends a message on the current connection, waiting for one if needed (see
    /// ``DisconnectedSendPolicy``). With `ackRequested`, the message is kept and repeated after
    /// reconnects until ACKed: once this returns, it is not lost while the client runs.
    ///
    /// `headers` go where the server has the `headers` extension; a send with ACK requested
    /// carries none.
    public func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        try await self.send(topic: topic, headers: { _ in headers }, body: body, ackRequested: ackRequested)
    }

    /// `send(topic:headers:body:ackRequested:)` with headers made for the session it goes on
    /// (what a peer without the `headers` extension cannot take is left out).
    package func send(
        topic: String,
        headers: (Session) -> MessageHeaders,
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        guard ackRequested else {
            let session = try await self.sessionForSending()
            try await session.send(topic: topic, headers: headers(session), body: body)
            return
        }
        _ = try await self.sendKept(topic: topic, body: body)
    }

    /// Sends a message with ACK requested, like `send(topic:body:ackRequested:)`, and returns
    /// once the server has acknowledged it (its application took it), however many reconnects
    /// that takes.
    ///
    /// Throws when the client closes or gives up first; the message may or may not have
    /// arrived then. Cancelling the wait leaves the message to be repeated until ACKed.
    public func sendAcknowledged(topic: String, body: ByteBuffer) async throws {
        let local = try await self.sendKept(topic: topic, body: body)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = self.state.withLockedValue { state in
                    if state.unacked[local] == nil { return .success(()) }
                    if state.stopped {
                        return .failure(state.stopReason ?? MessagingError(.shuttingDown, "the client is closed"))
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.ackWaiters[local] = continuation
                    return nil
                }
                if let now {
                    continuation.resume(with: now)
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { $0.ackWaiters.removeValue(forKey: local) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Keeps the message until it is ACKed and sends it on the current connection (or the
    /// next); returns its local number.
    private func sendKept(topic: String, body: ByteBuffer) async throws -> UInt64 {
        // Waits for a connection as the disconnected-send policy says; the message is then kept
        // and sent in one step with the connection open at that moment, or, if none is open,
        // left to the next one (which sends every kept message first): never both, never neither.
        _ = try await self.sessionForSending()
        let (local, target): (UInt64, (Session, AckTracker)?) = try self.state.withLockedValue { state in
            if state.stopped { throw state.stopReason ?? MessagingError(.shuttingDown, "the client is closed") }
            state.nextLocal += 1
            state.unacked[state.nextLocal] = (topic, body)
            return (state.nextLocal, state.session.map { ($0, state.tracker) })
        }
        if let (session, tracker) = target {
            do {
                try await self.sendTracked(local: local, topic: topic, body: body, on: session, tracker: tracker)
            } catch {
                // Kept in `unacked`: the next connection sends it again.
                self.logger.debug(
                    "acknowledged send interrupted; it will be repeated",
                    metadata: ["error": "\(error)"]
                )
            }
        }
        return local
    }

    /// Sends a REQUEST on the current connection (waiting for one if needed) and waits for the
    /// RESPONSE; see ``Session/request(topic:headers:body:timeout:)``.
    ///
    /// `timeout` covers everything from this call: waiting for a connection, then the request
    /// itself, which is sent with the time left.
    ///
    /// - Throws: ``RequestError`` as `Session.request` does; no connection within the timeout
    ///   is ``RequestError/Code/deadlineExceeded``, a client that is closed, gave up or does not
    ///   wait for a connection (``DisconnectedSendPolicy``) ``RequestError/Code/unavailable``.
    public func request(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await self.request(topic: topic, headers: { _ in headers }, body: body, timeout: timeout)
    }

    /// `request(topic:headers:body:timeout:)` with headers made for the session it goes on.
    package func request(
        topic: String,
        headers: (Session) -> MessageHeaders,
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await RequestError.ending {
            try await self.requestOrFail(topic: topic, headers: headers, body: body, timeout: timeout)
        }
    }

    private func requestOrFail(
        topic: String,
        headers: (Session) -> MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?
    ) async throws -> Message {
        let timeout = timeout ?? self.configuration.session.requestTimeout
        let start = ContinuousClock.now
        let session = try await self.sessionForSending(within: timeout)
        let left = timeout - (ContinuousClock.now - start)
        guard left > .zero else {
            throw MessagingError(.requestTimedOut, "no response in time")
        }
        return try await session.request(topic: topic, headers: headers(session), body: body, timeout: left)
    }

    /// ``sessionForSending()``, giving up after `limit`.
    private func sessionForSending(within limit: Duration) async throws -> Session {
        if let session = self.state.withLockedValue({ $0.session }) {
            return session
        }
        return try await withThrowingTaskGroup(of: Session?.self) { group in
            group.addTask { try await self.sessionForSending() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let session = try await group.next() ?? nil else {
                throw MessagingError(.requestTimedOut, "no connection within the request's timeout")
            }
            return session
        }
    }

    /// Stops reconnecting, closes the session gracefully (GOODBYE), ends ``events`` and
    /// ``messages``, and returns once ``run()`` has returned (at once when it never ran). Sends
    /// still waiting for a connection fail with ``MessagingError/Code/shuttingDown``.
    public func close() async {
        self.shutDown()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let running = self.state.withLockedValue { state in
                guard state.phase == .running else { return false }
                state.runEndWaiters.append(continuation)
                return true
            }
            if !running {
                continuation.resume()
            }
        }
        self.eventContinuation.finish()
    }

    /// Stops reconnecting, fails the sends waiting for a connection, wakes the readers, and
    /// starts a graceful close (GOODBYE) of the session open now.
    private func shutDown() {
        let session = self.stop(MessagingError(.shuttingDown, "the client is closed"))
        self.wakeReaders(with: nil)
        session?.beginClose()
    }

    private func sendTracked(
        local: UInt64,
        topic: String,
        body: ByteBuffer,
        on session: Session,
        tracker: AckTracker
    ) async throws {
        try await session.send(topic: topic, body: body, ackRequested: true) { id in
            tracker.inFlight.withLockedValue { $0[id] = local }
        }
    }

    private func sessionForSending() async throws -> Session {
        let immediate: Result<Session, any Error>? = self.state.withLockedValue { state in
            if state.stopped {
                return .failure(state.stopReason ?? MessagingError(.shuttingDown, "the client is closed"))
            }
            if let session = state.session { return .success(session) }
            switch self.disconnectedSends {
            case .failFast:
                return .failure(MessagingError(.notConnected, "not connected"))
            case .wait(let capacity):
                return state.waiters.count >= capacity
                    ? .failure(MessagingError(.outboxFull, "\(capacity) sends already wait for a connection"))
                    : nil
            }
        }
        if let immediate {
            return try immediate.get()
        }
        let key = self.state.withLockedValue { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let resumeNow: Result<Session, any Error>? = self.state.withLockedValue { state in
                    if state.stopped {
                        return .failure(state.stopReason ?? MessagingError(.shuttingDown, "the client is closed"))
                    }
                    if let session = state.session { return .success(session) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[key] = continuation
                    return nil
                }
                if let resumeNow {
                    continuation.resume(with: resumeNow)
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { $0.waiters.removeValue(forKey: key) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: - Running

    /// Connects and keeps the client connected, reconnecting with the policy's backoff, until
    /// the task is cancelled, the service group shuts down gracefully, ``close()`` is called,
    /// or the policy gives up. Then it says GOODBYE on the open connection, waits until the
    /// connection is closed, ends ``events`` and ``messages``, and returns.
    ///
    /// - Throws: ``MessagingError`` with ``MessagingError/Code/gaveUp`` when the policy ran out
    ///   of attempts (a `ServiceGroup` then ends with that reason); with
    ///   ``MessagingError/Code/alreadyRunning`` when called while running or after it ran: a
    ///   client runs once.
    public func run() async throws {
        try self.state.withLockedValue { state in
            guard state.phase == .idle else {
                throw MessagingError(.alreadyRunning, "a client runs once")
            }
            state.phase = .running
        }
        await withTaskCancellationOrGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                // The loop, and a watch that ends it when the client is stopped from outside
                // (a backoff sleep or a connect in progress is then cancelled).
                group.addTask { await self.connectionLoop() }
                group.addTask { await self.waitUntilStopped() }
                await group.next()
                group.cancelAll()
            }
        } onCancelOrGracefulShutdown: {
            self.shutDown()
        }
        // Stopped whichever way the loop ended (idempotent): nothing waits on a client that
        // no longer runs.
        self.stop(MessagingError(.shuttingDown, "the client is closed"))
        let (waiters, reason) = self.state.withLockedValue { state in
            state.phase = .ended
            defer { state.runEndWaiters.removeAll() }
            return (state.runEndWaiters, state.stopReason)
        }
        self.eventContinuation.finish()
        self.wakeReaders(with: nil)
        for waiter in waiters {
            waiter.resume()
        }
        if let reason, reason.code == .gaveUp {
            throw reason
        }
    }

    /// Returns once the client is stopped, or when cancelled.
    private func waitUntilStopped() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = self.state.withLockedValue { state in
                    if state.stopped || Task.isCancelled { return true }
                    state.stopWaiter = continuation
                    return false
                }
                if now {
                    continuation.resume()
                }
            }
        } onCancel: {
            self.state.withLockedValue { state in
                defer { state.stopWaiter = nil }
                return state.stopWaiter
            }?.resume()
        }
    }

    private func connectionLoop() async {
        var attempt = 0
        var generator = SystemRandomNumberGenerator()
        var lastError: MessagingError?
        while !self.state.withLockedValue({ $0.stopped }) {
            do {
                let target = try await self.target()
                var configuration = self.configuration
                configuration.metadata.merge(target.helloMetadata) { _, attempt in attempt }
                let client = try await SecureClient.connect(
                    host: target.host,
                    port: target.port,
                    transport: self.transport,
                    serverHostname: target.serverHostname,
                    configuration: configuration,
                    group: self.group,
                    logger: self.logger,
                    metrics: self.metrics
                )
                if let refusal = self.admit?(client.session) {
                    client.session.fail(code: .goingAway, reason: refusal)
                    throw MessagingError(.connectFailed, refusal)
                }
                attempt = 0
                lastError = await self.serve(client.session)
            } catch {
                lastError = error as? MessagingError ?? MessagingError(.connectFailed, "\(error)")
                self.eventContinuation.yield(.disconnected(lastError))
            }
            if self.state.withLockedValue({ $0.stopped }) { break }
            if let refusal = lastError, refusal.isIdentityRefusal, !self.policy.retriesIdentityRefusals {
                let reason = MessagingError(
                    .gaveUp,
                    "the server refused this node (\(refusal.reason)); not retrying with the same identity",
                    errorCode: refusal.errorCode,
                    tlsError: refusal.tlsError
                )
                self.giveUp(reason, last: refusal)
                return
            }
            attempt += 1
            guard let delay = self.policy.delay(forAttempt: attempt, using: &generator) else {
                let reason = MessagingError(
                    .gaveUp,
                    "gave up after \(attempt - 1) attempts: \(lastError?.reason ?? "")"
                )
                self.giveUp(reason, last: lastError)
                return
            }
            self.eventContinuation.yield(.reconnecting(attempt: attempt, delay: delay))
            do {
                if try await self.backOff(delay) {
                    attempt = 0
                }
            } catch {
                break  // Cancelled: the client stopped.
            }
        }
    }

    /// Waits `delay`, or less when ``moveOn(reason:)`` is called meanwhile (then returns
    /// `true`).
    private func backOff(_ delay: Duration) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await self.sleep(delay)
                return false
            }
            group.addTask {
                await self.waitForNudge()
                return true
            }
            defer { group.cancelAll() }
            return try await group.next() ?? false
        }
    }

    private func waitForNudge() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = self.state.withLockedValue { state in
                    if state.nudged || Task.isCancelled {
                        state.nudged = false
                        return true
                    }
                    state.nudgeWaiter = continuation
                    return false
                }
                if now {
                    continuation.resume()
                }
            }
        } onCancel: {
            self.state.withLockedValue { state in
                defer { state.nudgeWaiter = nil }
                return state.nudgeWaiter
            }?.resume()
        }
    }

    /// Leaves the server of the open session at once (ERROR GOING_AWAY with `reason`) and
    /// connects again without waiting out a backoff: for when the client learns that another
    /// server is now the one to use. Messages sent with ACK requested and not yet ACKed go
    /// again on the next connection.
    ///
    /// - Parameter keep: decides, for the session open at that moment, to stay on it after all
    ///   (it is already with the right server); nothing happens then.
    package func moveOn(reason: String, unless keep: @Sendable (Session) -> Bool = { _ in false }) {
        let (session, waiter): (Session?, CheckedContinuation<Void, Never>?) = self.state.withLockedValue { state in
            if let session = state.session, keep(session) { return (nil, nil) }
            defer { state.nudgeWaiter = nil }
            if state.nudgeWaiter == nil {
                state.nudged = true
            }
            return (state.session, state.nudgeWaiter)
        }
        waiter?.resume()
        session?.fail(code: .goingAway, reason: reason)
    }

    /// The open session to read from next: not `previous`, which ended. Waits for a
    /// connection; `nil` once the client has stopped.
    func nextSessionForReading(after previous: Session?) async -> Session? {
        let key = self.state.withLockedValue { state in
            state.nextReader += 1
            return state.nextReader
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Session?, Never>) in
                let now: Session?? = self.state.withLockedValue { state in
                    if let session = state.session, session !== previous { return .some(session) }
                    if state.stopped || Task.isCancelled { return .some(nil) }
                    state.readers[key] = continuation
                    return nil
                }
                if let now {
                    continuation.resume(returning: now)
                }
            }
        } onCancel: {
            self.state.withLockedValue { $0.readers.removeValue(forKey: key) }?.resume(returning: nil)
        }
    }

    private func wakeReaders(with session: Session?) {
        let readers = self.state.withLockedValue { state in
            defer { state.readers.removeAll() }
            return state.readers
        }
        for reader in readers.values {
            reader.resume(returning: session)
        }
    }

    /// Stops the client for `reason`: sends waiting for a connection, and callers waiting for
    /// an ACK, fail with it. Returns the session open now.
    @discardableResult
    private func stop(_ reason: MessagingError) -> Session? {
        let (session, waiters, ackWaiters, stopWaiter) = self.state.withLockedValue { state in
            if !state.stopped {
                state.stopped = true
                state.stopReason = reason
            }
            defer {
                state.waiters.removeAll()
                state.ackWaiters.removeAll()
                state.stopWaiter = nil
            }
            return (state.session, Array(state.waiters.values), Array(state.ackWaiters.values), state.stopWaiter)
        }
        stopWaiter?.resume()
        for waiter in waiters {
            waiter.resume(throwing: reason)
        }
        for waiter in ackWaiters {
            waiter.resume(throwing: reason)
        }
        return session
    }

    /// Runs one session until it ends; returns why it ended (`nil`: we closed it).
    private func serve(_ session: Session) async -> MessagingError? {
        let tracker = AckTracker()
        session.onAck { [weak self] id in
            guard let local = tracker.inFlight.withLockedValue({ $0.removeValue(forKey: id) }) else { return }
            let waiter = self?.state.withLockedValue { state in
                state.unacked.removeValue(forKey: local)
                return state.ackWaiters.removeValue(forKey: local)
            }
            waiter?.resume()
        }
        let (waiters, pending, stopped):
            ([CheckedContinuation<Session, any Error>], [(UInt64, String, ByteBuffer)], Bool) =
                self.state.withLockedValue { state in
                    guard !state.stopped else { return ([], [], true) }
                    state.session = session
                    state.tracker = tracker
                    let waiters = Array(state.waiters.values)
                    state.waiters.removeAll()
                    let pending = state.unacked.sorted { $0.key < $1.key }.map {
                        ($0.key, $0.value.topic, $0.value.body)
                    }
                    return (waiters, pending, false)
                }
        if stopped {
            await session.close()
            return nil
        }
        self.onConnected?(session)
        self.eventContinuation.yield(.connected(sessionID: session.sessionID))
        await withTaskGroup(of: Void.self) { group in
            // Unacknowledged messages from earlier connections go first, then waiting sends
            // resume.
            group.addTask {
                for (local, topic, body) in pending {
                    do {
                        try await self.sendTracked(
                            local: local,
                            topic: topic,
                            body: body,
                            on: session,
                            tracker: tracker
                        )
                    } catch {
                        return
                    }
                }
            }
            for waiter in waiters {
                waiter.resume(returning: session)
            }
            self.wakeReaders(with: session)
            await session.waitUntilClosed()
            group.cancelAll()
        }
        let failure = session.closeReason
        let stoppedNow = self.state.withLockedValue { state in
            state.session = nil
            return state.stopped
        }
        let reason = stoppedNow ? nil : (failure ?? MessagingError(.connectionClosed, "the server closed the session"))
        self.eventContinuation.yield(.disconnected(reason))
        return reason
    }

    private func giveUp(_ reason: MessagingError, last: MessagingError?) {
        self.stop(reason)
        self.eventContinuation.yield(.gaveUp(last))
        self.eventContinuation.finish()
        self.wakeReaders(with: nil)
    }
}

/// A message from a ``ReconnectingClient``'s server and the session it came on.
public struct SessionMessage: Sendable {
    public var message: Message
    /// The session to answer on (``Session/respond(to:topic:headers:body:)``).
    public var session: Session

    public init(message: Message, session: Session) {
        self.message = message
        self.session = session
    }
}

/// The messages of a ``ReconnectingClient``, across reconnects, pulled from each session's
/// bounded queue in turn. Ends when the client is closed or gives up.
public struct ReconnectingMessages: AsyncSequence, Sendable {
    public typealias Element = SessionMessage
    public typealias Failure = Never

    let client: ReconnectingClient

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: self.client)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: ReconnectingClient
        var session: Session?
        var messages: InboundMessages.AsyncIterator?

        public mutating func next() async -> SessionMessage? {
            while !Task.isCancelled {
                if self.messages == nil {
                    guard let next = await self.client.nextSessionForReading(after: self.session) else { return nil }
                    self.session = next
                    self.messages = next.messages.makeAsyncIterator()
                }
                if let session = self.session, let message = try? await self.messages?.next() {
                    return SessionMessage(message: message, session: session)
                }
                // That session ended (cleanly or not), or the reader was cancelled: move on to
                // the next one, or end.
                self.messages = nil
            }
            return nil
        }
    }
}
