import NIOCore

/// The smsg/1 protocol of one connection, with no channel: frames and events in, actions out.
///
/// Covers the HELLO exchange and its checks, the sequence rules, DATA numbering, ACK, PING
/// and PONG, REQUEST/RESPONSE bookkeeping, GOODBYE and ERROR. Time comes in as arguments, so
/// heartbeats and timeouts are tested without waiting. The ``SessionHandler`` carries out the
/// actions.
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

    enum InboundAction: Equatable {
        case none
        /// Server: the client's HELLO is good; answer with ours. Client: the server's HELLO
        /// came; the session is open.
        case opened(peer: Hello, reply: Hello?)
        /// Hand a message to the application (send ACK after, if it asked for one).
        case deliver(Message)
        /// A RESPONSE: complete the request waiting for it, if any.
        case response(Message)
        case sendPong(id: UInt64)
        case pong(id: UInt64)
        case ack(id: UInt64)
        case flow(FlowSignal)
        /// Send ERROR to the peer and close.
        case fail(ProtocolViolation)
        /// The peer sent ERROR: close.
        case peerFailed(ErrorCode, String)
        /// The peer said GOODBYE and we had not: answer with GOODBYE (once owed RESPONSEs are
        /// sent) and close.
        case goodbyeReceived
        /// Both sides said GOODBYE: close.
        case goodbyeComplete
    }

    enum SendRefusal: Error, Equatable {
        case notOpen
        case closing
        case tooLarge(limit: Int)
        case topicTooLong
        case noSuchRequest
    }

    private(set) var configuration: Configuration
    private(set) var state: State = .idle
    private(set) var peerHello: Hello?
    private var nextSequence: UInt64 = 1
    private var lastPeerSequence: UInt64 = 0
    /// REQUEST ids received and not yet answered.
    private(set) var owedResponses: Set<UInt64> = []
    private var pingCounter: UInt64 = 0

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    // MARK: - Lifecycle

    /// The transport is ready (TCP accepted or connected; TLS handshake complete). Returns the
    /// HELLO a client sends now.
    mutating func transportReady() -> Hello? {
        guard self.state == .idle else { return nil }
        self.state = .awaitingHello
        return self.configuration.role == .client ? self.configuration.hello : nil
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
            self.state = .closed
            switch self.configuration.role {
            case .server: return .fail(ProtocolViolation(.timeout, "no HELLO within the hello timeout"))
            case .client: return .close
            }
        default:
            return .none
        }
    }

    /// Checks the place in the sequence of a frame whose payload is still arriving, so that a
    /// peer cannot make us buffer a whole frame that is already out of order.
    func checkPendingHeader(_ header: FrameHeader) -> ProtocolViolation? {
        switch self.state {
        case .closed:
            return nil
        case .idle, .awaitingHello:
            let allowed = header.type == .hello || (self.configuration.role == .client && header.type == .error)
            return allowed ? nil : .protocolError("\(header.type) before the session is open")
        case .open, .draining:
            if header.type == .hello {
                return .protocolError("second HELLO")
            }
            guard header.type == .data, !DataFlags(rawValue: header.flags).contains(.response) else { return nil }
            if case .draining(_, receivedGoodbye: true) = self.state {
                return .protocolError("DATA after GOODBYE")
            }
            if header.id != self.lastPeerSequence &+ 1 {
                return .protocolError("DATA id \(header.id) out of sequence (expected \(self.lastPeerSequence &+ 1))")
            }
            return nil
        }
    }

    /// We send an ERROR (or the connection ended): nothing more goes out.
    mutating func close() {
        self.state = .closed
    }

    var isOpen: Bool { self.state == .open }

    /// The largest payload the peer accepts.
    var peerMaxFrame: Int {
        Frame.payloadLimit(announced: self.peerHello?.maxFrame)
    }

    /// The peer's heartbeat interval, or the protocol default when its HELLO has none.
    var peerHeartbeatInterval: TimeAmount {
        .milliseconds(Int64(self.peerHello?.heartbeatMilliseconds ?? 5000))
    }

    /// Silence longer than this means the peer is gone: 3 × the larger interval.
    var heartbeatTimeout: TimeAmount {
        let larger = max(self.configuration.heartbeatInterval.nanoseconds, self.peerHeartbeatInterval.nanoseconds)
        let (tripled, overflow) = larger.multipliedReportingOverflow(by: 3)
        return .nanoseconds(overflow ? .max : tripled)
    }

    // MARK: - Inbound

    mutating func receive(_ frame: Frame) -> InboundAction {
        switch self.state {
        case .closed:
            return .none
        case .idle, .awaitingHello:
            return self.receiveBeforeOpen(frame)
        case .open, .draining:
            return self.receiveWhenOpen(frame)
        }
    }

    private mutating func receiveBeforeOpen(_ frame: Frame) -> InboundAction {
        switch (self.configuration.role, frame.type) {
        case (_, .hello):
            return self.receiveHello(frame)
        case (.client, .error):
            return self.receiveError(frame)
        default:
            return self.violation("\(frame.type) before the session is open")
        }
    }

    private mutating func receiveHello(_ frame: Frame) -> InboundAction {
        let expectSessionID = self.configuration.role == .client
        let hello: Hello
        do {
            hello = try Hello.decode(frame.payload.readableBytesView, expectSessionID: expectSessionID)
        } catch {
            self.state = .closed
            return .fail(error)
        }
        if let required = self.configuration.requiredIdentity, hello.nodeID != required {
            self.state = .closed
            return .fail(ProtocolViolation(.unauthorized, "node_id does not match the client certificate"))
        }
        self.peerHello = hello
        self.state = .open
        let reply = self.configuration.role == .server ? self.configuration.hello : nil
        return .opened(peer: hello, reply: reply)
    }

    private mutating func receiveWhenOpen(_ frame: Frame) -> InboundAction {
        switch frame.type {
        case .data:
            return self.receiveData(frame)
        case .ack:
            return .ack(id: frame.id)
        case .ping:
            return .sendPong(id: frame.id)
        case .pong:
            return .pong(id: frame.id)
        case .flow:
            let signal = FlowSignal(rawValue: frame.payload.getInteger(at: frame.payload.readerIndex)!)!
            return .flow(signal)
        case .error:
            return self.receiveError(frame)
        case .goodbye:
            switch self.state {
            case .open:
                self.state = .draining(sentGoodbye: false, receivedGoodbye: true)
                return .goodbyeReceived
            case .draining(sentGoodbye: true, receivedGoodbye: false):
                self.state = .closed
                return .goodbyeComplete
            default:
                return self.violation("second GOODBYE")
            }
        case .hello:
            return self.violation("second HELLO")
        default:
            return self.violation("unexpected \(frame.type)")
        }
    }

    private mutating func receiveData(_ frame: Frame) -> InboundAction {
        let flags = DataFlags(rawValue: frame.flags)
        if flags.contains(.response) {
            return .response(Message(dataFrame: frame))
        }
        if case .draining(_, receivedGoodbye: true) = self.state {
            return self.violation("DATA after GOODBYE")
        }
        guard frame.id == self.lastPeerSequence &+ 1 else {
            return self.violation("DATA id \(frame.id) out of sequence (expected \(self.lastPeerSequence &+ 1))")
        }
        self.lastPeerSequence = frame.id
        if flags.contains(.request) {
            self.owedResponses.insert(frame.id)
        }
        return .deliver(Message(dataFrame: frame))
    }

    private mutating func receiveError(_ frame: Frame) -> InboundAction {
        self.state = .closed
        var payload = frame.payload
        let code = ErrorCode(rawValue: payload.readInteger(as: UInt16.self)!)
        let reason = payload.readString(length: payload.readableBytes) ?? ""
        return .peerFailed(code, reason)
    }

    private mutating func violation(_ reason: String) -> InboundAction {
        self.state = .closed
        return .fail(.protocolError(reason))
    }

    // MARK: - Outbound

    /// Numbers and frames an application message. RESPONSEs go through ``respond(to:)``.
    mutating func prepareData(topicBytes: Int, bodyBytes: Int, flags: DataFlags) throws(SendRefusal) -> UInt64 {
        switch self.state {
        case .open:
            break
        case .draining, .closed:
            throw .closing
        case .idle, .awaitingHello:
            throw .notOpen
        }
        guard topicBytes <= Message.maximumTopicBytes else { throw .topicTooLong }
        let limit = self.peerMaxFrame
        guard 1 + topicBytes + bodyBytes <= limit else { throw .tooLarge(limit: limit) }
        let id = self.nextSequence
        self.nextSequence += 1
        return id
    }

    /// Checks that a message of this size could be sent to the peer at all.
    func checkSendable(topicBytes: Int, bodyBytes: Int) throws(SendRefusal) {
        guard topicBytes <= Message.maximumTopicBytes else { throw .topicTooLong }
        let limit = self.peerMaxFrame
        guard 1 + topicBytes + bodyBytes <= limit else { throw .tooLarge(limit: limit) }
    }

    /// Checks a RESPONSE to `requestID` may be sent, and marks it sent.
    mutating func respond(to requestID: UInt64, topicBytes: Int, bodyBytes: Int) throws(SendRefusal) {
        switch self.state {
        case .open, .draining:
            break
        case .closed:
            throw .closing
        case .idle, .awaitingHello:
            throw .notOpen
        }
        guard self.owedResponses.contains(requestID) else { throw .noSuchRequest }
        guard topicBytes <= Message.maximumTopicBytes else { throw .topicTooLong }
        let limit = self.peerMaxFrame
        guard 1 + topicBytes + bodyBytes <= limit else { throw .tooLarge(limit: limit) }
        self.owedResponses.remove(requestID)
    }

    /// Whether a GOODBYE we owe can go now (no RESPONSE is still owed).
    var mayAnswerGoodbye: Bool {
        self.owedResponses.isEmpty
    }

    /// Starts (or answers) a graceful close. Returns whether GOODBYE should be sent now, and
    /// whether the session is then complete (both GOODBYEs exchanged).
    mutating func sendGoodbye() -> (send: Bool, complete: Bool) {
        switch self.state {
        case .open:
            self.state = .draining(sentGoodbye: true, receivedGoodbye: false)
            return (true, false)
        case .draining(sentGoodbye: false, receivedGoodbye: true):
            // The answer to the peer's GOODBYE waits for the RESPONSEs we owe.
            guard self.owedResponses.isEmpty else { return (false, false) }
            self.state = .closed
            return (true, true)
        default:
            return (false, false)
        }
    }

    /// The next PING id.
    mutating func nextPingID() -> UInt64 {
        self.pingCounter += 1
        return self.pingCounter
    }
}
