import CoreMetrics
import Logging
import NIOCore
import Synchronization

extension SessionHandler {
    // MARK: - Sends from the application (on the event loop)

    /// Sends DATA (``OutboundMessage/Kind/send(mayWait:)``) or a REQUEST; the outcome completes
    /// the message's promises.
    func send(_ message: OutboundMessage) {
        guard let context = self.io.context else {
            message.fail(MessagingError(.connectionClosed, "the connection closed"))
            return
        }
        if case .request(let deadline, let response) = message.kind {
            // The deadline holds from now on, while parked as well as once written.
            let waiter = ObjectIdentifier(response.futureResult)
            self.io.requestTimers[waiter] = self.schedule(at: deadline, context: context) { handler, _ in
                handler.io.requestTimers[waiter] = nil
                handler.abandon(waiter: waiter, because: MessagingError(.requestTimedOut, "no response in time"))
            }
        }
        _ = self.carryOut(self.machine.send(message, now: context.eventLoop.now), context: context)
    }

    /// The caller waiting on `waiter` gives up with `error` (its deadline passed, or its task
    /// was cancelled): a parked message is dropped, a sent REQUEST is CANCELled (where the
    /// peer has the `cancel` extension) and its RESPONSE will be ignored.
    func abandon(waiter: ObjectIdentifier, because error: any Error) {
        self.io.requestTimers.removeValue(forKey: waiter)?.cancel()
        guard let context = self.io.context else { return }
        switch self.machine.abandon(waiter: waiter) {
        case .notWaiting:
            return
        case .parked(let message):
            message.fail(error)
            self.session.sendBlocked.store(self.machine.isSendBlocked, ordering: .relaxed)
        case .sent(let id, let response, let sendCancel):
            response.fail(error)
            if sendCancel {
                self.writeControl(.cancel(id), context: context, flush: false)
            }
        }
    }

    /// A broadcast's send: written now if possible, else parked within the session's bound;
    /// a session whose parked messages would pass the bound is a slow consumer and is closed
    /// with OVERLOADED. Returns whether the message was taken.
    @discardableResult
    func offerNow(topic: String, body: ByteBuffer) -> Bool {
        guard let context = self.io.context, self.machine.isOpen else { return false }
        if let id = self.machine.sendNow(topicBytes: topic.utf8.count, bodyBytes: body.readableBytes) {
            // The DATA path of a receiver: nothing in the way, nothing to wait for.
            self.writeData(topic: topic, body: body, flags: [], id: id, promise: nil, context: context)
            self.scheduleFlush(context: context)
            return true
        }
        let message = OutboundMessage(topic: topic, body: body, flags: [], kind: .offer)
        return self.carryOut(self.machine.send(message, now: context.eventLoop.now), context: context)
    }

    /// Carries out a send decision; returns whether the message was taken (written or parked).
    @inline(__always)
    private func carryOut(_ action: SessionStateMachine.SendAction, context: ChannelHandlerContext) -> Bool {
        switch action {
        case .write(let message, let id, let headers):
            message.onID?(id)
            self.writeData(message, id: id, headers: headers, context: context)
            self.scheduleFlush(context: context)
            return true
        case .parked:
            self.metrics?.backpressureEvents.increment()
            self.session.sendBlocked.store(true, ordering: .relaxed)
            return true
        case .refuse(let message, let error):
            if case .send = message.kind, self.machine.isSendBlocked {
                self.metrics?.backpressureEvents.increment()
            }
            self.cancelRequestTimer(of: message)
            message.fail(error)
            return false
        case .slowConsumer(let message, let violation):
            self.cancelRequestTimer(of: message)
            message.fail(MessagingError(.closing, "the peer is a slow consumer"))
            self.metrics?.slowConsumers.increment()
            self.logger.info("closing a slow consumer: its broadcast backlog passed the bound")
            self.sendError(violation, context: context)
            return false
        }
    }

    private func cancelRequestTimer(of message: OutboundMessage) {
        guard case .request = message.kind, let waiter = message.waiter else { return }
        self.io.requestTimers.removeValue(forKey: waiter)?.cancel()
    }

    /// Sends what was parked, in order, while the peer and the channel take it; then publishes
    /// whether sends are blocked and resumes reading if it was held.
    func sendUnparked(context: ChannelHandlerContext) {
        while let action = self.machine.unpark(now: context.eventLoop.now) {
            _ = self.carryOut(action, context: context)
        }
        self.session.sendBlocked.store(self.machine.isSendBlocked, ordering: .relaxed)
        self.resumeReadingIfHeld(context: context)
    }

    /// Answers a REQUEST with `body`, or with `failure` (FAILED where the `status` extension is
    /// in force, else an empty body); `onRefusal` runs when the answer cannot be sent.
    func sendResponse(
        to requestID: UInt64,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        failure: RequestError? = nil,
        promise: EventLoopPromise<Void>?,
        onRefusal: () -> Void = {}
    ) {
        guard let context = self.io.context else {
            promise?.fail(MessagingError(.connectionClosed, "the connection closed"))
            onRefusal()
            return
        }
        var body = body
        var flags = DataFlags.response
        if let failure {
            (body, flags) = self.machine.failedResponse(failure)
        }
        let message = OutboundMessage(
            topic: topic,
            body: body,
            flags: flags,
            kind: .send(mayWait: true),
            headers: headers,
            written: promise
        )
        let blockHeaders: MessageHeaders?
        do {
            blockHeaders = try self.machine.outboundHeaders(message, now: context.eventLoop.now)
            try self.machine.respond(
                to: requestID,
                topicBytes: topic.utf8.count,
                bodyBytes: body.readableBytes + (blockHeaders.map { 2 + $0.blockBytes } ?? 0)
            )
        } catch {
            promise?.fail(self.machine.failure ?? MessagingError(error))
            onRefusal()
            return
        }
        self.writeData(message, id: requestID, headers: blockHeaders, context: context)
        self.scheduleFlush(context: context)
        self.answerGoodbyeIfReady(context: context)
    }

    /// Sends the GOODBYE owed to the peer, and closes, once no RESPONSE is owed any more.
    func answerGoodbyeIfReady(context: ChannelHandlerContext) {
        guard self.machine.answerGoodbyeIfReady() else { return }
        self.io.phaseTimer?.cancel()
        self.io.phaseTimer = nil
        self.writeControl(.goodbye, context: context, flush: true)
        context.close(promise: nil)
    }

    /// A RESPONSE from a ``LoopSession``; says whether it was written.
    func respondNow(
        to requestID: UInt64,
        topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        failure: RequestError? = nil
    ) -> Bool {
        guard self.io.context != nil, !self.machine.isClosed else { return false }
        var written = true
        self.sendResponse(
            to: requestID,
            topic: topic,
            headers: headers,
            body: body,
            failure: failure,
            promise: nil
        ) { written = false }
        return written
    }

    /// The application took a message: ACK it if asked, and send RESUME if the queue is back
    /// under its low watermarks.
    func consumed(ackID: UInt64?, resume: Bool) {
        guard let context = self.io.context,
            case .send(let ack, let resume) = self.machine.consumed(ackID: ackID, resume: resume)
        else { return }
        if let ack {
            self.writeControl(.ack(ack), context: context, flush: false)
        }
        if resume {
            self.writeControl(.flow(.resume), context: context, flush: false)
        }
    }

    var sessionHandle: Session { self.session }

    var isSendBlockedNow: Bool {
        self.io.context == nil || self.machine.isSendBlocked
    }

    // MARK: - Writing and flushing

    /// Encodes a control frame into the batch and flushes now (`flush`) or at the end of the tick.
    func writeControl(_ control: ControlFrame, context: ChannelHandlerContext, flush: Bool) {
        let allocator = context.channel.allocator
        let frame = control.frame(allocator: allocator)
        if self.batch.write(frame, allocator: allocator), control.isOwnTraffic {
            self.machine.framesSent(now: context.eventLoop.now)
        }
        if flush {
            self.flushNow(context: context)
        } else {
            self.scheduleFlush(context: context)
        }
    }

    /// Encodes a DATA frame into the batch (a large body goes after the batch, uncopied).
    private func writeData(
        _ message: OutboundMessage,
        id: UInt64,
        headers: MessageHeaders?,
        context: ChannelHandlerContext
    ) {
        self.writeData(
            topic: message.topic,
            body: message.body,
            flags: message.flags,
            id: id,
            headers: headers,
            promise: message.written,
            context: context
        )
    }

    @inline(__always)
    private func writeData(
        topic: String,
        body: ByteBuffer,
        flags: DataFlags,
        id: UInt64,
        headers: MessageHeaders? = nil,
        promise: EventLoopPromise<Void>?,
        context: ChannelHandlerContext
    ) {
        let (started, separateBody) = self.batch.writeData(
            topic: topic,
            body: body,
            flags: flags,
            id: id,
            headers: headers,
            allocator: context.channel.allocator
        )
        if started {
            self.machine.framesSent(now: context.eventLoop.now)
        }
        if let separateBody {
            self.emitBatch(context: context)
            context.write(Self.wrapOutboundOut(separateBody), promise: promise)
        } else {
            self.batch.join(promise)
        }
    }

    /// Asks for the frames written so far to be flushed at the end of this event-loop tick
    /// (or at the end of the read burst in progress), so that a burst of frames leaves in one
    /// TLS write and one system call.
    func scheduleFlush(context: ChannelHandlerContext) {
        self.io.flushPending = true
        guard !self.io.flushScheduled else { return }
        self.io.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.io.flushScheduled = false
            self.flushIfPending(context: context)
        }
    }

    func flushIfPending(context: ChannelHandlerContext) {
        guard self.io.flushPending else { return }
        self.flushNow(context: context)
    }

    /// Hands the encoded batch to the layer below (not flushed).
    private func emitBatch(context: ChannelHandlerContext) {
        guard let (buffer, promise) = self.batch.take() else { return }
        context.write(Self.wrapOutboundOut(buffer), promise: promise)
    }

    private func flushNow(context: ChannelHandlerContext) {
        self.io.flushPending = false
        self.emitBatch(context: context)
        self.publishCounts()
        context.flush()
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

    // MARK: - Reading and writability

    func read(context: ChannelHandlerContext) {
        if self.shouldHoldReads {
            self.io.readHeld = true
        } else {
            context.read()
        }
    }

    /// Reading pauses while the rate limit is exceeded, and, for a receiver (which answers on
    /// the event loop, with nothing queued in between), while the connection cannot take more
    /// output: a peer that does not read its answers stops being read.
    private var shouldHoldReads: Bool {
        if self.machine.isThrottled {
            return true
        }
        return self.receiver != nil && !self.io.writable && !self.machine.isClosed
    }

    func resumeReadingIfHeld(context: ChannelHandlerContext) {
        guard self.io.readHeld, !self.shouldHoldReads else { return }
        self.io.readHeld = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.io.writable = context.channel.isWritable
        self.sampleOutbound(context: context)
        switch self.machine.writabilityChanged(self.io.writable, now: context.eventLoop.now) {
        case .none:
            break
        case .cancelSlowConsumerTimer:
            self.io.slowConsumerTimer?.cancel()
            self.io.slowConsumerTimer = nil
        case .armSlowConsumerTimer(let deadline):
            self.io.slowConsumerTimer = self.schedule(at: deadline, context: context) { handler, context in
                handler.io.slowConsumerTimer = nil
                guard let violation = handler.machine.slowConsumerTimerFired() else { return }
                handler.metrics?.slowConsumers.increment()
                handler.logger.info("closing a slow consumer")
                handler.sendError(violation, context: context)
            }
        }
        self.sendUnparked(context: context)
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Metrics

    /// Publishes this channel's unwritten bytes to the outbound gauge (as a change from the
    /// last sample).
    func sampleOutbound(context: ChannelHandlerContext, closing: Bool = false) {
        guard let gauge = self.metrics?.outboundQueuedBytes else { return }
        let now = closing ? 0 : ((try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0)
        if now != self.io.sampledOutboundBytes {
            gauge.increment(by: Double(now - self.io.sampledOutboundBytes))
            self.io.sampledOutboundBytes = now
        }
    }

    /// Adds the frames counted since the last time to the metrics.
    func publishCounts() {
        guard let metrics = self.metrics else { return }
        let sent = self.batch.takeCounts()
        if sent.frames > 0 {
            metrics.framesSent.increment(by: sent.frames)
            metrics.bytesSent.increment(by: sent.bytes)
        }
        let received = self.assembler.takeCounts()
        if received.frames > 0 {
            metrics.framesReceived.increment(by: received.frames)
            metrics.bytesReceived.increment(by: received.bytes)
        }
    }
}
