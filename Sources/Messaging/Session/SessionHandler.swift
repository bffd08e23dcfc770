import CoreMetrics
import Logging
import NIOCore
import SecureTransport
import Synchronization

/// Carries out a ``SessionStateMachine`` on a channel: feeds it the bytes, frames, timers and
/// application calls, and executes its actions (write frames, flush, arm timers, deliver,
/// close). The protocol's decisions are all the machine's.
///
/// Pipeline position: right above the transport's handlers. Bytes come in and are assembled
/// into frames by the one ``FrameAssembler``; frames go out encoded into one ``FrameBatch`` per
/// event-loop tick, flushed at the end of the tick (or of the read burst in progress).
///
/// The machine, the assembler and the batch are touched on the DATA path of every frame; they
/// opt out of Swift's dynamic exclusivity checks (`@exclusivity(unchecked)`), which cost about
/// 15 % of a small-message echo when they were measured (everything here runs on the event
/// loop, never in overlapping accesses).
final class SessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    @exclusivity(unchecked) var machine: SessionStateMachine
    @exclusivity(unchecked) var assembler: FrameAssembler
    @exclusivity(unchecked) var batch = FrameBatch()
    @exclusivity(unchecked) var io = IOState()
    let session: Session
    let waitsForReadyEvent: Bool
    /// How the peer's certificate names its node.
    let identityMapping: IdentityMapping
    let metrics: MessagingMetrics?
    var logger: Logger
    /// Takes messages on the event loop instead of the inbound queue, when set.
    @exclusivity(unchecked) var receiver: (any MessageReceiver)?

    /// What the handler keeps of the channel's I/O: its context, the timers it armed for the
    /// machine, and the flush and read bookkeeping.
    struct IOState {
        var context: ChannelHandlerContext?
        /// Whether the transport said it was ready (TLS: the handshake completed). A failure
        /// before that is a failed handshake, even when the close it caused came first.
        var transportWasReady = false
        var heartbeatTimer: Scheduled<Void>?
        var phaseTimer: Scheduled<Void>?
        var slowConsumerTimer: Scheduled<Void>?
        var rateLimitTimer: Scheduled<Void>?
        /// A timer per REQUEST, by its caller (the future it waits on).
        var requestTimers: [ObjectIdentifier: Scheduled<Void>] = [:]
        /// Frames were written and not flushed yet; a flush is due at the end of this tick.
        var flushPending = false
        var flushScheduled = false
        /// A read was asked for while reading was paused.
        var readHeld = false
        var sampledOutboundBytes = 0
        var writable = true

        /// Cancels the session's own timers (a request's timer runs until its request is
        /// settled, or the connection ends).
        mutating func cancelTimers() {
            self.heartbeatTimer?.cancel()
            self.phaseTimer?.cancel()
            self.slowConsumerTimer?.cancel()
            self.rateLimitTimer?.cancel()
            self.heartbeatTimer = nil
            self.phaseTimer = nil
            self.slowConsumerTimer = nil
            self.rateLimitTimer = nil
        }

        /// Cancels every timer (the connection ended).
        mutating func cancelAllTimers() {
            self.cancelTimers()
            for timer in self.requestTimers.values {
                timer.cancel()
            }
            self.requestTimers.removeAll()
        }
    }

    /// A handler for a new channel's session, with the machine built from `configuration`.
    convenience init(
        role: SessionStateMachine.Role,
        hello: Hello,
        configuration: SessionConfiguration,
        session: Session,
        waitsForReadyEvent: Bool,
        requireCertificateIdentity: Bool = false,
        identityMapping: IdentityMapping = .firstDNSName,
        rejection: ProtocolViolation? = nil,
        metrics: MessagingMetrics? = nil,
        receiver: (any MessageReceiver)? = nil,
        logger: Logger
    ) {
        let machine = SessionStateMachine(
            configuration: .init(
                role: role,
                hello: hello,
                session: configuration,
                requireCertificateIdentity: requireCertificateIdentity,
                rejection: rejection
            ),
            now: session.channel.eventLoop.now
        )
        self.init(
            machine: machine,
            session: session,
            waitsForReadyEvent: waitsForReadyEvent,
            metrics: metrics,
            identityMapping: identityMapping,
            receiver: receiver,
            logger: logger
        )
    }

    init(
        machine: SessionStateMachine,
        session: Session,
        waitsForReadyEvent: Bool,
        metrics: MessagingMetrics? = nil,
        identityMapping: IdentityMapping = .firstDNSName,
        receiver: (any MessageReceiver)? = nil,
        logger: Logger
    ) {
        self.machine = machine
        self.identityMapping = identityMapping
        self.assembler = FrameAssembler(maxFrame: machine.configuration.maxFrame)
        self.session = session
        self.waitsForReadyEvent = waitsForReadyEvent
        self.metrics = metrics
        self.receiver = receiver
        self.logger = logger
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.io.context = context
        if context.channel.isActive, !self.waitsForReadyEvent {
            self.transportReady(TransportReady(), context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.io.cancelAllTimers()
        self.assembler.discard()
        self.batch.take()?.1?.fail(ChannelError.ioOnClosedChannel)
        self.io.context = nil
        // Without a channelInactive (a channel that never became active), nothing else settles
        // what still waits; after one, nothing is left.
        self.settleWaiters(self.machine.connectionEnded())
        // A channel that never became active (a failed connect) gets no channelInactive: end
        // the session here too. Ending twice changes nothing.
        self.session.connectionEnded(
            failure: self.machine.failure ?? MessagingError(.connectionClosed, "the connection closed")
        )
        // The session and this handler refer to each other (and a receiver may keep a
        // LoopSession); the pipeline is done with us.
        self.session.detach()
        self.receiver = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.waitsForReadyEvent {
            self.transportReady(TransportReady(), context: context)
        }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? any TransportReadyEvent {
            self.transportReady(event.transportReady, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func transportReady(_ ready: TransportReady, context: ChannelHandlerContext) {
        self.io.transportWasReady = true
        var ready = ready
        ready.peerIdentity = ready.tls?.peerCertificate.flatMap { self.identityMapping.identity(of: $0) }
        let now = context.eventLoop.now
        switch self.machine.transportReady(peerIdentity: ready.peerIdentity, now: now) {
        case .none:
            return
        case .fail(let violation):
            self.session.transportReady(ready)
            if violation.code == .serverBusy {
                self.refused(.connectionLimit, violation.reason)
            }
            self.sendError(violation, context: context)
        case .waitForHello(let hello, let deadline):
            self.session.transportReady(ready)
            self.session.publish(self.machine.lifecycle)
            if let hello {
                self.writeControl(.hello(hello), context: context, flush: true)
            }
            self.armPhaseTimer(at: deadline, context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.machine.isClosed else {
            // An ERROR is out (or the connection is ending): what still comes is discarded.
            self.assembler.discard()
            return
        }
        let now = context.eventLoop.now
        self.machine.bytesReceived(now: now)
        self.session.lastSeen.store(now.uptimeNanoseconds, ordering: .relaxed)
        self.assembler.append(Self.unwrapInboundIn(data))
        self.assembleFrames(now: now, context: context)
    }

    /// Handles the frames assembled so far, until more bytes are needed, the rate limit holds
    /// the rest back, or the session closes.
    func assembleFrames(now: NIODeadline, context: ChannelHandlerContext) {
        while !self.machine.isClosed {
            if self.machine.isThrottled {
                // Over the rate limit: what is left waits for the refill, so a large read
                // cannot carry a burst past the limit.
                if self.io.rateLimitTimer == nil, let wake = self.machine.rateLimitWake(now: now) {
                    self.armRateLimitTimer(at: wake, context: context)
                }
                return
            }
            let step: FrameAssembler.Step
            do {
                step = try self.assembler.next()
            } catch {
                if let violation = self.machine.malformedInput(error) {
                    self.sendError(violation, context: context)
                }
                return
            }
            switch step {
            case .frame(let frame):
                self.receive(frame, now: now, context: context)
            case .header(let header):
                if let violation = self.machine.pendingHeaderArrived(header) {
                    // A frame still arriving is already out of place: refuse it now.
                    self.sendError(violation, context: context)
                }
            case .needMoreData:
                return
            }
        }
        self.assembler.discard()
    }

    private func receive(_ frame: Frame, now: NIODeadline, context: ChannelHandlerContext) {
        switch self.machine.receive(frame, now: now) {
        case .none:
            break
        case .deliver(let message):
            self.deliver(message, context: context)
        case .response(let message):
            if let promise = self.machine.takeRequest(id: message.id) {
                self.io.requestTimers.removeValue(forKey: ObjectIdentifier(promise.futureResult))?.cancel()
                promise.succeed(message)
            }
        case .requestCancelled(let id):
            self.session.requestCancelled(id: id)
            self.answerGoodbyeIfReady(context: context)
        case .opened(let peer, let reply):
            self.opened(peer: peer, reply: reply, context: context)
        case .sendPong(let id):
            if frame.payload.readableBytes > 0 {
                self.session.recordPeerStatus(frame.payload)
            }
            self.writeControl(.pong(id), context: context, flush: false)
        case .pong:
            self.session.recordRoundTrip(self.machine.lastRoundTrip)
        case .ack(let id):
            self.session.recordAck(id: id)
        case .flow(let signal):
            self.session.recordFlow(signal)
            self.sendUnparked(context: context)
        case .fail(let violation):
            if violation.code == .unauthorized {
                // The machine says UNAUTHORIZED for one thing: a HELLO node_id that is not the
                // certificate's identity.
                self.refused(.identityMismatch, violation.reason)
            }
            self.sendError(violation, context: context)
        case .peerFailed(let code, let reason):
            self.logger.debug("peer sent ERROR", metadata: ["code": "\(code)", "reason": "\(reason)"])
            self.session.publish(self.machine.lifecycle, failure: self.machine.failure)
            context.close(promise: nil)
        case .goodbyeReceived:
            self.session.publish(self.machine.lifecycle)
            self.session.inbound.finish()
            self.answerGoodbye(context: context)
        case .goodbyeComplete:
            self.io.phaseTimer?.cancel()
            self.io.phaseTimer = nil
            self.close(context: context, mode: .all, promise: nil)
        }
    }

    private func opened(peer: Hello, reply: Hello?, context: ChannelHandlerContext) {
        // From now on every line about this session says which node it is.
        self.logger[metadataKey: "node_id"] = "\(peer.nodeID)"
        if let sessionID = peer.sessionID, self.logger[metadataKey: "session_id"] == nil {
            self.logger[metadataKey: "session_id"] = "\(sessionID)"
        }
        if self.logger[metadataKey: "remote"] == nil, let remote = context.channel.remoteAddress {
            self.logger[metadataKey: "remote"] = "\(remote)"
        }
        self.io.phaseTimer?.cancel()
        self.io.phaseTimer = nil
        // The frames after the peer's HELLO may use the extensions both listed.
        self.assembler.extensions = self.machine.extensions
        if let reply {
            self.writeControl(.hello(reply), context: context, flush: true)
        }
        self.session.publish(self.machine.lifecycle)
        self.session.opened(peer: peer, extensions: self.machine.extensions)
        if let first = self.machine.nextHeartbeat {
            self.armHeartbeat(at: first, context: context)
        }
        self.receiver?.sessionOpened(LoopSession(handler: self))
    }

    private func deliver(_ message: Message, context: ChannelHandlerContext) {
        if let receiver = self.receiver {
            receiver.received(message, session: LoopSession(handler: self))
            if let ack = self.machine.ackAfterDelivery(of: message) {
                self.writeControl(.ack(ack), context: context, flush: false)
            }
            return
        }
        switch self.machine.queued(self.session.inbound.push(message)) {
        case .none:
            break
        case .sendSlowDown:
            self.metrics?.backpressureEvents.increment()
            self.writeControl(.flow(.slowDown), context: context, flush: true)
        case .fail(let violation):
            self.sendError(violation, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case let violation as ProtocolViolation:
            if let violation = self.machine.malformedInput(violation) {
                self.sendError(violation, context: context)
            }
            return
        case let failure as any TransportFailureEvent:
            let failure = failure.transportFailure
            self.logger.debug("transport failure", metadata: ["error": "\(failure)"])
            if !self.io.transportWasReady {
                self.metrics?.handshakeFailures.increment()
                if let refusal = failure.refusal {
                    self.refused(refusal, failure.description)
                }
            }
            self.machine.transportFailed(failure.description, cleanIfClosed: failure.isTruncation, tls: failure.tls)
        default:
            self.logger.debug("channel error", metadata: ["error": "\(error)"])
            self.machine.transportFailed("\(error)", cleanIfClosed: false)
        }
        context.close(promise: nil)
    }

    /// A server refusing its peer: a notice with the peer's address (in the logger's
    /// metadata) and the reason, and `smsg_refusals_total{reason}`. A client's failures are
    /// its caller's errors instead.
    func refused(_ reason: RefusalReason, _ detail: String) {
        guard self.machine.configuration.role == .server else { return }
        self.metrics?.refused(reason)
        // A peer that only opened and closed a TCP connection (a health check, a port scan) is
        // counted but logged below notice.
        let level: Logger.Level = reason == .closedDuringHandshake ? .info : .notice
        self.logger.log(
            level: level,
            "refused a connection",
            metadata: ["reason": "\(reason.rawValue)", "detail": "\(detail)"]
        )
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.io.cancelAllTimers()
        self.publishCounts()
        self.sampleOutbound(context: context, closing: true)
        let ended = self.machine.connectionEnded()
        self.settleWaiters(ended)
        self.session.sendBlocked.store(true, ordering: .relaxed)
        self.session.connectionEnded(failure: ended.closeReason)
        context.fireChannelInactive()
    }

    /// Fails the requests and parked sends still waiting when the connection ended.
    private func settleWaiters(_ ended: SessionStateMachine.Ended) {
        for (_, promise) in ended.pendingRequests {
            promise.fail(ended.failure)
        }
        for parked in ended.parked {
            parked.fail(ended.failure)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.machine.readBurstEnded()
        self.flushIfPending(context: context)
        self.publishCounts()
        context.fireChannelReadComplete()
    }
}

@available(*, unavailable)
extension SessionHandler: Sendable {}
