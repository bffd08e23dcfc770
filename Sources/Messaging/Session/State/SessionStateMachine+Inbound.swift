import NIOCore

extension SessionStateMachine {
    enum InboundAction: Equatable {
        case none
        /// Server: the client's HELLO is good; answer with ours. Client: the server's HELLO
        /// came; the session is open. Heartbeats start: arm the timer for ``nextHeartbeat``.
        case opened(peer: Hello, reply: Hello?)
        /// Hand a message to the application (send ACK after, if it asked for one).
        case deliver(Message)
        /// A RESPONSE: complete the request waiting for it (``takeRequest(id:)``), if any.
        case response(Message)
        case sendPong(id: UInt64)
        /// A PONG; its round trip (when it answers a PING we remember) is ``lastRoundTrip``.
        case pong(id: UInt64)
        case ack(id: UInt64)
        /// FLOW from the peer: parked sends may go on RESUME (``unpark()``).
        case flow(FlowSignal)
        /// Send ERROR to the peer and close.
        case fail(ProtocolViolation)
        /// The peer sent ERROR: close.
        case peerFailed(ErrorCode, String)
        /// The peer said GOODBYE and we had not: answer with GOODBYE once owed RESPONSEs are
        /// sent (``answerGoodbye(now:)``) and close.
        case goodbyeReceived
        /// Both sides said GOODBYE: close.
        case goodbyeComplete
        /// The peer gave up the REQUEST `id` it made (CANCEL): stop its work; no RESPONSE is owed.
        case requestCancelled(id: UInt64)
    }

    /// Checks the place in the sequence of a frame whose payload is still arriving, so that a
    /// peer cannot make us buffer a whole frame that is already out of order.
    /// The header of a frame still arriving came: the ERROR to send (the session is then closed)
    /// when it is out of place.
    mutating func pendingHeaderArrived(_ header: FrameHeader) -> ProtocolViolation? {
        self.checkPendingHeader(header).map { self.failed($0) }
    }

    /// The check itself, which changes nothing.
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

    /// The frame assembler refused the input.
    mutating func malformedInput(_ violation: ProtocolViolation) -> ProtocolViolation? {
        guard self.state != .closed else { return nil }
        return self.failed(violation)
    }

    /// A whole frame arrived at `now`.
    mutating func receive(_ frame: Frame, now: NIODeadline) -> InboundAction {
        switch self.state {
        case .closed:
            return .none
        case .idle, .awaitingHello:
            return self.receiveBeforeOpen(frame, now: now)
        case .open, .draining:
            return self.receiveWhenOpen(frame, now: now)
        }
    }

    private mutating func receiveBeforeOpen(_ frame: Frame, now: NIODeadline) -> InboundAction {
        switch (self.configuration.role, frame.type) {
        case (_, .hello):
            return self.receiveHello(frame, now: now)
        case (.client, .error):
            return self.receiveError(frame)
        default:
            return self.violation("\(frame.type) before the session is open")
        }
    }

    private mutating func receiveHello(_ frame: Frame, now: NIODeadline) -> InboundAction {
        let expectSessionID = self.configuration.role == .client
        let hello: Hello
        do {
            hello = try Hello.decode(frame.payload.readableBytesView, expectSessionID: expectSessionID)
        } catch {
            return .fail(self.failed(error))
        }
        if let required = self.configuration.requiredIdentity, hello.nodeID != required {
            let reason =
                required.isEmpty
                ? "no client certificate identity to check the node_id against"
                : "node_id does not match the client certificate"
            return .fail(self.failed(ProtocolViolation(.unauthorized, reason)))
        }
        self.peerHello = hello
        self.extensions = self.configuration.hello.supportedExtensions.intersection(hello.supportedExtensions)
        self.state = .open
        self.phase = nil
        self.nextHeartbeat = self.heartbeat.start(peerMilliseconds: hello.heartbeatMilliseconds, now: now)
        let reply = self.configuration.role == .server ? self.configuration.hello : nil
        return .opened(peer: hello, reply: reply)
    }

    private mutating func receiveWhenOpen(_ frame: Frame, now: NIODeadline) -> InboundAction {
        switch frame.type {
        case .data:
            return self.receiveData(frame, now: now)
        case .ack:
            return .ack(id: frame.id)
        case .ping:
            return .sendPong(id: frame.id)
        case .pong:
            _ = self.heartbeat.pong(id: frame.id, now: now)
            return .pong(id: frame.id)
        case .flow:
            let signal = FlowSignal(rawValue: frame.payload.getInteger(at: frame.payload.readerIndex)!)!
            self.outbound.peerFlow(signal)
            return .flow(signal)
        case .error:
            return self.receiveError(frame)
        case .goodbye:
            switch self.state {
            case .open:
                self.state = .draining(sentGoodbye: false, receivedGoodbye: true)
                self.goodbyeExchanged = true
                self.goodbyeOwed = true
                return .goodbyeReceived
            case .draining(sentGoodbye: true, receivedGoodbye: false):
                self.state = .closed
                self.goodbyeExchanged = true
                self.phase = nil
                return .goodbyeComplete
            default:
                return self.violation("second GOODBYE")
            }
        case .hello:
            return self.violation("second HELLO")
        case .cancel:
            // A CANCEL for a REQUEST we are not serving (answered already, never received) is ignored.
            guard self.owedResponses.remove(frame.id) != nil else { return .none }
            return .requestCancelled(id: frame.id)
        default:
            return self.violation("unexpected \(frame.type)")
        }
    }

    private mutating func receiveData(_ frame: Frame, now: NIODeadline) -> InboundAction {
        let flags = DataFlags(rawValue: frame.flags)
        if flags.contains(.response) {
            return .response(Message(dataFrame: frame, now: now))
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
        let message = Message(dataFrame: frame, now: now)
        if self.rateLimiter != nil {
            let over = self.rateLimiter!.take(messages: 1, bytes: InboundQueue.size(of: message), now: now)
            if over, self.rateLimiter!.overGrace(now: now) {
                return .fail(self.failed(ProtocolViolation(.overloaded, "rate limit exceeded")))
            }
        }
        return .deliver(message)
    }

    private mutating func receiveError(_ frame: Frame) -> InboundAction {
        self.state = .closed
        self.goodbyeOwed = false
        var payload = frame.payload
        let code = ErrorCode(rawValue: payload.readInteger(as: UInt16.self)!)
        let reason = payload.readString(length: payload.readableBytes) ?? ""
        self.record(MessagingError(.peerError, reason, errorCode: code))
        return .peerFailed(code, reason)
    }

    private mutating func violation(_ reason: String) -> InboundAction {
        .fail(self.failed(.protocolError(reason)))
    }

    /// The request waiting for the RESPONSE to `id`, taken off the list.
    mutating func takeRequest(id: UInt64) -> EventLoopPromise<Message>? {
        guard let promise = self.pendingRequests.removeValue(forKey: id) else { return nil }
        self.requestIDs[ObjectIdentifier(promise.futureResult)] = nil
        return promise
    }

    /// What the application's taking a message calls for.
    enum ConsumedAction: Equatable {
        case none
        /// Send these frames (ACK with its id, RESUME).
        case send(ack: UInt64?, resume: Bool)
    }

    /// The application took a message (`ackID` when it asked for an ACK); `resume` when taking it
    /// brought the inbound queue back under its low watermarks.
    func consumed(ackID: UInt64?, resume: Bool) -> ConsumedAction {
        guard self.state != .closed, ackID != nil || resume else { return .none }
        return .send(ack: ackID, resume: resume)
    }

    /// A message handed to a receiver on the event loop: the ACK to send, if it asked for one.
    func ackAfterDelivery(of message: Message) -> UInt64? {
        guard message.flags.contains(.ackRequested), !message.isResponse, self.state != .closed else { return nil }
        return message.id
    }

    enum QueuedAction: Equatable {
        case none
        /// Send FLOW SLOW_DOWN now.
        case sendSlowDown
        case fail(ProtocolViolation)
    }

    /// What a push onto the inbound queue calls for.
    mutating func queued(_ result: InboundWatermarks.PushResult) -> QueuedAction {
        switch result {
        case .queued:
            return .none
        case .slowDown:
            return .sendSlowDown
        case .overloaded:
            return .fail(self.failed(ProtocolViolation(.overloaded, "receive queue full")))
        }
    }
}
