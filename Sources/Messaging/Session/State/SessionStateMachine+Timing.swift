import NIOCore

/// Heartbeats and the rate limit: the inputs that come with the time.
extension SessionStateMachine {
    // MARK: - Heartbeats

    /// Bytes arrived from the peer.
    mutating func bytesReceived(now: NIODeadline) {
        self.heartbeat.received(now: now)
    }

    /// We started writing frames of our own (not only PONGs).
    mutating func framesSent(now: NIODeadline) {
        self.heartbeat.sent(now: now)
    }

    enum HeartbeatAction: Equatable {
        case none
        /// Send PING `id`, then arm the heartbeat timer for `next`.
        case sendPing(id: UInt64, next: NIODeadline)
        /// Arm the heartbeat timer for `next`.
        case wait(next: NIODeadline)
        case fail(ProtocolViolation)
    }

    /// The heartbeat timer fired.
    mutating func heartbeatTimerFired(now: NIODeadline) -> HeartbeatAction {
        guard self.state != .closed, self.state != .idle, self.state != .awaitingHello else { return .none }
        switch self.heartbeat.timerFired(now: now) {
        case .timedOut:
            return .fail(self.failed(ProtocolViolation(.timeout, "no traffic within the heartbeat timeout")))
        case .sendPing(let id, let next):
            return .sendPing(id: id, next: next)
        case .wait(let next):
            return .wait(next: next)
        }
    }

    /// The application asks for a PING now: its id, or nil when the session is not open.
    mutating func pingRequested(now: NIODeadline) -> UInt64? {
        guard self.isOpen else { return nil }
        return self.heartbeat.nextPing(now: now)
    }

    /// The next PING id (with no clock: for tests of the numbering).
    mutating func nextPingID() -> UInt64 {
        self.heartbeat.nextPing(now: self.heartbeat.lastSent)
    }

    /// The round trip of the latest PING answered.
    var lastRoundTrip: TimeAmount? { self.heartbeat.lastRoundTrip }

    // MARK: - Rate limit

    /// Whether the peer is over its rate limit: frames wait (unread) until the refill.
    var isThrottled: Bool { self.rateLimiter?.isThrottled == true }

    /// When to look at the rate limit again: the refill, or the end of the grace period if sooner.
    func rateLimitWake(now: NIODeadline) -> NIODeadline? {
        guard let limiter = self.rateLimiter, limiter.isThrottled else { return nil }
        let delay = max(min(limiter.timeUntilRefilled(), limiter.graceRemaining(now: now)), .milliseconds(1))
        return now + delay
    }

    enum RateLimitAction: Equatable {
        case none
        /// Under the limit again: read (and assemble what waits) again.
        case resumeReading
        /// Still over it: look again at this time.
        case wait(until: NIODeadline)
        case fail(ProtocolViolation)
    }

    /// The rate-limit timer fired.
    mutating func rateLimitTimerFired(now: NIODeadline) -> RateLimitAction {
        guard var limiter = self.rateLimiter, self.state != .closed else { return .none }
        limiter.refill(now: now)
        self.rateLimiter = limiter
        guard limiter.isThrottled else { return .resumeReading }
        if limiter.overGrace(now: now) {
            return .fail(self.failed(ProtocolViolation(.overloaded, "rate limit exceeded")))
        }
        return self.rateLimitWake(now: now).map { .wait(until: $0) } ?? .resumeReading
    }

    /// A read burst ended: a peer under the limit now is not continuously over it any more.
    mutating func readBurstEnded() {
        if var limiter = self.rateLimiter, !limiter.isThrottled {
            limiter.settled()
            self.rateLimiter = limiter
        }
    }
}
