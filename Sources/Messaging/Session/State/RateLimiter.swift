import NIOCore

/// Token buckets for a ``RateLimit``: one second's worth of messages and of bytes, refilled
/// continuously. A pure value: time comes in as arguments.
struct RateLimiter {
    let limit: RateLimit
    /// The limit's grace period, as the event loop counts time.
    let gracePeriod: TimeAmount
    private var messageTokens: Double
    private var byteTokens: Double
    private var lastRefill: NIODeadline
    /// When the peer went over the limit and has not settled under it since.
    private(set) var throttledSince: NIODeadline?

    init(_ limit: RateLimit, now: NIODeadline) {
        self.limit = limit
        self.gracePeriod = TimeAmount(limit.gracePeriod)
        self.messageTokens = limit.messagesPerSecond ?? 0
        self.byteTokens = limit.bytesPerSecond ?? 0
        self.lastRefill = now
    }

    /// Whether either bucket is empty (reading should pause).
    var isThrottled: Bool {
        (self.limit.messagesPerSecond != nil && self.messageTokens < 0)
            || (self.limit.bytesPerSecond != nil && self.byteTokens < 0)
    }

    mutating func refill(now: NIODeadline) {
        let seconds = Double((now - self.lastRefill).nanoseconds) / 1e9
        self.lastRefill = now
        if let rate = self.limit.messagesPerSecond {
            self.messageTokens = min(rate, self.messageTokens + seconds * rate)
        }
        if let rate = self.limit.bytesPerSecond {
            self.byteTokens = min(rate, self.byteTokens + seconds * rate)
        }
    }

    /// Takes one message's worth; returns whether the peer is now over the limit.
    mutating func take(messages: Int, bytes: Int, now: NIODeadline) -> Bool {
        self.refill(now: now)
        self.messageTokens -= Double(messages)
        self.byteTokens -= Double(bytes)
        if self.isThrottled, self.throttledSince == nil {
            self.throttledSince = now
        }
        return self.isThrottled
    }

    /// A read ended with the peer under the limit: it is not continuously over it any more.
    mutating func settled() {
        self.throttledSince = nil
    }

    /// Whether the peer has been over the limit for longer than the grace period.
    func overGrace(now: NIODeadline) -> Bool {
        guard let since = self.throttledSince else { return false }
        return now - since >= self.gracePeriod
    }

    /// How long until the grace period runs out (the whole period when not throttled).
    func graceRemaining(now: NIODeadline) -> TimeAmount {
        guard let since = self.throttledSince else { return self.gracePeriod }
        return self.gracePeriod - (now - since)
    }

    /// How long until both buckets are back at zero or above.
    func timeUntilRefilled() -> TimeAmount {
        var seconds = 0.0
        if let rate = self.limit.messagesPerSecond, self.messageTokens < 0 {
            seconds = max(seconds, -self.messageTokens / rate)
        }
        if let rate = self.limit.bytesPerSecond, self.byteTokens < 0 {
            seconds = max(seconds, -self.byteTokens / rate)
        }
        return .nanoseconds(Int64(seconds * 1e9))
    }
}
