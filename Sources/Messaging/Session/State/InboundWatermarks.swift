/// Inbound flow control of one session (PROTOCOL.md "Flow control"): the DATA received and not
/// yet taken by the application, counted in messages and payload bytes against the high and low
/// watermarks and the hard limits, and whether the peer was told SLOW_DOWN.
///
/// A pure value. It lives inside the session's ``InboundQueue``, under the queue's lock,
/// because its two inputs come from two sides: the event loop pushes, the application's task
/// takes.
struct InboundWatermarks {
    /// What a push means for the sender.
    enum PushResult: Equatable {
        case queued
        /// A high watermark was reached: send FLOW SLOW_DOWN.
        case slowDown
        /// A hard limit was reached: send ERROR OVERLOADED and close.
        case overloaded
    }

    struct Limits: Sendable {
        var highMessages: Int
        var highBytes: Int
        var lowMessages: Int
        var lowBytes: Int
        var hardMessages: Int
        var hardBytes: Int

        init(_ configuration: FlowControlConfiguration) {
            self.highMessages = configuration.highWatermarkMessages
            self.highBytes = configuration.highWatermarkBytes
            self.lowMessages = configuration.lowWatermarkMessages
            self.lowBytes = configuration.lowWatermarkBytes
            self.hardMessages = configuration.effectiveHardLimitMessages
            self.hardBytes = configuration.effectiveHardLimitBytes
        }
    }

    let limits: Limits
    private(set) var messages = 0
    private(set) var bytes = 0
    private(set) var peakMessages = 0
    private(set) var peakBytes = 0
    /// SLOW_DOWN was sent and RESUME not yet.
    private(set) var peerPaused = false

    init(limits: Limits) {
        self.limits = limits
    }

    /// A message of `size` payload bytes was queued.
    mutating func pushed(size: Int) -> PushResult {
        self.messages += 1
        self.bytes += size
        self.peakMessages = max(self.peakMessages, self.messages)
        self.peakBytes = max(self.peakBytes, self.bytes)
        if self.messages >= self.limits.hardMessages || self.bytes >= self.limits.hardBytes {
            return .overloaded
        }
        if !self.peerPaused, self.messages >= self.limits.highMessages || self.bytes >= self.limits.highBytes {
            self.peerPaused = true
            return .slowDown
        }
        return .queued
    }

    /// The application took a message of `size` payload bytes; returns whether RESUME is due
    /// (the queue is back under both low watermarks after a SLOW_DOWN).
    mutating func popped(size: Int) -> Bool {
        self.messages -= 1
        self.bytes -= size
        guard self.peerPaused, self.messages <= self.limits.lowMessages, self.bytes <= self.limits.lowBytes else {
            return false
        }
        self.peerPaused = false
        return true
    }
}
