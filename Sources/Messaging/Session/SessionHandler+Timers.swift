import CoreMetrics
import Logging
import NIOCore

extension SessionHandler {
    // MARK: - Timers

    func schedule(
        at deadline: NIODeadline,
        context: ChannelHandlerContext,
        _ body: @escaping (SessionHandler, ChannelHandlerContext) -> Void
    ) -> Scheduled<Void> {
        context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { body(self, context) }
    }

    func armPhaseTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.io.phaseTimer?.cancel()
        self.io.phaseTimer = self.schedule(at: deadline, context: context) { handler, context in
            handler.io.phaseTimer = nil
            switch handler.machine.phaseTimerFired() {
            case .none:
                break
            case .fail(let violation):
                handler.sendError(violation, context: context)
            case .close:
                handler.close(context: context, mode: .all, promise: nil)
            case .sendGoodbyeAndClose:
                handler.writeControl(.goodbye, context: context, flush: true)
                context.close(promise: nil)
            }
        }
    }

    func armHeartbeat(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.io.heartbeatTimer = self.schedule(at: deadline, context: context) { handler, context in
            handler.io.heartbeatTimer = nil
            handler.sampleOutbound(context: context)
            switch handler.machine.heartbeatTimerFired(now: context.eventLoop.now) {
            case .none:
                break
            case .fail(let violation):
                handler.sendError(violation, context: context)
            case .sendPing(let id, let next):
                handler.writeControl(.ping(id, status: handler.session.pingStatus()), context: context, flush: true)
                handler.armHeartbeat(at: next, context: context)
            case .wait(let next):
                handler.armHeartbeat(at: next, context: context)
            }
        }
    }

    func armRateLimitTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.io.rateLimitTimer = self.schedule(at: deadline, context: context) { handler, context in
            handler.io.rateLimitTimer = nil
            handler.rateLimitTimerFired(context: context)
        }
    }

    private func rateLimitTimerFired(context: ChannelHandlerContext) {
        let now = context.eventLoop.now
        switch self.machine.rateLimitTimerFired(now: now) {
        case .none:
            break
        case .fail(let violation):
            self.sendError(violation, context: context)
        case .wait(let until):
            self.armRateLimitTimer(at: until, context: context)
        case .resumeReading:
            self.assembleFrames(now: now, context: context)
            self.resumeReadingIfHeld(context: context)
            self.flushIfPending(context: context)
        }
    }

    // MARK: - Closing

    /// Sends ERROR, shuts down our write side, discards input until the linger ends, closes.
    func sendError(_ violation: ProtocolViolation, context: ChannelHandlerContext) {
        self.logger.debug("sending ERROR", metadata: ["code": "\(violation.code)", "reason": "\(violation.reason)"])
        if [.protocolError, .frameTooLarge, .unsupportedVersion].contains(violation.code) {
            self.metrics?.protocolErrors.increment()
        }
        self.assembler.discard()
        let lingerEnd = self.machine.errorSent(now: context.eventLoop.now)
        self.session.publish(self.machine.lifecycle, failure: self.machine.failure)
        self.session.inbound.finish(error: self.machine.failure)
        self.writeControl(.error(violation), context: context, flush: true)
        context.close(mode: .output, promise: nil)
        self.io.cancelTimers()
        self.resumeReadingIfHeld(context: context)
        self.io.phaseTimer = self.schedule(at: lingerEnd, context: context) { handler, context in
            handler.io.phaseTimer = nil
            if handler.machine.phaseTimerFired() == .close {
                context.close(promise: nil)
            }
        }
    }

    func answerGoodbye(context: ChannelHandlerContext) {
        switch self.machine.answerGoodbye(now: context.eventLoop.now) {
        case .none:
            break
        case .sendGoodbyeAndClose:
            self.io.phaseTimer?.cancel()
            self.io.phaseTimer = nil
            self.writeControl(.goodbye, context: context, flush: true)
            context.close(promise: nil)
        case .waitForResponses(let deadline):
            self.armPhaseTimer(at: deadline, context: context)
        }
    }

    /// Starts a graceful close: GOODBYE now, then close when the peer's GOODBYE arrives or
    /// after the drain timeout (with ERROR GOING_AWAY first when `goingAway` is set).
    func beginGoodbye(goingAway: Bool) {
        guard let context = self.io.context else { return }
        switch self.machine.closeRequested(goingAway: goingAway, now: context.eventLoop.now) {
        case .none:
            break
        case .closeNow(let violation):
            self.io.phaseTimer?.cancel()
            self.io.phaseTimer = nil
            if let violation {
                self.sendError(violation, context: context)
            } else {
                context.close(promise: nil)
            }
        case .sendGoodbye(let drainDeadline):
            self.session.publish(self.machine.lifecycle)
            self.writeControl(.goodbye, context: context, flush: true)
            self.armPhaseTimer(at: drainDeadline, context: context)
        case .sendGoodbyeAndClose:
            self.session.publish(self.machine.lifecycle)
            self.writeControl(.goodbye, context: context, flush: true)
            context.close(promise: nil)
        }
    }

    /// Sends ERROR with `code` and closes (application-initiated, e.g. OVERLOADED, UNAUTHORIZED).
    func fail(code: ErrorCode, reason: String) {
        guard let context = self.io.context, let violation = self.machine.failRequested(code: code, reason: reason)
        else { return }
        self.sendError(violation, context: context)
    }

    /// Sends a PING (with the session's status blob) now, outside the heartbeat schedule.
    func pingNow() {
        guard let context = self.io.context, let id = self.machine.pingRequested(now: context.eventLoop.now) else {
            return
        }
        self.writeControl(.ping(id, status: self.session.pingStatus()), context: context, flush: true)
    }
}
