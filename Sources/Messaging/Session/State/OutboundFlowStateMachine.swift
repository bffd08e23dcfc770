import NIOCore

/// Outbound flow control of one session (PROTOCOL.md "Flow control", DESIGN.md "Concurrency"):
/// whether DATA may go now (the peer did not say SLOW_DOWN, the channel is under its write-buffer
/// watermark), the sends parked until it may, in order, and the slow-consumer rule.
struct OutboundFlowStateMachine {
    /// The peer sent FLOW SLOW_DOWN and no RESUME since.
    private(set) var peerSaidSlowDown = false
    /// The channel is under its write-buffer high watermark (as NIO last reported it).
    private(set) var writable = true
    /// Sends waiting, in order, for sending to be allowed again.
    private var parked = CircularBuffer<OutboundMessage>(initialCapacity: 1)
    /// Payload bytes of parked broadcast messages.
    private(set) var parkedOfferBytes = 0
    /// The bound on ``parkedOfferBytes``: a session that needs more is a slow consumer.
    let offerLimit: Int
    /// How long the channel may stay unwritable before the peer counts as a slow consumer.
    let slowConsumerTimeout: TimeAmount
    /// When the slow-consumer timer fires, while one is due.
    private(set) var slowConsumerDeadline: NIODeadline?

    init(offerLimit: Int, slowConsumerTimeout: TimeAmount) {
        self.offerLimit = offerLimit
        self.slowConsumerTimeout = slowConsumerTimeout
    }

    /// Whether DATA must wait (or be refused) now.
    var isBlocked: Bool { self.peerSaidSlowDown || !self.writable || !self.parked.isEmpty }

    var parkedCount: Int { self.parked.count }

    /// What to do with a message that cannot go now.
    enum ParkDecision {
        case parked
        /// The message may not wait: refuse it.
        case refused
        /// Parking it would pass the broadcast bound: the peer is a slow consumer.
        case slowConsumer
    }

    mutating func park(_ message: OutboundMessage) -> ParkDecision {
        switch message.kind {
        case .send(mayWait: false):
            return .refused
        case .offer:
            let size = message.payloadBytes
            if self.parkedOfferBytes + size > self.offerLimit {
                return .slowConsumer
            }
            self.parkedOfferBytes += size
        case .send(mayWait: true), .request:
            break
        }
        self.parked.append(message)
        return .parked
    }

    /// The next parked send, once sending is allowed again.
    mutating func unpark() -> OutboundMessage? {
        guard !self.peerSaidSlowDown, self.writable, let message = self.parked.popFirst() else { return nil }
        if case .offer = message.kind {
            self.parkedOfferBytes = max(0, self.parkedOfferBytes - message.payloadBytes)
        }
        return message
    }

    /// Takes out the parked message whose waiter is `waiter` (its caller gave up), if it is parked.
    mutating func removeParked(waiter: ObjectIdentifier) -> OutboundMessage? {
        guard let index = self.parked.firstIndex(where: { $0.waiter == waiter }) else { return nil }
        let message = self.parked.remove(at: index)
        if case .offer = message.kind {
            self.parkedOfferBytes = max(0, self.parkedOfferBytes - message.payloadBytes)
        }
        return message
    }

    /// Everything still parked (the session ended).
    mutating func removeAllParked() -> CircularBuffer<OutboundMessage> {
        defer {
            self.parked.removeAll()
            self.parkedOfferBytes = 0
        }
        return self.parked
    }

    mutating func peerFlow(_ signal: FlowSignal) {
        self.peerSaidSlowDown = signal == .slowDown
    }

    /// What a change of writability means for the slow-consumer timer.
    enum WritabilityAction: Equatable {
        case none
        case armSlowConsumerTimer(NIODeadline)
        case cancelSlowConsumerTimer
    }

    mutating func writabilityChanged(_ writable: Bool, now: NIODeadline) -> WritabilityAction {
        self.writable = writable
        if writable {
            guard self.slowConsumerDeadline != nil else { return .none }
            self.slowConsumerDeadline = nil
            return .cancelSlowConsumerTimer
        }
        guard self.slowConsumerDeadline == nil else { return .none }
        let deadline = now + self.slowConsumerTimeout
        self.slowConsumerDeadline = deadline
        return .armSlowConsumerTimer(deadline)
    }

    /// The slow-consumer timer fired: returns whether the peer is a slow consumer (the channel
    /// stayed unwritable all along).
    mutating func slowConsumerTimerFired() -> Bool {
        self.slowConsumerDeadline = nil
        return !self.writable
    }
}
