import NIOCore

extension SessionStateMachine {
    enum SendRefusal: Error, Equatable {
        case notOpen
        case closing
        case tooLarge(limit: Int)
        case topicTooLong
        case noSuchRequest
    }

    /// What to do with a message the application hands over.
    enum SendAction {
        /// Write it as DATA `id` (and, for a REQUEST, arm its timer for `requestDeadline`).
        case write(OutboundMessage, id: UInt64, requestDeadline: NIODeadline?)
        /// Sending is blocked: it waits, parked, for ``unpark(now:)``.
        case parked
        /// It cannot be sent: fail its waiters with `error`.
        case refuse(OutboundMessage, MessagingError)
        /// Parking it would pass the broadcast bound: ERROR and close the slow consumer.
        case slowConsumer(OutboundMessage, ProtocolViolation)
    }

    /// The one check that a message fits the peer: topic at most 255 bytes, payload within the
    /// peer's max_frame.
    func checkSendable(topicBytes: Int, bodyBytes: Int) throws(SendRefusal) {
        try Self.checkSendable(topicBytes: topicBytes, bodyBytes: bodyBytes, peerMaxFrame: self.peerMaxFrame)
    }

    /// The check itself, for a peer whose max_frame is `peerMaxFrame`.
    static func checkSendable(topicBytes: Int, bodyBytes: Int, peerMaxFrame: Int) throws(SendRefusal) {
        guard topicBytes <= Message.maximumTopicBytes else { throw .topicTooLong }
        guard Self.fits(topicBytes: topicBytes, bodyBytes: bodyBytes, peerMaxFrame: peerMaxFrame) else {
            throw .tooLarge(limit: peerMaxFrame)
        }
    }

    /// The test itself: topic at most 255 bytes, DATA payload within the peer's max_frame.
    @inline(__always)
    static func fits(topicBytes: Int, bodyBytes: Int, peerMaxFrame: Int) -> Bool {
        topicBytes <= Message.maximumTopicBytes && 1 + topicBytes + bodyBytes <= peerMaxFrame
    }

    /// Numbers an application message. RESPONSEs go through ``respond(to:topicBytes:bodyBytes:)``.
    @inline(__always)
    mutating func prepareData(topicBytes: Int, bodyBytes: Int, flags: DataFlags) throws(SendRefusal) -> UInt64 {
        switch self.state {
        case .open:
            break
        case .draining, .closed:
            throw .closing
        case .idle, .awaitingHello:
            throw .notOpen
        }
        try self.checkSendable(topicBytes: topicBytes, bodyBytes: bodyBytes)
        let id = self.nextSequence
        self.nextSequence += 1
        return id
    }

    /// A plain DATA message may go now (open, nothing blocking, within the peer's limits):
    /// its id, or nil, and the message goes through ``send(_:now:)``, which parks or refuses it.
    @inline(__always)
    mutating func sendNow(topicBytes: Int, bodyBytes: Int) -> UInt64? {
        guard self.state == .open, !self.outbound.isBlocked,
            Self.fits(topicBytes: topicBytes, bodyBytes: bodyBytes, peerMaxFrame: self.peerMaxFrame)
        else { return nil }
        defer { self.nextSequence += 1 }
        return self.nextSequence
    }

    /// The application sends `message`. The time is asked for only when a REQUEST's deadline
    /// needs it (a clock read per message would cost the DATA path).
    @inline(__always)
    mutating func send(_ message: OutboundMessage, now: @autoclosure () -> NIODeadline) -> SendAction {
        if self.outbound.isBlocked {
            if self.isOpen {
                if case .offer = message.kind {
                    // A broadcast that can never be sent is refused before it takes room.
                    do {
                        try self.checkSendable(
                            topicBytes: message.topic.utf8.count,
                            bodyBytes: message.body.readableBytes
                        )
                    } catch {
                        return .refuse(message, MessagingError(error))
                    }
                }
                switch self.outbound.park(message) {
                case .parked:
                    return .parked
                case .refused:
                    return .refuse(message, MessagingError(.closing, "the peer cannot take more now"))
                case .slowConsumer:
                    return .slowConsumer(message, self.failed(ProtocolViolation(.overloaded, "slow consumer")))
                }
            }
            if case .send = message.kind {
                return .refuse(message, MessagingError(.closing, "the peer cannot take more now"))
            }
        }
        return self.number(message, now: now())
    }

    /// Gives `message` its DATA id, or refuses it.
    @inline(__always)
    private mutating func number(_ message: OutboundMessage, now: @autoclosure () -> NIODeadline) -> SendAction {
        let id: UInt64
        do {
            id = try self.prepareData(
                topicBytes: message.topic.utf8.count,
                bodyBytes: message.body.readableBytes,
                flags: message.flags
            )
        } catch {
            return .refuse(message, self.failure ?? MessagingError(error))
        }
        guard case .request(let timeout, let response) = message.kind else {
            return .write(message, id: id, requestDeadline: nil)
        }
        self.pendingRequests[id] = response
        return .write(message, id: id, requestDeadline: now() + timeout)
    }

    /// The next parked send, once sending is allowed again (call until nil).
    mutating func unpark(now: @autoclosure () -> NIODeadline) -> SendAction? {
        guard self.isOpen, let message = self.outbound.unpark() else { return nil }
        return self.number(message, now: now())
    }

    /// A REQUEST's timer fired: the request waiting, if it still is.
    mutating func requestTimedOut(id: UInt64) -> EventLoopPromise<Message>? {
        self.pendingRequests.removeValue(forKey: id)
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
        try self.checkSendable(topicBytes: topicBytes, bodyBytes: bodyBytes)
        self.owedResponses.remove(requestID)
    }

    /// Whether data sends are blocked now (the peer said SLOW_DOWN, the channel is full, or
    /// earlier sends wait).
    var isSendBlocked: Bool { self.outbound.isBlocked }

    /// The channel's writability changed.
    mutating func writabilityChanged(
        _ writable: Bool,
        now: NIODeadline
    ) -> OutboundFlowStateMachine.WritabilityAction {
        guard self.state != .closed || writable else { return .none }
        return self.outbound.writabilityChanged(writable, now: now)
    }

    /// The slow-consumer timer fired: the ERROR to send when the peer still takes nothing.
    mutating func slowConsumerTimerFired() -> ProtocolViolation? {
        guard self.outbound.slowConsumerTimerFired(), self.state != .closed else { return nil }
        return self.failed(ProtocolViolation(.overloaded, "slow consumer"))
    }
}
