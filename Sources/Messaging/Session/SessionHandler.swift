import CoreMetrics
import Logging
import NIOCore
import SecureTransport
import Synchronization

/// Runs a ``SessionStateMachine`` on a channel: turns its actions into frames, timers,
/// deliveries to the application and closes.
///
/// Pipeline position: above the frame codec, which sits above the transport's handlers.
final class SessionHandler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    /// How long the sender of an ERROR keeps reading (and discarding) before it closes.
    static let errorLingerTime: TimeAmount = .seconds(1)

    private var machine: SessionStateMachine
    private let session: Session
    private let waitsForTLS: Bool
    private let rejection: ProtocolViolation?
    private let logger: Logger
    private let configuration: SessionConfiguration
    private var context: ChannelHandlerContext?

    private var heartbeatTimer: Scheduled<Void>?
    private var phaseTimer: Scheduled<Void>?
    private var lastReceived = NIODeadline.now()
    private var lastSent = NIODeadline.now()
    private var pendingRequests: [UInt64: PendingRequest] = [:]
    private var goodbyeOwed = false
    /// A GOODBYE came from the peer, or we sent ours and it answered.
    private var goodbyeExchanged = false
    /// The application asked to close (GOODBYE sent by us).
    private var closeRequestedLocally = false
    private var failureReported: MessagingError?

    private struct PendingRequest {
        var promise: EventLoopPromise<Message>
        var timer: Scheduled<Void>?
    }

    /// A send that waits for the channel to become writable or the peer to say RESUME.
    private enum ParkedSend {
        case data(
            topic: String,
            body: ByteBuffer,
            flags: DataFlags,
            promise: EventLoopPromise<Void>?,
            onID: (@Sendable (UInt64) -> Void)?
        )
        case request(topic: String, body: ByteBuffer, timeout: TimeAmount, promise: EventLoopPromise<Message>)
    }

    private var parkedSends = CircularBuffer<ParkedSend>()
    /// Payload bytes of parked broadcast messages (bounded by the write-buffer high watermark).
    private var parkedOfferBytes = 0
    /// The peer sent FLOW SLOW_DOWN and no RESUME since.
    private var peerSaidSlowDown = false
    private var slowConsumerTimer: Scheduled<Void>?
    private var rateLimiter: RateLimiter?
    private var readHeld = false
    private var sampledOutboundBytes = 0
    private var rateLimitTimer: Scheduled<Void>?

    init(
        role: SessionStateMachine.Role,
        hello: Hello,
        configuration: SessionConfiguration,
        session: Session,
        waitsForTLS: Bool,
        requireCertificateIdentity: Bool = false,
        rejection: ProtocolViolation? = nil,
        metrics: MessagingMetrics? = nil,
        logger: Logger
    ) {
        self.metrics = metrics
        self.machine = SessionStateMachine(
            configuration: .init(
                role: role,
                hello: hello,
                heartbeatInterval: configuration.heartbeatInterval,
                maxFrame: configuration.maxFrame,
                requiredIdentity: nil
            )
        )
        self.requireCertificateIdentity = requireCertificateIdentity
        self.session = session
        self.rateLimiter = configuration.flowControl.rateLimit.map { RateLimiter($0, now: .now()) }
        self.waitsForTLS = waitsForTLS
        self.rejection = rejection
        self.logger = logger
        self.configuration = configuration
    }

    private let requireCertificateIdentity: Bool
    private let metrics: MessagingMetrics?

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive, !self.waitsForTLS {
            self.transportReady(context: context, peerCertificate: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.context = nil
        // A channel that never became active (a failed connect) gets no channelInactive: end
        // the session here too. Ending twice changes nothing.
        self.session.connectionEnded(
            failure: self.failureReported ?? MessagingError(.connectionClosed, "the connection closed")
        )
        // The session and this handler refer to each other; the pipeline is done with us.
        self.session.detach()
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.waitsForTLS {
            self.transportReady(context: context, peerCertificate: nil)
        }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case let header as FrameHeader:
            self.lastReceived = .now()
            if let violation = self.machine.checkPendingHeader(header) {
                self.sendErrorAndClose(context: context, violation)
            }
            return
        case let event as TLSHandshakeCompleted:
            self.transportReady(context: context, peerCertificate: event.info.peerCertificate)
        default:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        self.lastReceived = .now()
        self.session.lastSeen.store(self.lastReceived.uptimeNanoseconds, ordering: .relaxed)
        if let metrics = self.metrics {
            metrics.framesReceived.increment()
            metrics.bytesReceived.increment(by: Frame.headerSize + frame.length)
        }
        switch self.machine.receive(frame) {
        case .none:
            break
        case .opened(let peer, let reply):
            self.opened(context: context, peer: peer, reply: reply)
        case .deliver(let message):
            self.deliver(message, context: context)
        case .response(let message):
            if var pending = self.pendingRequests.removeValue(forKey: message.id) {
                pending.timer?.cancel()
                pending.timer = nil
                pending.promise.succeed(message)
            }
        case .sendPong(let id):
            if frame.payload.readableBytes > 0 {
                self.session.recordPeerStatus(frame.payload)
            }
            self.write(context: context, Frame(type: .pong, id: id), flush: true)
        case .pong(let id):
            self.session.recordPong(id: id)
        case .ack(let id):
            self.session.recordAck(id: id)
        case .flow(let signal):
            self.session.recordFlow(signal)
            self.peerSaidSlowDown = signal == .slowDown
            self.updateSendBlocked(context: context)
        case .fail(let violation):
            self.sendErrorAndClose(context: context, violation)
        case .peerFailed(let code, let reason):
            self.logger.debug("peer sent ERROR", metadata: ["code": "\(code)", "reason": "\(reason)"])
            self.recordFailure(MessagingError(.peerError, reason, errorCode: code))
            context.close(promise: nil)
        case .goodbyeReceived:
            self.goodbyeExchanged = true
            self.session.markDraining()
            self.session.inbound.finish()
            self.goodbyeOwed = true
            self.answerGoodbyeIfReady(context: context)
            if self.goodbyeOwed {
                self.startPhaseTimer(context: context, after: self.configuration.drainTimeout) { handler, context in
                    handler.goodbyeOwed = false
                    _ = handler.machine.sendGoodbye()
                    handler.write(context: context, Frame(type: .goodbye), flush: true)
                    context.close(promise: nil)
                }
            }
        case .goodbyeComplete:
            self.goodbyeExchanged = true
            self.phaseTimer?.cancel()
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.machine.state == .closed, error is ProtocolViolation || error is ByteToMessageDecoderError {
            // An ERROR is already out; the decoder keeps complaining about the input we now
            // read and discard until the linger ends.
            return
        }
        switch error {
        case let violation as ProtocolViolation:
            self.sendErrorAndClose(context: context, violation)
        case let error as TLSError:
            self.logger.debug("TLS failure", metadata: ["error": "\(error)"])
            if self.machine.state == .idle {
                self.metrics?.handshakeFailures.increment()
            }
            if error.code != .truncatedConnection || self.machine.state != .closed {
                self.recordFailure(MessagingError(.connectionClosed, "\(error)"))
            }
            context.close(promise: nil)
        default:
            self.logger.debug("channel error", metadata: ["error": "\(error)"])
            self.recordFailure(MessagingError(.connectionClosed, "\(error)"))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.sampleOutbound(context: context, closing: true)
        let wasOpenOrClosing = self.machine.state != .idle && self.machine.state != .awaitingHello
        self.machine.close()
        let failure =
            self.failureReported
            ?? MessagingError(.connectionClosed, wasOpenOrClosing ? "the connection closed" : "closed before HELLO")
        for (_, pending) in self.pendingRequests {
            pending.timer?.cancel()
            pending.promise.fail(failure)
        }
        self.pendingRequests.removeAll()
        while let parked = self.parkedSends.popFirst() {
            switch parked {
            case .data(_, _, _, let promise, _): promise?.fail(failure)
            case .request(_, _, _, let promise): promise.fail(failure)
            }
        }
        self.session.sendBlocked.store(true, ordering: .relaxed)
        // A connection that ended without GOODBYE (and without our asking) did not end cleanly.
        let cleanEnd = self.goodbyeExchanged || self.closeRequestedLocally
        self.session.connectionEnded(failure: self.failureReported ?? (cleanEnd ? nil : failure))
        context.fireChannelInactive()
    }

    // MARK: - Lifecycle

    private func transportReady(context: ChannelHandlerContext, peerCertificate: PeerCertificate?) {
        guard self.machine.state == .idle else { return }
        self.session.transportReady(peerCertificate: peerCertificate)
        if self.requireCertificateIdentity {
            self.machine.requireIdentity(peerCertificate?.identity ?? "")
        }
        if let rejection = self.rejection {
            self.machine.close()
            self.sendErrorAndClose(context: context, rejection)
            return
        }
        if let hello = self.machine.transportReady() {
            self.write(context: context, Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded())), flush: true)
        }
        self.startPhaseTimer(context: context, after: self.configuration.helloTimeout) { handler, context in
            switch handler.machine.helloTimedOut() {
            case .none:
                break
            case .fail(let violation):
                handler.sendErrorAndClose(context: context, violation)
            case .close:
                handler.recordFailure(MessagingError(.connectFailed, "no HELLO from the server in time"))
                context.close(promise: nil)
            }
        }
    }

    private func opened(context: ChannelHandlerContext, peer: Hello, reply: Hello?) {
        self.phaseTimer?.cancel()
        self.phaseTimer = nil
        if let reply {
            self.write(context: context, Frame(type: .hello, payload: ByteBuffer(bytes: reply.encoded())), flush: true)
        }
        self.session.opened(peer: peer)
        self.scheduleHeartbeat(context: context, in: self.configuration.heartbeatInterval)
    }

    private func scheduleHeartbeat(context: ChannelHandlerContext, in delay: TimeAmount) {
        self.heartbeatTimer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.heartbeatTimer = nil
            self.heartbeat(context: context)
        }
    }

    /// Publishes this channel's unwritten bytes to the outbound gauge (as a change from the
    /// last sample).
    private func sampleOutbound(context: ChannelHandlerContext, closing: Bool = false) {
        guard let gauge = self.metrics?.outboundQueuedBytes else { return }
        let now = closing ? 0 : ((try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0)
        if now != self.sampledOutboundBytes {
            gauge.increment(by: Double(now - self.sampledOutboundBytes))
            self.sampledOutboundBytes = now
        }
    }

    private func heartbeat(context: ChannelHandlerContext) {
        guard self.machine.state != .closed else { return }
        self.sampleOutbound(context: context)
        let now = NIODeadline.now()
        let timeout = self.machine.heartbeatTimeout
        if now - self.lastReceived >= timeout {
            self.machine.close()
            self.sendErrorAndClose(
                context: context,
                ProtocolViolation(.timeout, "no traffic within the heartbeat timeout")
            )
            return
        }
        let interval = self.configuration.heartbeatInterval
        if now - self.lastSent >= interval {
            let id = self.machine.nextPingID()
            self.session.recordPingSent(id: id)
            self.write(context: context, Frame(type: .ping, id: id, payload: self.session.pingStatus()), flush: true)
        }
        let nextPing = self.lastSent + interval
        let deadline = self.lastReceived + timeout
        let next = min(nextPing, deadline)
        self.scheduleHeartbeat(context: context, in: max(next - NIODeadline.now(), .milliseconds(1)))
    }

    private func startPhaseTimer(
        context: ChannelHandlerContext,
        after delay: TimeAmount,
        _ body: @escaping (SessionHandler, ChannelHandlerContext) -> Void
    ) {
        self.phaseTimer?.cancel()
        self.phaseTimer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.phaseTimer = nil
            body(self, context)
        }
    }

    private func cancelTimers() {
        self.heartbeatTimer?.cancel()
        self.heartbeatTimer = nil
        self.phaseTimer?.cancel()
        self.phaseTimer = nil
        self.slowConsumerTimer?.cancel()
        self.slowConsumerTimer = nil
        self.rateLimitTimer?.cancel()
        self.rateLimitTimer = nil
    }

    private func recordFailure(_ error: MessagingError) {
        if self.failureReported == nil {
            self.failureReported = error
        }
    }

    /// Sends ERROR, shuts down our write side, discards input for up to a second, closes.
    private func sendErrorAndClose(
        context: ChannelHandlerContext,
        _ violation: ProtocolViolation
    ) {
        self.machine.close()
        self.logger.debug(
            "sending ERROR",
            metadata: ["code": "\(violation.code)", "reason": "\(violation.reason)"]
        )
        self.recordFailure(MessagingError(.protocolViolation, violation.reason, errorCode: violation.code))
        if [.protocolError, .frameTooLarge, .unsupportedVersion].contains(violation.code) {
            self.metrics?.protocolErrors.increment()
        }
        self.session.inbound.finish(error: self.failureReported)
        var payload = context.channel.allocator.buffer(capacity: 2 + violation.reason.utf8.count)
        payload.writeInteger(violation.code.rawValue)
        payload.writeString(String(violation.reason.utf8.prefix(Frame.maximumErrorReason)) ?? "error")
        self.write(context: context, Frame(type: .error, payload: payload), flush: true)
        context.close(mode: .output, promise: nil)
        self.cancelTimers()
        // Read (and discard) during the linger even if a rate limit had paused reading.
        self.rateLimiter = nil
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
        self.phaseTimer = context.eventLoop.assumeIsolated().scheduleTask(in: Self.errorLingerTime) {
            context.close(promise: nil)
        }
    }

    // MARK: - Writes from the application (on the event loop)

    private func write(
        context: ChannelHandlerContext,
        _ frame: Frame,
        flush: Bool,
        promise: EventLoopPromise<Void>? = nil
    ) {
        var frame = frame
        frame.timestamp = WallClock.nowMicroseconds()
        if let metrics = self.metrics {
            metrics.framesSent.increment()
            metrics.bytesSent.increment(by: Frame.headerSize + frame.length)
        }
        context.write(Self.wrapOutboundOut(frame), promise: promise)
        if flush {
            context.flush()
        }
        self.lastSent = .now()
    }

    /// A broadcast's send: written now if possible, else parked within the session's bound;
    /// a session whose parked messages would pass the bound is a slow consumer and is closed
    /// with OVERLOADED. Nothing is dropped silently.
    func offer(topic: String, body: ByteBuffer) {
        guard let context = self.context, self.machine.isOpen else { return }
        guard self.isSendBlocked(context: context) else {
            _ = self.writeData(context: context, topic: topic, body: body, flags: [], promise: nil, onID: nil)
            return
        }
        let size = 1 + topic.utf8.count + body.readableBytes
        if self.parkedOfferBytes + size > self.configuration.flowControl.writeBufferHighWatermark {
            self.metrics?.slowConsumers.increment()
            self.logger.info("closing a slow consumer: its broadcast backlog passed the bound")
            self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "slow consumer"))
            return
        }
        self.metrics?.backpressureEvents.increment()
        self.parkedOfferBytes += size
        self.parkedSends.append(.data(topic: topic, body: body, flags: [], promise: nil, onID: nil))
        self.session.sendBlocked.store(true, ordering: .relaxed)
    }

    func sendData(
        topic: String,
        body: ByteBuffer,
        flags: DataFlags,
        mayWait: Bool,
        promise: EventLoopPromise<Void>?,
        onID: (@Sendable (UInt64) -> Void)? = nil
    ) -> UInt64? {
        guard let context = self.context else {
            promise?.fail(MessagingError(.connectionClosed, "the connection closed"))
            return nil
        }
        if self.isSendBlocked(context: context) {
            self.metrics?.backpressureEvents.increment()
            if mayWait, self.machine.isOpen {
                self.parkedSends.append(.data(topic: topic, body: body, flags: flags, promise: promise, onID: onID))
            } else {
                promise?.fail(MessagingError(.closing, "the peer cannot take more now"))
            }
            return nil
        }
        return self.writeData(context: context, topic: topic, body: body, flags: flags, promise: promise, onID: onID)
    }

    /// Numbers and writes a DATA frame; the caller has checked that sending is not blocked.
    private func writeData(
        context: ChannelHandlerContext,
        topic: String,
        body: ByteBuffer,
        flags: DataFlags,
        promise: EventLoopPromise<Void>?,
        onID: (@Sendable (UInt64) -> Void)?
    ) -> UInt64? {
        let id: UInt64
        do {
            id = try self.machine.prepareData(topicBytes: topic.utf8.count, bodyBytes: body.readableBytes, flags: flags)
        } catch {
            promise?.fail(self.failureReported ?? MessagingError(error))
            return nil
        }
        onID?(id)
        self.write(
            context: context,
            Self.dataFrame(topic: topic, body: body, flags: flags, id: id),
            flush: true,
            promise: promise
        )
        return id
    }

    func sendRequest(topic: String, body: ByteBuffer, timeout: TimeAmount, promise: EventLoopPromise<Message>) {
        guard let context = self.context else {
            promise.fail(MessagingError(.connectionClosed, "the connection closed"))
            return
        }
        if self.isSendBlocked(context: context), self.machine.isOpen {
            self.metrics?.backpressureEvents.increment()
            self.parkedSends.append(.request(topic: topic, body: body, timeout: timeout, promise: promise))
            return
        }
        self.writeRequest(context: context, topic: topic, body: body, timeout: timeout, promise: promise)
    }

    /// Numbers and writes a REQUEST and waits for its RESPONSE; the caller has checked that
    /// sending is not blocked.
    private func writeRequest(
        context: ChannelHandlerContext,
        topic: String,
        body: ByteBuffer,
        timeout: TimeAmount,
        promise: EventLoopPromise<Message>
    ) {
        let id: UInt64
        do {
            id = try self.machine.prepareData(
                topicBytes: topic.utf8.count,
                bodyBytes: body.readableBytes,
                flags: .request
            )
        } catch {
            promise.fail(self.failureReported ?? MessagingError(error))
            return
        }
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            if let pending = self.pendingRequests.removeValue(forKey: id) {
                pending.promise.fail(MessagingError(.requestTimedOut, "no response within \(timeout)"))
            }
        }
        self.pendingRequests[id] = PendingRequest(promise: promise, timer: timer)
        self.write(context: context, Self.dataFrame(topic: topic, body: body, flags: .request, id: id), flush: true)
    }

    func sendResponse(to requestID: UInt64, topic: String, body: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let context = self.context else {
            promise?.fail(MessagingError(.connectionClosed, "the connection closed"))
            return
        }
        do {
            try self.machine.respond(to: requestID, topicBytes: topic.utf8.count, bodyBytes: body.readableBytes)
        } catch {
            promise?.fail(self.failureReported ?? MessagingError(error))
            return
        }
        self.write(
            context: context,
            Self.dataFrame(topic: topic, body: body, flags: .response, id: requestID),
            flush: true,
            promise: promise
        )
        self.answerGoodbyeIfReady(context: context)
    }

    /// The application took a message: ACK it if asked, and send RESUME if the queue is back
    /// under its low watermarks.
    func consumed(ackID: UInt64?, resume: Bool) {
        guard let context = self.context, self.machine.state != .closed else { return }
        if let ackID {
            self.write(context: context, Frame(type: .ack, id: ackID), flush: !resume)
        }
        if resume {
            self.write(context: context, Self.flowFrame(.resume, allocator: context.channel.allocator), flush: true)
        }
    }

    // MARK: - Flow control

    private func deliver(_ message: Message, context: ChannelHandlerContext) {
        if var limiter = self.rateLimiter {
            let now = NIODeadline.now()
            let over = limiter.take(messages: 1, bytes: InboundQueue.size(of: message), now: now)
            self.rateLimiter = limiter
            if over {
                if limiter.overGrace(now: now) {
                    self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "rate limit exceeded"))
                    return
                }
                self.scheduleRateLimitRefill(context: context)
            }
        }
        switch self.session.inbound.push(message) {
        case .queued:
            break
        case .slowDown:
            self.metrics?.backpressureEvents.increment()
            self.write(context: context, Self.flowFrame(.slowDown, allocator: context.channel.allocator), flush: true)
        case .overloaded:
            self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "receive queue full"))
        }
    }

    private static func flowFrame(_ signal: FlowSignal, allocator: ByteBufferAllocator) -> Frame {
        var payload = allocator.buffer(capacity: 1)
        payload.writeInteger(signal.rawValue)
        return Frame(type: .flow, payload: payload)
    }

    private func isSendBlocked(context: ChannelHandlerContext) -> Bool {
        self.peerSaidSlowDown || !context.channel.isWritable || !self.parkedSends.isEmpty
    }

    /// Publishes whether sends are blocked, and sends what was parked once they are not.
    private func updateSendBlocked(context: ChannelHandlerContext) {
        // Parked sends go first, in order, while the channel takes them.
        while !self.parkedSends.isEmpty, !self.peerSaidSlowDown, context.channel.isWritable, self.machine.isOpen {
            switch self.parkedSends.removeFirst() {
            case .data(let topic, let body, let flags, let promise, let onID):
                if promise == nil, onID == nil {
                    self.parkedOfferBytes = max(0, self.parkedOfferBytes - (1 + topic.utf8.count + body.readableBytes))
                }
                _ = self.writeData(
                    context: context,
                    topic: topic,
                    body: body,
                    flags: flags,
                    promise: promise,
                    onID: onID
                )
            case .request(let topic, let body, let timeout, let promise):
                self.writeRequest(context: context, topic: topic, body: body, timeout: timeout, promise: promise)
            }
        }
        self.session.sendBlocked.store(self.isSendBlocked(context: context), ordering: .relaxed)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.sampleOutbound(context: context)
        if context.channel.isWritable {
            self.slowConsumerTimer?.cancel()
            self.slowConsumerTimer = nil
        } else if self.slowConsumerTimer == nil, self.machine.state != .closed {
            let timeout = self.configuration.flowControl.slowConsumerTimeout
            self.slowConsumerTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                self.slowConsumerTimer = nil
                guard !context.channel.isWritable else { return }
                self.metrics?.slowConsumers.increment()
                self.logger.info("closing a slow consumer")
                self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "slow consumer"))
            }
        }
        self.updateSendBlocked(context: context)
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Rate limit

    func read(context: ChannelHandlerContext) {
        if self.rateLimiter?.isThrottled == true {
            self.readHeld = true
        } else {
            context.read()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if var limiter = self.rateLimiter, !limiter.isThrottled {
            limiter.settled()
            self.rateLimiter = limiter
        }
        context.fireChannelReadComplete()
    }

    private func scheduleRateLimitRefill(context: ChannelHandlerContext) {
        guard self.rateLimitTimer == nil, let limiter = self.rateLimiter else { return }
        // Wake when the buckets are refilled, or when the grace period runs out if sooner.
        let delay = max(min(limiter.timeUntilRefilled(), limiter.graceRemaining(now: .now())), .milliseconds(1))
        self.rateLimitTimer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) {
            self.rateLimitTimer = nil
            guard var limiter = self.rateLimiter, self.machine.state != .closed else { return }
            let now = NIODeadline.now()
            limiter.refill(now: now)
            self.rateLimiter = limiter
            if limiter.isThrottled {
                if limiter.overGrace(now: now) {
                    self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "rate limit exceeded"))
                } else {
                    self.scheduleRateLimitRefill(context: context)
                }
            } else if self.readHeld {
                self.readHeld = false
                context.read()
            }
        }
    }

    /// Starts a graceful close: GOODBYE now, then close when the peer's GOODBYE arrives or
    /// after the drain timeout (with ERROR GOING_AWAY first when `goingAway` is set).
    func beginGoodbye(goingAway: Bool) {
        guard let context = self.context else { return }
        switch self.machine.state {
        case .idle, .awaitingHello:
            self.machine.close()
            if goingAway {
                self.sendErrorAndClose(context: context, ProtocolViolation(.goingAway, "server shutting down"))
            } else {
                context.close(promise: nil)
            }
            return
        case .closed:
            return
        case .open, .draining:
            break
        }
        self.closeRequestedLocally = true
        let (send, complete) = self.machine.sendGoodbye()
        guard send else {
            // Answering the peer's GOODBYE waits for the RESPONSEs we owe (answerGoodbyeIfReady).
            return
        }
        self.goodbyeOwed = false
        self.session.markDraining()
        self.write(context: context, Frame(type: .goodbye), flush: true)
        if complete {
            context.close(promise: nil)
            return
        }
        self.startPhaseTimer(context: context, after: self.configuration.drainTimeout) { handler, context in
            if goingAway {
                handler.sendErrorAndClose(
                    context: context,
                    ProtocolViolation(.goingAway, "server shutting down")
                )
            } else {
                handler.machine.close()
                context.close(promise: nil)
            }
        }
    }

    /// Sends a PING (with the session's status blob) now, outside the heartbeat schedule.
    func pingNow() {
        guard let context = self.context, self.machine.isOpen else { return }
        let id = self.machine.nextPingID()
        self.session.recordPingSent(id: id)
        self.write(context: context, Frame(type: .ping, id: id, payload: self.session.pingStatus()), flush: true)
    }

    /// Sends ERROR with `code` and closes (application-initiated, e.g. OVERLOADED, UNAUTHORIZED).
    func fail(code: ErrorCode, reason: String) {
        guard let context = self.context, self.machine.state != .closed else { return }
        self.sendErrorAndClose(context: context, ProtocolViolation(code, reason))
    }

    private func answerGoodbyeIfReady(context: ChannelHandlerContext) {
        guard self.goodbyeOwed, self.machine.mayAnswerGoodbye else { return }
        self.goodbyeOwed = false
        _ = self.machine.sendGoodbye()
        self.phaseTimer?.cancel()
        self.phaseTimer = nil
        self.write(context: context, Frame(type: .goodbye), flush: true)
        context.close(promise: nil)
    }

    private static func dataFrame(topic: String, body: ByteBuffer, flags: DataFlags, id: UInt64) -> Frame {
        var prefix = ByteBuffer()
        prefix.reserveCapacity(1 + topic.utf8.count)
        prefix.writeInteger(UInt8(topic.utf8.count))
        prefix.writeString(topic)
        return Frame(type: .data, flags: flags.rawValue, id: id, payload: prefix, body: body)
    }
}

@available(*, unavailable)
extension SessionHandler: Sendable {}
