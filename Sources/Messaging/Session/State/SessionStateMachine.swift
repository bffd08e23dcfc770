import NIOCore
import SecureTransport

/// The smsg/1 protocol of one connection, with no channel and no clock: events in, actions out.
///
/// It owns every piece of protocol state of the session: the lifecycle (once), the HELLO
/// exchange and its checks, sequence numbers, REQUESTs outstanding and RESPONSEs owed,
/// heartbeats (``HeartbeatStateMachine``), outbound flow control and parked sends
/// (``OutboundFlowStateMachine``), the rate limit (``RateLimiter``), GOODBYE and the drain, ERROR
/// and its linger, and why the session ended. Every input that depends on time takes `now:`;
/// timers are the handler's, armed at the deadlines the machine returns, and their firing comes
/// back as an input. The inbound watermarks are a sub-machine of their own
/// (``InboundWatermarks``), kept by the session's queue because the application takes messages
/// from another thread. ``SessionHandler`` carries the actions out.
struct SessionStateMachine {
    enum Role: Sendable {
        case client
        case server
    }

    struct Configuration: Sendable {
        var role: Role
        /// Our HELLO (a server's carries the session id).
        var hello: Hello
        /// Our heartbeat interval.
        var heartbeatInterval: TimeAmount
        /// Our max_frame.
        var maxFrame: Int
        /// Server: the node_id must equal this identity (from the client certificate), if set.
        var requiredIdentity: String?
        /// Server: the node_id must equal the identity the transport reports for the peer.
        var requireCertificateIdentity = false
        /// Server: refuse the session with this ERROR as soon as the transport is ready (the
        /// connection limit).
        var rejection: ProtocolViolation?
        var helloTimeout: TimeAmount = .seconds(5)
        var drainTimeout: TimeAmount = .seconds(5)
        /// How long the sender of an ERROR keeps reading (and discarding) before it closes.
        var errorLinger: TimeAmount = .seconds(1)
        var rateLimit: RateLimit?
        /// The bound on parked broadcast messages (the write-buffer high watermark).
        var offerLimit = FlowControlConfiguration().writeBufferHighWatermark
        var slowConsumerTimeout = TimeAmount(FlowControlConfiguration().slowConsumerTimeout)
    }

    enum State: Equatable {
        /// The transport is not ready yet (TCP connecting, TLS handshaking).
        case idle
        /// Server: waiting for the client's HELLO. Client: sent HELLO, waiting for the server's.
        case awaitingHello
        case open
        /// A GOODBYE was sent or received: no new DATA, RESPONSEs still flow.
        case draining(sentGoodbye: Bool, receivedGoodbye: Bool)
        /// An ERROR was sent or received, or the connection ended: nothing more is sent.
        case closed
    }

    /// What the one phase timer is armed for (the phases never overlap).
    enum Phase: Equatable {
        /// The hello timeout.
        case hello
        /// Our GOODBYE is out: close at the drain timeout (after ERROR GOING_AWAY when set).
        case drain(goingAway: Bool)
        /// The peer's GOODBYE waits for the RESPONSEs we owe, until the drain timeout.
        case answerGoodbye
        /// Our ERROR is out: close at the end of the linger.
        case linger
    }

    private(set) var configuration: Configuration
    var state: State = .idle
    var peerHello: Hello? {
        didSet { self.peerMaxFrame = Frame.payloadLimit(announced: self.peerHello?.maxFrame) }
    }
    var nextSequence: UInt64 = 1
    var lastPeerSequence: UInt64 = 0
    /// REQUEST ids received and not yet answered.
    var owedResponses: Set<UInt64> = []
    /// Our REQUESTs waiting for their RESPONSE.
    var pendingRequests: [UInt64: EventLoopPromise<Message>] = [:]
    /// The id of each of ``pendingRequests`` by its caller (the future it waits on), to find it
    /// when the caller gives up.
    var requestIDs: [ObjectIdentifier: UInt64] = [:]
    /// The extensions in force (both HELLOs list them), once the session is open.
    var extensions: ProtocolExtensions = []
    var heartbeat: HeartbeatStateMachine
    /// When the heartbeat timer first fires, once the session is open.
    var nextHeartbeat: NIODeadline?
    var outbound: OutboundFlowStateMachine
    var rateLimiter: RateLimiter?
    /// What the phase timer is armed for, if anything.
    var phase: Phase?
    /// The peer said GOODBYE and we have not answered yet.
    var goodbyeOwed = false
    /// A GOODBYE came from the peer, or we sent ours and it answered.
    var goodbyeExchanged = false
    /// The application asked to close (GOODBYE sent by us).
    private var closeRequestedLocally = false
    /// Why the session ended, once it did (the first reason reported).
    private(set) var failure: MessagingError?

    init(configuration: Configuration, now: NIODeadline = .uptimeNanoseconds(0)) {
        self.configuration = configuration
        self.heartbeat = HeartbeatStateMachine(interval: configuration.heartbeatInterval, now: now)
        self.outbound = OutboundFlowStateMachine(
            offerLimit: configuration.offerLimit,
            slowConsumerTimeout: configuration.slowConsumerTimeout
        )
        self.rateLimiter = configuration.rateLimit.map { RateLimiter($0, now: now) }
    }

    /// The lifecycle as the public API names it.
    var lifecycle: SessionState {
        switch self.state {
        case .idle: .handshaking
        case .awaitingHello: .awaitingHello
        case .open: .open
        case .draining: .draining
        case .closed: .closed
        }
    }

    var isOpen: Bool { self.state == .open }
    var isClosed: Bool { self.state == .closed }

    /// The largest payload the peer accepts (set from its HELLO).
    private(set) var peerMaxFrame = Frame.payloadLimit(announced: nil)

    /// The peer's heartbeat interval, or the protocol default when its HELLO has none.
    var peerHeartbeatInterval: TimeAmount { self.heartbeat.peerInterval }

    /// Silence longer than this means the peer is gone: 3 × the larger interval.
    var heartbeatTimeout: TimeAmount { self.heartbeat.timeout }

    // MARK: - Lifecycle

    /// What to do once the transport is ready.
    enum ReadyAction: Equatable {
        case none
        /// Send `hello` (a client's) when set, and arm the phase timer for the hello timeout.
        case waitForHello(send: Hello?, deadline: NIODeadline)
        /// Refuse the session: send ERROR and close.
        case fail(ProtocolViolation)
    }

    /// The transport is ready (TCP accepted or connected; TLS handshake complete).
    ///
    /// - Parameter peerIdentity: the identity the transport authenticated for the peer (its
    ///   certificate's), if any.
    mutating func transportReady(peerIdentity: String?, now: NIODeadline) -> ReadyAction {
        guard self.state == .idle else { return .none }
        if self.configuration.requireCertificateIdentity {
            self.requireIdentity(peerIdentity ?? "")
        }
        if let rejection = self.configuration.rejection {
            return .fail(self.failed(rejection))
        }
        self.state = .awaitingHello
        self.phase = .hello
        let hello = self.configuration.role == .client ? self.configuration.hello : nil
        return .waitForHello(send: hello, deadline: now + self.configuration.helloTimeout)
    }

    /// Server: the client's node_id must equal `identity` (from its certificate).
    mutating func requireIdentity(_ identity: String) {
        self.configuration.requiredIdentity = identity
    }

    enum HelloTimeoutAction: Equatable {
        /// The session opened in time.
        case none
        /// Server: send ERROR TIMEOUT and close.
        case fail(ProtocolViolation)
        /// Client: close without a word (it sends nothing before the server's HELLO).
        case close
    }

    /// The hello timeout passed.
    mutating func helloTimedOut() -> HelloTimeoutAction {
        switch self.state {
        case .idle, .awaitingHello:
            self.phase = nil
            switch self.configuration.role {
            case .server:
                return .fail(self.failed(ProtocolViolation(.timeout, "no HELLO within the hello timeout")))
            case .client:
                self.state = .closed
                self.record(MessagingError(.connectFailed, "no HELLO from the server in time"))
                return .close
            }
        default:
            return .none
        }
    }

    /// What the phase timer's firing calls for.
    enum PhaseAction: Equatable {
        case none
        case fail(ProtocolViolation)
        /// Close the connection.
        case close
        /// Send GOODBYE, then close.
        case sendGoodbyeAndClose
    }

    /// The phase timer fired.
    mutating func phaseTimerFired() -> PhaseAction {
        guard let phase = self.phase else { return .none }
        self.phase = nil
        switch phase {
        case .hello:
            switch self.helloTimedOut() {
            case .none: return .none
            case .fail(let violation): return .fail(violation)
            case .close: return .close
            }
        case .drain(goingAway: true):
            guard self.state != .closed else { return .none }
            return .fail(self.failed(ProtocolViolation(.goingAway, "server shutting down")))
        case .drain(goingAway: false):
            self.state = .closed
            return .close
        case .answerGoodbye:
            guard self.goodbyeOwed else { return .none }
            self.goodbyeOwed = false
            self.owedResponses.removeAll()
            _ = self.sendGoodbye()
            self.state = .closed
            return .sendGoodbyeAndClose
        case .linger:
            return .close
        }
    }

    /// The session must end with ERROR `violation`: nothing more goes out but the ERROR.
    mutating func failed(_ violation: ProtocolViolation) -> ProtocolViolation {
        self.state = .closed
        self.goodbyeOwed = false
        self.record(MessagingError(.protocolViolation, violation.reason, errorCode: violation.code))
        return violation
    }

    /// Our ERROR is out; returns when to stop reading and close (the linger's end).
    mutating func errorSent(now: NIODeadline) -> NIODeadline {
        self.state = .closed
        self.phase = .linger
        // Read (and discard) during the linger even if the rate limit had paused reading.
        self.rateLimiter = nil
        return now + self.configuration.errorLinger
    }

    /// The application (or a server shutting down) asks for a graceful close.
    enum CloseAction: Equatable {
        case none
        /// Before open: close now (after ERROR GOING_AWAY when set).
        case closeNow(ProtocolViolation?)
        /// Send GOODBYE and wait for the peer's until `drainDeadline` (phase timer).
        case sendGoodbye(drainDeadline: NIODeadline)
        /// Send GOODBYE and close: the peer's came already.
        case sendGoodbyeAndClose
    }

    mutating func closeRequested(goingAway: Bool, now: NIODeadline) -> CloseAction {
        switch self.state {
        case .idle, .awaitingHello:
            self.phase = nil
            if goingAway {
                return .closeNow(self.failed(ProtocolViolation(.goingAway, "server shutting down")))
            }
            self.state = .closed
            return .closeNow(nil)
        case .closed:
            return .none
        case .open, .draining:
            break
        }
        self.closeRequestedLocally = true
        let (send, complete) = self.sendGoodbye()
        guard send else {
            // Answering the peer's GOODBYE waits for the RESPONSEs we owe.
            return .none
        }
        self.goodbyeOwed = false
        if complete {
            self.phase = nil
            return .sendGoodbyeAndClose
        }
        self.phase = .drain(goingAway: goingAway)
        return .sendGoodbye(drainDeadline: now + self.configuration.drainTimeout)
    }

    /// The application sends ERROR `code` and closes.
    mutating func failRequested(code: ErrorCode, reason: String) -> ProtocolViolation? {
        guard self.state != .closed else { return nil }
        return self.failed(ProtocolViolation(code, reason))
    }

    /// A transport failure (TLS alert, reset, truncation) ended the connection.
    mutating func transportFailed(_ description: String, cleanIfClosed: Bool, tls: TLSError? = nil) {
        if !(cleanIfClosed && self.state == .closed) {
            self.record(MessagingError(.connectionClosed, description, tlsError: tls))
        }
        self.state = .closed
    }

    /// What the handler settles when the connection has closed.
    struct Ended {
        /// Why the connection ended, for the session's close reason: nil after a clean end.
        var closeReason: MessagingError?
        /// The error for everything still waiting (requests, parked sends).
        var failure: MessagingError
        var pendingRequests: [UInt64: EventLoopPromise<Message>]
        var parked: CircularBuffer<OutboundMessage>
    }

    /// The connection closed.
    mutating func connectionEnded() -> Ended {
        let wasPastHello = self.state != .idle && self.state != .awaitingHello
        self.state = .closed
        self.phase = nil
        let failure =
            self.failure
            ?? MessagingError(.connectionClosed, wasPastHello ? "the connection closed" : "closed before HELLO")
        // A connection that ended without GOODBYE (and without our asking) did not end cleanly.
        let cleanEnd = self.goodbyeExchanged || self.closeRequestedLocally
        let ended = Ended(
            closeReason: self.failure ?? (cleanEnd ? nil : failure),
            failure: failure,
            pendingRequests: self.pendingRequests,
            parked: self.outbound.removeAllParked()
        )
        self.pendingRequests.removeAll()
        self.requestIDs.removeAll()
        return ended
    }

    /// Keeps the first reason the session ended for.
    mutating func record(_ error: MessagingError) {
        if self.failure == nil {
            self.failure = error
        }
    }

    /// We send an ERROR (or the connection ended): nothing more goes out.
    mutating func close() {
        self.state = .closed
    }
}

extension SessionStateMachine.Configuration {
    /// The machine's configuration for a session configured with `session`.
    init(
        role: SessionStateMachine.Role,
        hello: Hello,
        session: SessionConfiguration,
        requireCertificateIdentity: Bool = false,
        rejection: ProtocolViolation? = nil
    ) {
        self.init(
            role: role,
            hello: hello,
            heartbeatInterval: TimeAmount(session.heartbeatInterval),
            maxFrame: session.maxFrame,
            requiredIdentity: nil,
            requireCertificateIdentity: requireCertificateIdentity,
            rejection: rejection,
            helloTimeout: TimeAmount(session.helloTimeout),
            drainTimeout: TimeAmount(session.drainTimeout),
            rateLimit: session.flowControl.rateLimit,
            offerLimit: session.flowControl.writeBufferHighWatermark,
            slowConsumerTimeout: TimeAmount(session.flowControl.slowConsumerTimeout)
        )
    }
}
