import CoreMetrics
import Logging
import NIOCore
import SecureTransport
import Synchronization

/// Runs a ``SessionStateMachine`` on a channel: turns its actions into frames, timers,
/// deliveries to the application and closes.
///
/// Pipeline position: right above the transport's handlers. The handler decodes and encodes
/// frames itself (``FrameDecoder``/``FrameEncoder``): bytes in, bytes out, with no frame
/// crossing the pipeline. Frames written in one event-loop tick are encoded into one buffer
/// and flushed together at the end of the tick (or of the read burst in progress).
///
/// Its state lives on the event loop and is never accessed in overlapping ways, so its stored
/// properties opt out of Swift's dynamic exclusivity checks (`@exclusivity(unchecked)`): on the
/// DATA path those checks cost about 15 % of a small-message echo.
final class SessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The smallest buffer a burst of outbound frames is encoded into.
    static let batchCapacity = 4096

    /// How long the sender of an ERROR keeps reading (and discarding) before it closes.
    static let errorLingerTime: TimeAmount = .seconds(1)

    @exclusivity(unchecked) private var machine: SessionStateMachine
    private let session: Session
    private let waitsForTLS: Bool
    private let rejection: ProtocolViolation?
    @exclusivity(unchecked) private var logger: Logger
    private let configuration: SessionConfiguration
    @exclusivity(unchecked) private var context: ChannelHandlerContext?

    @exclusivity(unchecked) private var heartbeatTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var phaseTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var lastReceived = NIODeadline.now()
    @exclusivity(unchecked) private var lastSent = NIODeadline.now()
    @exclusivity(unchecked) private var pendingRequests: [UInt64: PendingRequest] = [:]
    @exclusivity(unchecked) private var goodbyeOwed = false
    /// A GOODBYE came from the peer, or we sent ours and it answered.
    @exclusivity(unchecked) private var goodbyeExchanged = false
    /// The application asked to close (GOODBYE sent by us).
    @exclusivity(unchecked) private var closeRequestedLocally = false
    @exclusivity(unchecked) private var failureReported: MessagingError?

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

    @exclusivity(unchecked) private var parkedSends = CircularBuffer<ParkedSend>(initialCapacity: 1)
    /// Payload bytes of parked broadcast messages (bounded by the write-buffer high watermark).
    @exclusivity(unchecked) private var parkedOfferBytes = 0
    /// The peer sent FLOW SLOW_DOWN and no RESUME since.
    @exclusivity(unchecked) private var peerSaidSlowDown = false
    @exclusivity(unchecked) private var slowConsumerTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var rateLimiter: RateLimiter?
    @exclusivity(unchecked) private var readHeld = false
    @exclusivity(unchecked) private var sampledOutboundBytes = 0
    @exclusivity(unchecked) private var rateLimitTimer: Scheduled<Void>?
    /// Takes messages on the event loop instead of the inbound queue, when set.
    @exclusivity(unchecked) private var receiver: (any MessageReceiver)?
    /// Frames were written and not flushed yet; a flush is due at the end of this tick.
    @exclusivity(unchecked) private var flushPending = false
    @exclusivity(unchecked) private var flushScheduled = false
    private let decoder: FrameDecoder
    /// The start of a frame whose rest has not arrived yet.
    @exclusivity(unchecked) private var inbound: ByteBuffer?
    /// Bytes read but not decoded because the rate limit ran out in the middle of a read:
    /// decoded once the buckets are refilled.
    @exclusivity(unchecked) private var heldInput: ByteBuffer?
    /// Frames written since the last flush, encoded.
    @exclusivity(unchecked) private var batch: ByteBuffer?
    @exclusivity(unchecked) private var batchPromise: EventLoopPromise<Void>?
    /// The timestamp written into the frames of the current batch.
    @exclusivity(unchecked) private var batchTimestamp: UInt64 = 0
    /// Cached from `channelWritabilityChanged`.
    @exclusivity(unchecked) private var writable = true
    /// Counts not yet published to the metrics (published once per read burst and flush).
    @exclusivity(unchecked) private var unpublishedFramesReceived = 0
    @exclusivity(unchecked) private var unpublishedBytesReceived = 0
    @exclusivity(unchecked) private var unpublishedFramesSent = 0
    @exclusivity(unchecked) private var unpublishedBytesSent = 0

    init(
        role: SessionStateMachine.Role,
        hello: Hello,
        configuration: SessionConfiguration,
        session: Session,
        waitsForTLS: Bool,
        requireCertificateIdentity: Bool = false,
        rejection: ProtocolViolation? = nil,
        metrics: MessagingMetrics? = nil,
        receiver: (any MessageReceiver)? = nil,
        logger: Logger
    ) {
        self.metrics = metrics
        self.receiver = receiver
        self.decoder = FrameDecoder(maxFrame: configuration.maxFrame)
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
            self.transportReady(context: context, tls: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.inbound = nil
        self.heldInput = nil
        self.batch = nil
        self.batchPromise?.fail(ChannelError.ioOnClosedChannel)
        self.batchPromise = nil
        self.context = nil
        // A channel that never became active (a failed connect) gets no channelInactive: end
        // the session here too. Ending twice changes nothing.
        self.session.connectionEnded(
            failure: self.failureReported ?? MessagingError(.connectionClosed, "the connection closed")
        )
        // The session and this handler refer to each other (and a receiver may keep a
        // LoopSession); the pipeline is done with us.
        self.session.detach()
        self.receiver = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.waitsForTLS {
            self.transportReady(context: context, tls: nil)
        }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSHandshakeCompleted {
            self.transportReady(context: context, tls: event.info)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = Self.unwrapInboundIn(data)
        guard self.machine.state != .closed else {
            // Closed (an ERROR is out, or the session ended): what still comes is discarded.
            self.inbound = nil
            return
        }
        self.lastReceived = .now()
        self.session.lastSeen.store(self.lastReceived.uptimeNanoseconds, ordering: .relaxed)
        if self.heldInput != nil {
            // The rate limit holds earlier bytes: these wait behind them.
            self.heldInput!.writeBuffer(&input)
            return
        }
        // First the frame an earlier read left incomplete, copying in only its missing bytes;
        // then whole frames straight from this read, without copying.
        guard self.completePartialFrame(from: &input, context: context) else { return }
        if self.heldInput != nil {
            // The frame just completed ran the rate limit out: the rest of this read waits.
            self.heldInput!.writeBuffer(&input)
            return
        }
        self.decodeFrames(from: &input, context: context)
    }

    /// Decodes what the rate limit held, now that it allows more.
    private func releaseHeldInput(context: ChannelHandlerContext) {
        guard var held = self.heldInput else { return }
        self.heldInput = nil
        self.decodeFrames(from: &held, context: context)
    }

    /// Completes (and handles) the frame an earlier read left incomplete, taking its missing
    /// bytes from the front of `input`. Returns false when `input` ran out first or the
    /// session closed.
    private func completePartialFrame(from input: inout ByteBuffer, context: ChannelHandlerContext) -> Bool {
        while var partial = self.inbound {
            self.inbound = nil
            let target: Int
            if partial.readableBytes < Frame.headerSize {
                target = Frame.headerSize
            } else {
                target = Frame.headerSize + Int(partial.getInteger(at: partial.readerIndex, as: UInt32.self)!)
            }
            let take = min(target - partial.readableBytes, input.readableBytes)
            if take > 0 {
                var piece = input.readSlice(length: take)!
                partial.writeBuffer(&piece)
            }
            if partial.readableBytes < target {
                self.inbound = partial
                return false
            }
            // The frame is whole (handled now), or its header is (checked, then kept waiting).
            self.decodeFrames(from: &partial, context: context)
            guard self.machine.state != .closed else {
                self.inbound = nil
                return false
            }
        }
        return true
    }

    /// Handles every whole frame in `buffer`; the start of an incomplete one is checked as far
    /// as it goes and kept in a buffer of its own, sized for the whole frame, so that the rest
    /// is copied in once and the storage of the frames before it (which their messages may
    /// still hold) is never copied.
    private func decodeFrames(from buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        while self.machine.state != .closed {
            let frame: Frame?
            do {
                frame = try self.decoder.decodeFrame(&buffer)
            } catch {
                self.sendErrorAndClose(context: context, error)
                return
            }
            guard let frame else {
                guard buffer.readableBytes > 0 else { return }
                var size = Frame.headerSize
                if let header = FrameDecoder.pendingHeader(buffer) {
                    if let violation = self.machine.checkPendingHeader(header) {
                        // A frame still arriving is already out of place: refuse it now.
                        self.sendErrorAndClose(context: context, violation)
                        return
                    }
                    size += header.length
                }
                var partial = context.channel.allocator.buffer(capacity: size)
                partial.writeBuffer(&buffer)
                self.inbound = partial
                return
            }
            self.unpublishedFramesReceived += 1
            self.unpublishedBytesReceived += Frame.headerSize + frame.length
            self.receive(frame, context: context)
            if self.rateLimiter?.isThrottled == true, buffer.readableBytes > 0, self.machine.state != .closed {
                // Over the rate limit: the rest of this read waits for the refill, so a large
                // read cannot carry a burst past the limit.
                var held = context.channel.allocator.buffer(capacity: buffer.readableBytes)
                held.writeBuffer(&buffer)
                self.heldInput = held
                return
            }
        }
    }

    private func receive(_ frame: Frame, context: ChannelHandlerContext) {
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
            // A PONG answers the peer's heartbeat and does not stand in for ours: when the peer's
            // interval is the shorter (or equal, and its timer fires first), this side would
            // otherwise never PING, and never measure the round trip.
            let sentBefore = self.lastSent
            self.write(context: context, Frame(type: .pong, id: id), flush: false)
            self.lastSent = sentBefore
            self.scheduleFlush(context: context)
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
        self.publishCounts()
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

    private func transportReady(context: ChannelHandlerContext, tls: TLSHandshakeInfo?) {
        guard self.machine.state == .idle else { return }
        self.session.transportReady(tls: tls)
        if self.requireCertificateIdentity {
            self.machine.requireIdentity(tls?.peerCertificate?.identity ?? "")
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
        // From now on every line about this session says which node it is.
        self.logger[metadataKey: "node_id"] = "\(peer.nodeID)"
        if let sessionID = peer.sessionID, self.logger[metadataKey: "session_id"] == nil {
            self.logger[metadataKey: "session_id"] = "\(sessionID)"
        }
        if self.logger[metadataKey: "remote"] == nil, let remote = context.channel.remoteAddress {
            self.logger[metadataKey: "remote"] = "\(remote)"
        }
        self.phaseTimer?.cancel()
        self.phaseTimer = nil
        if let reply {
            self.write(context: context, Frame(type: .hello, payload: ByteBuffer(bytes: reply.encoded())), flush: true)
        }
        self.session.opened(peer: peer)
        self.scheduleHeartbeat(context: context, in: self.configuration.heartbeatInterval)
        self.receiver?.sessionOpened(LoopSession(handler: self))
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

    /// Encodes a control frame (no DATA: those go through ``writeDataFrame``) into the batch;
    /// with `flush`, writes the batch out now.
    private func write(
        context: ChannelHandlerContext,
        _ frame: Frame,
        flush: Bool,
        promise: EventLoopPromise<Void>? = nil
    ) {
        var frame = frame
        let size = Frame.headerSize + frame.payload.readableBytes
        self.unpublishedFramesSent += 1
        self.unpublishedBytesSent += size
        self.startBatch(context: context, size: size)
        frame.timestamp = self.batchTimestamp
        FrameEncoder.writeHeader(of: frame, into: &self.batch!)
        self.batch!.writeImmutableBuffer(frame.payload)
        self.joinBatch(promise)
        if flush {
            self.flushNow(context: context)
        }
    }

    /// Completes `promise` when the batch is written.
    private func joinBatch(_ promise: EventLoopPromise<Void>?) {
        guard let promise else { return }
        if let combined = self.batchPromise {
            combined.futureResult.cascade(to: promise)
        } else {
            self.batchPromise = promise
        }
    }

    /// Makes sure a batch is open; a new one takes the time (its frames' timestamp, and when
    /// we last sent, for the heartbeat).
    @inline(__always)
    private func startBatch(context: ChannelHandlerContext, size: Int) {
        guard self.batch == nil else { return }
        self.batch = context.channel.allocator.buffer(capacity: max(size, Self.batchCapacity))
        self.batchTimestamp = WallClock.nowMicroseconds()
        self.lastSent = .now()
    }

    /// Encodes a DATA frame straight into the batch: header, topic length, topic, and the body
    /// (copied when small, else written after the batch as it is).
    private func writeDataFrame(
        context: ChannelHandlerContext,
        topic: String,
        body: ByteBuffer,
        flags: DataFlags,
        id: UInt64,
        promise: EventLoopPromise<Void>?
    ) {
        let topicBytes = topic.utf8.count
        let bodyBytes = body.readableBytes
        let length = 1 + topicBytes + bodyBytes
        self.unpublishedFramesSent += 1
        self.unpublishedBytesSent += Frame.headerSize + length
        let copyBody = bodyBytes < FrameEncoder.copyLimit
        self.startBatch(context: context, size: Frame.headerSize + 1 + topicBytes + (copyBody ? bodyBytes : 0))
        FrameEncoder.writeHeader(
            length: length,
            type: .data,
            flags: flags.rawValue,
            id: id,
            timestamp: self.batchTimestamp,
            into: &self.batch!
        )
        self.batch!.writeInteger(UInt8(topicBytes))
        self.batch!.writeString(topic)
        guard copyBody else {
            self.emitBatch(context: context)
            context.write(Self.wrapOutboundOut(body), promise: promise)
            return
        }
        self.batch!.writeImmutableBuffer(body)
        self.joinBatch(promise)
    }

    /// Hands the encoded batch to the layer below (not flushed).
    private func emitBatch(context: ChannelHandlerContext) {
        guard let batch = self.batch else { return }
        self.batch = nil
        let promise = self.batchPromise
        self.batchPromise = nil
        context.write(Self.wrapOutboundOut(batch), promise: promise)
    }

    private func flushNow(context: ChannelHandlerContext) {
        self.flushPending = false
        self.emitBatch(context: context)
        self.publishCounts()
        context.flush()
    }

    /// Adds the frames counted since the last time to the metrics.
    private func publishCounts() {
        guard let metrics = self.metrics else {
            return
        }
        if self.unpublishedFramesSent > 0 {
            metrics.framesSent.increment(by: self.unpublishedFramesSent)
            metrics.bytesSent.increment(by: self.unpublishedBytesSent)
            self.unpublishedFramesSent = 0
            self.unpublishedBytesSent = 0
        }
        if self.unpublishedFramesReceived > 0 {
            metrics.framesReceived.increment(by: self.unpublishedFramesReceived)
            metrics.bytesReceived.increment(by: self.unpublishedBytesReceived)
            self.unpublishedFramesReceived = 0
            self.unpublishedBytesReceived = 0
        }
    }

    /// A broadcast's send: written now if possible, else parked within the session's bound;
    /// a session whose parked messages would pass the bound is a slow consumer and is closed
    /// with OVERLOADED. Nothing is dropped silently.
    func offer(topic: String, body: ByteBuffer) {
        _ = self.offerNow(topic: topic, body: body)
    }

    var sessionHandle: Session { self.session }

    var isSendBlockedNow: Bool {
        guard let context = self.context else { return true }
        return self.isSendBlocked(context: context)
    }

    /// ``offer(topic:body:)`` for a ``LoopSession``: also checks what the peer can take, and
    /// says whether the message was taken.
    func offerNow(topic: String, body: ByteBuffer) -> Bool {
        guard let context = self.context, self.machine.isOpen else { return false }
        guard self.isSendBlocked(context: context) else {
            return self.writeData(context: context, topic: topic, body: body, flags: [], promise: nil, onID: nil) != nil
        }
        guard (try? self.machine.checkSendable(topicBytes: topic.utf8.count, bodyBytes: body.readableBytes)) != nil
        else { return false }
        let size = 1 + topic.utf8.count + body.readableBytes
        if self.parkedOfferBytes + size > self.configuration.flowControl.writeBufferHighWatermark {
            self.metrics?.slowConsumers.increment()
            self.logger.info("closing a slow consumer: its broadcast backlog passed the bound")
            self.sendErrorAndClose(context: context, ProtocolViolation(.overloaded, "slow consumer"))
            return false
        }
        self.metrics?.backpressureEvents.increment()
        self.parkedOfferBytes += size
        self.parkedSends.append(.data(topic: topic, body: body, flags: [], promise: nil, onID: nil))
        self.session.sendBlocked.store(true, ordering: .relaxed)
        return true
    }

    /// A RESPONSE from a ``LoopSession``; says whether it was written.
    func respondNow(to requestID: UInt64, topic: String, body: ByteBuffer) -> Bool {
        guard self.context != nil, self.machine.state != .closed else { return false }
        var written = true
        self.sendResponse(to: requestID, topic: topic, body: body, promise: nil) { written = false }
        return written
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
        self.writeDataFrame(context: context, topic: topic, body: body, flags: flags, id: id, promise: promise)
        self.scheduleFlush(context: context)
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
        self.writeDataFrame(context: context, topic: topic, body: body, flags: .request, id: id, promise: nil)
        self.scheduleFlush(context: context)
    }

    func sendResponse(
        to requestID: UInt64,
        topic: String,
        body: ByteBuffer,
        promise: EventLoopPromise<Void>?,
        onRefusal: () -> Void = {}
    ) {
        guard let context = self.context else {
            promise?.fail(MessagingError(.connectionClosed, "the connection closed"))
            onRefusal()
            return
        }
        do {
            try self.machine.respond(to: requestID, topicBytes: topic.utf8.count, bodyBytes: body.readableBytes)
        } catch {
            promise?.fail(self.failureReported ?? MessagingError(error))
            onRefusal()
            return
        }
        self.writeDataFrame(
            context: context,
            topic: topic,
            body: body,
            flags: .response,
            id: requestID,
            promise: promise
        )
        self.scheduleFlush(context: context)
        self.answerGoodbyeIfReady(context: context)
    }

    /// The application took a message: ACK it if asked, and send RESUME if the queue is back
    /// under its low watermarks.
    func consumed(ackID: UInt64?, resume: Bool) {
        guard let context = self.context, self.machine.state != .closed else { return }
        if let ackID {
            self.write(context: context, Frame(type: .ack, id: ackID), flush: false)
        }
        if resume {
            self.write(context: context, Self.flowFrame(.resume, allocator: context.channel.allocator), flush: false)
        }
        self.scheduleFlush(context: context)
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
        if let receiver = self.receiver {
            receiver.received(message, session: LoopSession(handler: self))
            if message.flags.contains(.ackRequested), !message.isResponse, self.machine.state != .closed {
                self.write(context: context, Frame(type: .ack, id: message.id), flush: false)
                self.scheduleFlush(context: context)
            }
            return
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
        self.peerSaidSlowDown || !self.writable || !self.parkedSends.isEmpty
    }

    /// Publishes whether sends are blocked, and sends what was parked once they are not.
    private func updateSendBlocked(context: ChannelHandlerContext) {
        // Parked sends go first, in order, while the channel takes them.
        while !self.parkedSends.isEmpty, !self.peerSaidSlowDown, self.writable, self.machine.isOpen {
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
        if self.readHeld, !self.shouldHoldReads(context: context) {
            self.readHeld = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.writable = context.channel.isWritable
        self.sampleOutbound(context: context)
        if self.writable {
            self.slowConsumerTimer?.cancel()
            self.slowConsumerTimer = nil
        } else if self.slowConsumerTimer == nil, self.machine.state != .closed {
            let timeout = self.configuration.flowControl.slowConsumerTimeout
            self.slowConsumerTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                self.slowConsumerTimer = nil
                guard !self.writable else { return }
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
        if self.shouldHoldReads(context: context) {
            self.readHeld = true
        } else {
            context.read()
        }
    }

    /// Reading pauses while the rate limit is exceeded, and, for a receiver (which answers on
    /// the event loop, with nothing queued in between), while the connection cannot take more
    /// output: a peer that does not read its answers stops being read.
    private func shouldHoldReads(context: ChannelHandlerContext) -> Bool {
        if self.rateLimiter?.isThrottled == true {
            return true
        }
        return self.receiver != nil && !self.writable && self.machine.state != .closed
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if var limiter = self.rateLimiter, !limiter.isThrottled {
            limiter.settled()
            self.rateLimiter = limiter
        }
        self.flushIfPending(context: context)
        self.publishCounts()
        context.fireChannelReadComplete()
    }

    // MARK: - Flushing

    /// Asks for the frames written so far to be flushed at the end of this event-loop tick
    /// (or at the end of the read burst in progress), so that a burst of frames leaves in one
    /// TLS write and one system call.
    private func scheduleFlush(context: ChannelHandlerContext) {
        self.flushPending = true
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            self.flushIfPending(context: context)
        }
    }

    private func flushIfPending(context: ChannelHandlerContext) {
        guard self.flushPending else { return }
        self.flushNow(context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Bytes from above (nothing sits above a session normally) go after the batch.
        self.emitBatch(context: context)
        context.write(data, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        self.flushNow(context: context)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Whatever was written before a close goes out before it.
        self.flushIfPending(context: context)
        context.close(mode: mode, promise: promise)
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
            } else {
                self.releaseHeldInput(context: context)
                if self.readHeld, !self.shouldHoldReads(context: context) {
                    self.readHeld = false
                    context.read()
                }
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
}

@available(*, unavailable)
extension SessionHandler: Sendable {}
