import NIOCore

/// Bounds on what a session buffers, both ways, and how it paces a peer (PROTOCOL.md "Flow
/// control").
///
/// Inbound: received DATA waits in a queue until the application takes it. When the queue
/// reaches either high watermark the session sends FLOW SLOW_DOWN; when both counts are back at
/// or below the low watermarks it sends FLOW RESUME; a peer that keeps sending until either
/// hard limit is reached gets ERROR OVERLOADED and is closed. The session keeps reading
/// meanwhile, so PING/PONG and other control frames keep flowing.
///
/// Outbound: bytes waiting to be written are bounded by the channel's write-buffer
/// watermarks. `send` waits while the channel is over its high watermark or the peer said
/// SLOW_DOWN; `trySend` and broadcasts refuse instead of queueing. A peer that takes none of
/// our bytes for `slowConsumerTimeout` is closed with ERROR OVERLOADED.
public struct FlowControlConfiguration: Sendable, Hashable {
    /// SLOW_DOWN when this many messages are queued.
    public var highWatermarkMessages: Int = 1024
    /// SLOW_DOWN when this many payload bytes are queued.
    public var highWatermarkBytes: Int = 16 << 20
    /// RESUME when at most this many messages are queued (and bytes at most `lowWatermarkBytes`).
    public var lowWatermarkMessages: Int = 256
    /// RESUME when at most this many bytes are queued (and messages at most `lowWatermarkMessages`).
    public var lowWatermarkBytes: Int = 4 << 20
    /// OVERLOADED at this many queued messages; `nil` means twice the high watermark.
    public var hardLimitMessages: Int?
    /// OVERLOADED at this many queued bytes; `nil` means twice the high watermark.
    public var hardLimitBytes: Int?

    /// Outbound bytes above which the channel is not writable and `send` waits.
    public var writeBufferHighWatermark: Int = 1 << 20
    /// Outbound bytes at or below which the channel is writable again.
    public var writeBufferLowWatermark: Int = 256 << 10
    /// How long the channel may stay unwritable (the peer reads nothing) before the peer is
    /// closed as a slow consumer with ERROR OVERLOADED.
    public var slowConsumerTimeout: Duration = .seconds(30)

    /// Optional per-session rate limit on what the peer sends.
    public var rateLimit: RateLimit?

    public init() {}

    /// The message hard limit in force.
    public var effectiveHardLimitMessages: Int { self.hardLimitMessages ?? 2 * self.highWatermarkMessages }
    /// The byte hard limit in force.
    public var effectiveHardLimitBytes: Int { self.hardLimitBytes ?? 2 * self.highWatermarkBytes }
}

/// A token-bucket limit on the DATA a peer sends, in messages and/or bytes per second.
///
/// Policy: while the peer is over the limit the session stops reading from it (TCP then
/// pushes back on the peer); reading resumes as the bucket refills. A peer that is still over
/// the limit after `gracePeriod` of continuous throttling gets ERROR OVERLOADED and is closed.
/// The bucket holds one second's worth, so short bursts pass.
public struct RateLimit: Sendable, Hashable {
    /// DATA messages per second, or `nil` for no message limit.
    public var messagesPerSecond: Double?
    /// DATA payload bytes per second, or `nil` for no byte limit.
    public var bytesPerSecond: Double?
    /// How long a peer may stay over the limit before it is closed.
    public var gracePeriod: Duration

    public init(messagesPerSecond: Double? = nil, bytesPerSecond: Double? = nil, gracePeriod: Duration = .seconds(5)) {
        self.messagesPerSecond = messagesPerSecond
        self.bytesPerSecond = bytesPerSecond
        self.gracePeriod = gracePeriod
    }
}
