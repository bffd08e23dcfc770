import NIOCore

extension SessionStateMachine {
    enum SendRefusal: Error, Equatable {
        case notOpen
        case closing
        case tooLarge(limit: Int)
        case topicTooLong
        case noSuchRequest
        /// Headers on a session where the peer does not have the `headers` extension.
        case headersNotInForce
    }

    /// What to do with a message the application hands over.
    enum SendAction {
        /// Write it as DATA `id`, with `headers` (the message's, and the request's timeout)
        /// when the `headers` extension is in force.
        case write(OutboundMessage, id: UInt64, headers: MessageHeaders?)
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
        let headers: MessageHeaders?
        do {
            headers = try self.outboundHeaders(message, now: now())
        } catch {
            return .refuse(message, MessagingError(error))
        }
        let id: UInt64
        do {
            id = try self.prepareData(
                topicBytes: message.topic.utf8.count,
                bodyBytes: message.body.readableBytes + (headers.map { 2 + $0.blockBytes } ?? 0),
                flags: message.flags
            )
        } catch {
            return .refuse(message, self.failure ?? MessagingError(error))
        }
        if case .request(_, let response) = message.kind {
            self.pendingRequests[id] = response
            self.requestIDs[ObjectIdentifier(response.futureResult)] = id
        }
        return .write(message, id: id, headers: headers)
    }

    /// The header block `message` goes out with: nil without the `headers` extension (where
    /// headers of the application's are refused) or when there is nothing to carry. A REQUEST
    /// carries the time left until its deadline as `smsg-timeout-ms`.
    @inline(__always)
    func outboundHeaders(
        _ message: OutboundMessage,
        now: @autoclosure () -> NIODeadline
    ) throws(SendRefusal) -> MessageHeaders? {
        guard self.extensions.contains(.headers) else {
            guard message.headers.isEmpty else { throw .headersNotInForce }
            return nil
        }
        guard case .request(let deadline, _) = message.kind else {
            return message.headers.isEmpty ? nil : message.headers
        }
        var headers = message.headers
        let left = (deadline - now()).nanoseconds
        // Whole milliseconds, rounded up so that a little time left is never sent as 0.
        let milliseconds = min(max(1, (left + 999_999) / 1_000_000), Int64(Int32.max))
        headers[MessageHeaders.timeoutName] = String(milliseconds)
        return headers
    }

    /// The next parked send, once sending is allowed again (call until nil).
    mutating func unpark(now: @autoclosure () -> NIODeadline) -> SendAction? {
        guard self.isOpen, let message = self.outbound.unpark() else { return nil }
        return self.number(message, now: now())
    }

    /// What giving up a message's wait comes to.
    enum Abandoned {
        /// It is settled already (answered, written, or the connection ended).
        case notWaiting
        /// It was still parked: taken out, never sent; fail its waiter.
        case parked(OutboundMessage)
        /// The REQUEST `id` was sent: fail its waiter, and send CANCEL when `sendCancel`.
        case sent(id: UInt64, response: EventLoopPromise<Message>, sendCancel: Bool)
    }

    /// The caller waiting on `waiter` gives up (its deadline passed, or its task was
    /// cancelled): a parked message is dropped; a REQUEST already sent stops waiting, and the
    /// peer is told with CANCEL where the `cancel` extension is in force.
    mutating func abandon(waiter: ObjectIdentifier) -> Abandoned {
        if let id = self.requestIDs.removeValue(forKey: waiter),
            let response = self.pendingRequests.removeValue(forKey: id)
        {
            let sendCancel = self.extensions.contains(.cancel) && self.state != .closed
            return .sent(id: id, response: response, sendCancel: sendCancel)
        }
        if let message = self.outbound.removeParked(waiter: waiter) {
            return .parked(message)
        }
        return .notWaiting
    }

    /// The body and flags of a RESPONSE saying `failure`: FAILED with the code and message
    /// where the `status` extension is in force, else an empty body (PROTOCOL.md "`status`").
    func failedResponse(_ failure: RequestError) -> (body: ByteBuffer, flags: DataFlags) {
        guard self.extensions.contains(.status) else { return (ByteBuffer(), .response) }
        return (failure.body(), [.response, .failed])
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
