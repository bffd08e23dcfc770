import NIOConcurrencyHelpers
public import NIOCore
import Synchronization

/// Where a session is in its life.
public enum SessionState: Sendable, Hashable {
    /// TCP connected or accepted; TLS handshake under way (when TLS is used).
    case handshaking
    /// Transport ready; HELLOs being exchanged.
    case awaitingHello
    case open
    /// GOODBYE sent or received.
    case draining
    case closed
}

/// One smsg/1 connection, on either side: send, request, respond, receive, close.
///
/// A `Session` is a thread-safe handle; the protocol runs on the channel's event loop.
/// Received messages come from ``messages``, in order, one consumer at a time.
public final class Session: Sendable {
    /// The channel under the session.
    public let channel: any Channel
    /// The session id: the server's own for a server session, the server's HELLO value for a
    /// client session (known once open).
    public var sessionID: String? { self.state.withLockedValue { $0.sessionID } }
    /// The peer's HELLO, once the session is open.
    public var peer: Hello? { self.state.withLockedValue { $0.peer } }
    /// The extensions in force (both HELLOs list them), once the session is open.
    public var extensions: ProtocolExtensions { self.state.withLockedValue { $0.extensions } }
    /// What the transport reported when it became ready (for TLS, the handshake's outcome).
    var transport: TransportReady? { self.state.withLockedValue { $0.transport } }
    /// The current state.
    public var currentState: SessionState { self.state.withLockedValue { $0.lifecycle } }
    /// The round-trip time of the latest PING answered.
    public var lastRoundTrip: Duration? { self.state.withLockedValue { $0.lastRoundTrip }.map { Duration($0) } }
    /// The latest FLOW signal from the peer.
    public var peerFlow: FlowSignal { self.state.withLockedValue { $0.peerFlow } }
    /// The number of ACKs received.
    public var acksReceived: Int { self.state.withLockedValue { $0.acksReceived } }
    /// The number of FLOW SLOW_DOWN frames received.
    public var slowDownsReceived: Int { self.state.withLockedValue { $0.slowDownsReceived } }
    /// Messages received and not yet taken by the application.
    public var queuedMessageCount: Int { self.inbound.count }
    /// DATA payload bytes received and not yet taken by the application.
    public var queuedBytes: Int { self.inbound.bytes }
    /// The most DATA payload bytes ever waiting for the application at once.
    public var peakQueuedBytes: Int { self.inbound.peakBytes }
    /// The most messages ever waiting for the application at once.
    public var peakQueuedMessageCount: Int { self.inbound.peakMessages }
    /// Whether DATA cannot be sent right now (the channel is over its write-buffer watermark
    /// or the peer said SLOW_DOWN): `send` would wait and `trySend` refuses.
    public var isSendBlocked: Bool { self.sendBlocked.load(ordering: .relaxed) }
    /// The peer's address.
    public var remoteAddress: SocketAddress? { self.channel.remoteAddress }

    /// The messages received, in order.
    public var messages: InboundMessages { InboundMessages(queue: self.inbound) }

    /// From now on the application takes messages only while `condition` holds: when it does
    /// not, ``messages`` ends and the message stays untaken — not ACKed, so the sender sends it
    /// again elsewhere. For a leader that must not take anything once its leadership has ended.
    /// `condition` runs under the queue's lock: quick, and without touching the session.
    package func admitMessages(while condition: @escaping @Sendable () -> Bool) {
        self.inbound.admit(while: condition)
    }

    let inbound: InboundQueue
    /// Kept up to date by the handler, read by `trySend` from any thread.
    let sendBlocked = Atomic<Bool>(false)
    /// When the last frame arrived, in `NIODeadline` uptime nanoseconds.
    let lastSeen = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)
    private let state: NIOLockedValueBox<State>
    private let handler: NIOLoopBoundBox<SessionHandler?>
    private let openPromise: EventLoopPromise<Void>
    private let configuration: SessionConfiguration

    private struct State {
        var lifecycle: SessionState = .handshaking
        /// The connection ended (its close reason is settled).
        var ended = false
        var sessionID: String?
        var peer: Hello?
        var extensions: ProtocolExtensions = []
        var transport: TransportReady?
        var lastRoundTrip: TimeAmount?
        var peerFlow: FlowSignal = .resume
        var acksReceived = 0
        var slowDownsReceived = 0
        var pingStatus: ByteBuffer = ByteBuffer()
        var peerStatus: ByteBuffer?
        var closeReason: MessagingError?
        // The listeners share the state's lock: one lock per session, not three.
        var peerStatusListener: (@Sendable (ByteBuffer) -> Void)?
        var ackListener: (@Sendable (UInt64) -> Void)?
        /// Who waits for the peer to CANCEL a REQUEST: by its id, then by each waiter's token
        /// (several may wait for the same request).
        var cancelWaiters: [UInt64: [UInt64: CheckedContinuation<Bool, Never>]] = [:]
        var nextCancelToken: UInt64 = 0
        /// REQUESTs the peer cancelled before anyone waited for that (bounded).
        var cancelledRequests: Set<UInt64> = []
    }

    /// The most cancelled REQUEST ids kept for a ``waitForCancellation(of:)`` still to come.
    static let cancelledRequestsKept = 4096

    init(
        channel: any Channel,
        sessionID: String?,
        configuration: SessionConfiguration,
        metrics: MessagingMetrics? = nil
    ) {
        self.channel = channel
        self.configuration = configuration
        self.state = NIOLockedValueBox(State(sessionID: sessionID))
        self.handler = NIOLoopBoundBox(nil, eventLoop: channel.eventLoop)
        self.openPromise = channel.eventLoop.makePromise(of: Void.self)
        let handlerBox = self.handler
        let loop = channel.eventLoop
        self.inbound = InboundQueue(
            limits: .init(configuration.flowControl),
            gauge: metrics?.inboundQueuedBytes
        ) { message, resume in
            let ackID: UInt64? = message.flags.contains(.ackRequested) && !message.isResponse ? message.id : nil
            guard ackID != nil || resume else { return }
            if loop.inEventLoop {
                handlerBox.value?.consumed(ackID: ackID, resume: resume)
            } else {
                loop.execute { handlerBox.value?.consumed(ackID: ackID, resume: resume) }
            }
        }
    }

    /// Attaches the handler; call on the event loop while building the pipeline.
    func attach(_ handler: SessionHandler) {
        self.handler.value = handler
    }

    /// Lets go of the handler once the pipeline has removed it (on the event loop).
    func detach() {
        self.handler.value = nil
    }

    // MARK: - Application API

    /// Sends a message and reports, on the event loop, the DATA id it was given.
    func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool,
        onID: (@Sendable (UInt64) -> Void)?
    ) async throws {
        try Task.checkCancellation()
        try headers.validateForSending()
        let promise = self.channel.eventLoop.makePromise(of: Void.self)
        let message = OutboundMessage(
            topic: topic,
            body: body,
            flags: ackRequested ? .ackRequested : [],
            kind: .send(mayWait: true),
            headers: headers,
            written: promise,
            onID: onID
        )
        self.send(message)
        try await self.wait(for: promise)
    }

    /// Waits for `promise`; when the calling task is cancelled first, the message it waits for
    /// is given up (dropped while parked, CANCELled once sent as a REQUEST) and this throws
    /// `CancellationError`.
    private func wait<Value: Sendable>(for promise: EventLoopPromise<Value>) async throws -> Value {
        let future = promise.futureResult
        return try await withTaskCancellationHandler {
            try await future.get()
        } onCancel: {
            // The closure holds the future, so its identity cannot pass to another's meanwhile.
            self.onLoop { handler in
                handler?.abandon(waiter: ObjectIdentifier(future), because: CancellationError())
            }
        }
    }

    /// Called with the id of every ACK received (on the event loop).
    func onAck(_ listener: @escaping @Sendable (UInt64) -> Void) {
        self.state.withLockedValue { $0.ackListener = listener }
    }

    /// Sends a message. Waits while the channel is over its write-buffer watermark or the
    /// peer said SLOW_DOWN; returns once the message is written to the connection.
    ///
    /// - Parameters:
    ///   - topic: at most 255 bytes of UTF-8.
    ///   - body: the payload, sent as it is.
    ///   - ackRequested: ask the peer to ACK once its application has taken it.
    ///   - headers: sent where the peer has the `headers` extension (see ``extensions``);
    ///     elsewhere headers are refused with ``MessagingError/Code/extensionNotInForce``.
    ///
    /// Cancelling the calling task gives the send up while it waits (it is then not sent) and
    /// throws `CancellationError`.
    public func send(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        ackRequested: Bool = false
    ) async throws {
        try await self.send(topic: topic, headers: headers, body: body, ackRequested: ackRequested, onID: nil)
    }

    /// Whether a message of this size could be sent to the peer at all (topic at most 255
    /// bytes, payload within the peer's max_frame).
    private func fitsPeer(topic: String, body: ByteBuffer) -> Bool {
        SessionStateMachine.fits(
            topicBytes: topic.utf8.count,
            bodyBytes: body.readableBytes,
            peerMaxFrame: Frame.payloadLimit(announced: self.peer?.maxFrame)
        )
    }

    /// Hands `message` to the handler on the event loop.
    private func send(_ message: OutboundMessage) {
        self.onLoop { handler in
            guard let handler else {
                message.fail(MessagingError(.connectionClosed, "the connection closed"))
                return
            }
            handler.send(message)
        }
    }

    /// Sends a message unless sending is blocked (the channel is over its write-buffer
    /// watermark or the peer said SLOW_DOWN); never waits and never queues beyond the session's
    /// bound. Returns whether the message was taken.
    @discardableResult
    public func trySend(topic: String, body: ByteBuffer) -> Bool {
        guard !self.sendBlocked.load(ordering: .relaxed), self.currentState == .open,
            self.fitsPeer(topic: topic, body: body)
        else { return false }
        self.send(OutboundMessage(topic: topic, body: body, flags: [], kind: .send(mayWait: false)))
        return true
    }

    /// Sends a message for a broadcast: never waits; while the peer cannot take it, the
    /// message is held within the session's bound (its write-buffer high watermark), and a
    /// session that would need more is closed as a slow consumer with ERROR OVERLOADED.
    /// Returns false only when the session is not open or the message can never be sent
    /// (topic over 255 bytes, payload over the peer's max_frame).
    @discardableResult
    public func offer(topic: String, body: ByteBuffer) -> Bool {
        guard self.currentState == .open, self.fitsPeer(topic: topic, body: body) else { return false }
        self.onLoop { handler in handler?.offerNow(topic: topic, body: body) }
        return true
    }

    /// Why the connection ended: `nil` while open, or after a clean end (GOODBYE, or our close).
    public var closeReason: MessagingError? { self.state.withLockedValue { $0.closeReason } }

    /// Sends a REQUEST and waits for its RESPONSE.
    ///
    /// `timeout` counts from this call, waiting to send included; where the peer has the
    /// `headers` extension it travels with the REQUEST (`smsg-timeout-ms`) so that the
    /// responder gives up when the requester does. When it passes, or the calling task is
    /// cancelled, the request is given up and the peer told with CANCEL (where it has the
    /// `cancel` extension); an answer that comes later is ignored.
    ///
    /// - Throws: ``RequestError``, whatever ended the request: the responder's code when it did
    ///   not serve it (a FAILED RESPONSE), ``RequestError/Code/deadlineExceeded`` when no
    ///   RESPONSE came within `timeout`, ``RequestError/Code/unavailable`` when the session is
    ///   not open or the connection is lost first, ``RequestError/Code/cancelled`` when the
    ///   calling task is cancelled, ``RequestError/Code/invalidArgument`` when the request
    ///   cannot be sent as given; the ``MessagingError`` behind it is its `cause`.
    public func request(
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil
    ) async throws -> Message {
        try await RequestError.ending {
            try await self.requestOrFail(topic: topic, headers: headers, body: body, timeout: timeout)
        }
    }

    private func requestOrFail(
        topic: String,
        headers: MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?
    ) async throws -> Message {
        try Task.checkCancellation()
        try headers.validateForSending(extraBytes: Self.timeoutHeaderBytes)
        let promise = self.channel.eventLoop.makePromise(of: Message.self)
        let deadline = self.channel.eventLoop.now + TimeAmount(timeout ?? self.configuration.requestTimeout)
        self.send(
            OutboundMessage(
                topic: topic,
                body: body,
                flags: .request,
                kind: .request(deadline: deadline, response: promise),
                headers: headers
            )
        )
        let response = try await self.wait(for: promise)
        if let failure = response.failure {
            throw failure
        }
        return response
    }

    /// The most a request's `smsg-timeout-ms` header takes in its block.
    static let timeoutHeaderBytes = 1 + MessageHeaders.timeoutName.utf8.count + 2 + 10

    /// Answers a REQUEST. The topic defaults to the request's. Headers need the peer to have the
    /// `headers` extension (see ``extensions``); elsewhere they are refused with
    /// ``MessagingError/Code/extensionNotInForce``.
    public func respond(
        to request: Message,
        topic: String? = nil,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer
    ) async throws {
        try headers.validateForSending()
        try await self.respond(to: request, topic: topic, headers: headers, body: body, failure: nil)
    }

    /// Answers a REQUEST with the outcome that it was not served: a FAILED RESPONSE with the
    /// error's code and message where the peer has the `status` extension (and its
    /// ``RequestError/metadata`` as headers where it has `headers`, unless they cannot be sent:
    /// an invalid or reserved name, over 16,384 bytes), else (a plain smsg/1 peer) a RESPONSE
    /// with an empty body.
    public func respond(to request: Message, failure: RequestError) async throws {
        var headers = MessageHeaders()
        if !failure.metadata.isEmpty, self.extensions.contains(.headers), self.extensions.contains(.status),
            (try? failure.metadata.validateForSending()) != nil
        {
            // Metadata that cannot go (an invalid or reserved name, too many bytes) is left
            // out: the code and message still reach the requester.
            headers = failure.metadata
        }
        try await self.respond(to: request, topic: nil, headers: headers, body: ByteBuffer(), failure: failure)
    }

    private func respond(
        to request: Message,
        topic: String?,
        headers: MessageHeaders,
        body: ByteBuffer,
        failure: RequestError?
    ) async throws {
        let promise = self.channel.eventLoop.makePromise(of: Void.self)
        let topic = topic ?? request.topic
        let id = request.id
        self.forgetCancellation(of: id)
        self.onLoop { handler in
            guard let handler else {
                promise.fail(MessagingError(.connectionClosed, "the connection closed"))
                return
            }
            handler.sendResponse(
                to: id,
                topic: topic,
                headers: headers,
                body: body,
                failure: failure,
                promise: promise
            )
        }
        try await promise.futureResult.get()
    }

    /// Returns once no one waits for the answer to `request` any more: the peer CANCELled it
    /// (`true`), or the connection ended (`true`); or when the calling task is cancelled
    /// (`false`). A responder races its work against this to stop work nobody wants.
    public func waitForCancellation(of request: Message) async -> Bool {
        let id = request.id
        let token = self.state.withLockedValue { state in
            state.nextCancelToken += 1
            return state.nextCancelToken
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = self.state.withLockedValue { state in
                    if state.ended { return true }
                    if state.cancelledRequests.contains(id) { return true }
                    if Task.isCancelled { return false }
                    state.cancelWaiters[id, default: [:]][token] = continuation
                    return nil
                }
                if let now {
                    continuation.resume(returning: now)
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state -> CheckedContinuation<Bool, Never>? in
                let waiter = state.cancelWaiters[id]?.removeValue(forKey: token)
                if state.cancelWaiters[id]?.isEmpty == true {
                    state.cancelWaiters[id] = nil
                }
                return waiter
            }
            waiter?.resume(returning: false)
        }
    }

    /// Whether nobody waits for the answer to `request` any more: the peer CANCELled it, or the
    /// connection ended. A responder that has not begun its work yet skips it.
    public func isAbandoned(_ request: Message) -> Bool {
        self.state.withLockedValue { $0.ended || $0.cancelledRequests.contains(request.id) }
    }

    /// How many wait in ``waitForCancellation(of:)`` (for tests).
    var cancelWaiterCount: Int { self.state.withLockedValue { $0.cancelWaiters.values.reduce(0) { $0 + $1.count } } }

    /// The peer CANCELled the REQUEST `id` (on the event loop): who waits for that is woken, and
    /// the id kept (bounded) for whoever asks later, until the request is answered.
    func requestCancelled(id: UInt64) {
        let waiters = self.state.withLockedValue { state in
            if state.cancelledRequests.count >= Self.cancelledRequestsKept {
                state.cancelledRequests.remove(state.cancelledRequests.first!)
            }
            state.cancelledRequests.insert(id)
            return state.cancelWaiters.removeValue(forKey: id).map { Array($0.values) } ?? []
        }
        for waiter in waiters {
            waiter.resume(returning: true)
        }
    }

    private func forgetCancellation(of id: UInt64) {
        self.state.withLockedValue { state in
            if !state.cancelledRequests.isEmpty {
                state.cancelledRequests.remove(id)
            }
        }
    }

    /// Closes gracefully: GOODBYE, then waits for the peer's GOODBYE (or the drain timeout)
    /// and for the connection to close.
    public func close() async {
        self.onLoop { handler in handler?.beginGoodbye(goingAway: false) }
        await self.waitUntilClosed()
    }

    /// Starts a graceful close without waiting; with `goingAway`, sessions that do not answer
    /// GOODBYE within the drain timeout get ERROR GOING_AWAY.
    public func beginClose(goingAway: Bool = false) {
        self.onLoop { handler in handler?.beginGoodbye(goingAway: goingAway) }
    }

    /// Sends ERROR with `code` and `reason` and closes.
    public func fail(code: ErrorCode, reason: String) {
        self.onLoop { handler in handler?.fail(code: code, reason: reason) }
    }

    /// A server refusing the peer after its HELLO (an allow-list): logged and counted as
    /// `refusal` like the refusals the session makes itself, then ERROR `code` and close.
    package func refuse(_ refusal: RefusalReason, code: ErrorCode, reason: String) {
        self.onLoop { handler in
            handler?.refused(refusal, reason)
            handler?.fail(code: code, reason: reason)
        }
    }

    /// Sets the status blob sent with every PING from now on (at most 65,536 bytes).
    public func setPingStatus(_ status: ByteBuffer) {
        precondition(status.readableBytes <= Frame.maximumPingPayload, "a PING status is at most 65,536 bytes")
        self.state.withLockedValue { $0.pingStatus = status }
    }

    /// Sends a PING carrying the current status blob now (e.g. after a status change), outside
    /// the heartbeat schedule.
    public func ping() {
        self.onLoop { handler in handler?.pingNow() }
    }

    /// When the last frame from the peer arrived.
    public var lastReceived: NIODeadline {
        .uptimeNanoseconds(self.lastSeen.load(ordering: .relaxed))
    }

    /// The status blob of the peer's latest PING that carried one.
    public var peerStatus: ByteBuffer? { self.state.withLockedValue { $0.peerStatus } }

    /// Called with each status blob the peer's PINGs carry (on the event loop), until the
    /// session closes; then the listener is released.
    public func onPeerStatus(_ listener: @escaping @Sendable (ByteBuffer) -> Void) {
        self.state.withLockedValue { $0.peerStatusListener = listener }
    }

    /// Waits until the HELLO exchange is done.
    ///
    /// - Throws: the reason the session never opened.
    public func waitUntilOpen() async throws {
        try await self.openPromise.futureResult.get()
    }

    /// Waits until the connection has closed.
    public func waitUntilClosed() async {
        try? await self.channel.closeFuture.get()
    }

    private func onLoop(_ body: @escaping @Sendable (SessionHandler?) -> Void) {
        let handler = self.handler
        if self.channel.eventLoop.inEventLoop {
            body(handler.value)
        } else {
            self.channel.eventLoop.execute { body(handler.value) }
        }
    }

    // MARK: - Reports from the handler (on the event loop)

    /// The state machine's lifecycle, published for other threads (the machine holds the
    /// lifecycle; this is its latest value).
    ///
    /// - Parameter failure: with `.closed`, why the session ended (its close reason from now on).
    func publish(_ lifecycle: SessionState, failure: MessagingError? = nil) {
        self.state.withLockedValue {
            $0.lifecycle = lifecycle
            if lifecycle == .closed, let failure, !$0.ended {
                $0.closeReason = failure
            }
        }
    }

    func transportReady(_ ready: TransportReady) {
        self.state.withLockedValue { $0.transport = ready }
    }

    func opened(peer: Hello, extensions: ProtocolExtensions = []) {
        self.state.withLockedValue {
            $0.peer = peer
            $0.extensions = extensions
            if $0.sessionID == nil {
                $0.sessionID = peer.sessionID
            }
        }
        self.openPromise.succeed(())
    }

    func connectionEnded(failure: MessagingError?) {
        let cancelWaiters = self.state.withLockedValue {
            if !$0.ended {
                $0.closeReason = failure
                $0.ended = true
            }
            $0.lifecycle = .closed
            // Nothing more can be heard; the listeners (which may refer to this session) go.
            $0.peerStatusListener = nil
            $0.ackListener = nil
            $0.cancelledRequests.removeAll()
            let waiters = $0.cancelWaiters.values.flatMap { $0.values }
            $0.cancelWaiters.removeAll()
            return waiters
        }
        // No one can take an answer any more.
        for waiter in cancelWaiters {
            waiter.resume(returning: true)
        }
        self.inbound.finish(error: failure)
        self.openPromise.fail(failure ?? MessagingError(.connectionClosed, "the connection closed before HELLO"))
    }

    func recordRoundTrip(_ roundTrip: TimeAmount?) {
        guard let roundTrip else { return }
        self.state.withLockedValue { $0.lastRoundTrip = roundTrip }
    }

    func recordAck(id: UInt64) {
        let listener = self.state.withLockedValue { state in
            state.acksReceived += 1
            return state.ackListener
        }
        listener?(id)
    }

    func recordFlow(_ signal: FlowSignal) {
        self.state.withLockedValue {
            $0.peerFlow = signal
            if signal == .slowDown {
                $0.slowDownsReceived += 1
            }
        }
    }

    func recordPeerStatus(_ status: ByteBuffer) {
        let listener = self.state.withLockedValue { state in
            state.peerStatus = status
            return state.peerStatusListener
        }
        listener?(status)
    }

    func pingStatus() -> ByteBuffer {
        self.state.withLockedValue { $0.pingStatus }
    }
}
