import NIOCore

/// Heartbeats of one session (PROTOCOL.md "Heartbeats"): when to PING, when the peer is gone,
/// and the round trip of the PINGs answered. Time comes in as arguments; nothing here reads a
/// clock.
struct HeartbeatStateMachine {
    /// What the heartbeat timer's firing calls for.
    enum TimerAction: Equatable {
        /// Send a PING with this id now, and fire again at `next`.
        case sendPing(id: UInt64, next: NIODeadline)
        /// Nothing to send yet: fire again at `next`.
        case wait(next: NIODeadline)
        /// Nothing came from the peer within the heartbeat timeout.
        case timedOut
    }

    /// The PINGs remembered for their round trip (a peer that answers none is timed out long
    /// before this matters).
    static let pingsRemembered = 8

    /// Our interval.
    let interval: TimeAmount
    /// The peer's interval (its HELLO's `heartbeat_ms`, or the protocol's default).
    private(set) var peerInterval: TimeAmount = .milliseconds(5000)
    /// When the last bytes from the peer arrived.
    private(set) var lastReceived: NIODeadline
    /// When we last sent something of our own (a PONG does not count: it answers the peer's
    /// heartbeat and does not stand in for ours).
    private(set) var lastSent: NIODeadline
    private(set) var lastRoundTrip: TimeAmount?
    private var pingCounter: UInt64 = 0
    private var pingsInFlight: [(id: UInt64, sent: NIODeadline)] = []

    init(interval: TimeAmount, now: NIODeadline) {
        self.interval = interval
        self.lastReceived = now
        self.lastSent = now
    }

    /// Silence longer than this means the peer is gone: 3 × the larger interval.
    var timeout: TimeAmount {
        Self.timeout(own: self.interval, peer: self.peerInterval)
    }

    /// 3 × the larger of two intervals (without overflowing).
    static func timeout(own: TimeAmount, peer: TimeAmount) -> TimeAmount {
        let larger = max(own.nanoseconds, peer.nanoseconds)
        let (tripled, overflow) = larger.multipliedReportingOverflow(by: 3)
        return .nanoseconds(overflow ? .max : tripled)
    }

    /// The session opened; heartbeats start. Returns when the timer first fires.
    mutating func start(peerMilliseconds: Int?, now: NIODeadline) -> NIODeadline {
        self.peerInterval = .milliseconds(Int64(peerMilliseconds ?? 5000))
        self.lastReceived = now
        return now + self.interval
    }

    /// Bytes arrived from the peer.
    mutating func received(now: NIODeadline) {
        self.lastReceived = now
    }

    /// We sent frames of our own.
    mutating func sent(now: NIODeadline) {
        self.lastSent = now
    }

    mutating func timerFired(now: NIODeadline) -> TimerAction {
        let timeout = self.timeout
        if now - self.lastReceived >= timeout {
            return .timedOut
        }
        var ping: UInt64?
        if now - self.lastSent >= self.interval {
            ping = self.nextPing(now: now)
        }
        let next = max(min(self.lastSent + self.interval, self.lastReceived + timeout), now + .milliseconds(1))
        if let ping {
            return .sendPing(id: ping, next: next)
        }
        return .wait(next: next)
    }

    /// Numbers a PING sent now (by the timer, or asked for by the application).
    mutating func nextPing(now: NIODeadline) -> UInt64 {
        self.pingCounter += 1
        self.lastSent = now
        if self.pingsInFlight.count == Self.pingsRemembered {
            self.pingsInFlight.removeFirst()
        }
        self.pingsInFlight.append((self.pingCounter, now))
        return self.pingCounter
    }

    /// A PONG came: returns the round trip when it answers a PING we remember.
    mutating func pong(id: UInt64, now: NIODeadline) -> TimeAmount? {
        guard let index = self.pingsInFlight.firstIndex(where: { $0.id == id }) else { return nil }
        let roundTrip = now - self.pingsInFlight[index].sent
        self.pingsInFlight.remove(at: index)
        self.lastRoundTrip = roundTrip
        return roundTrip
    }
}
