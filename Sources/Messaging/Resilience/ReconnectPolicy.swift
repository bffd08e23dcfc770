/// When to try connecting again after a connection is lost or refused: exponential backoff
/// with full jitter.
///
/// Attempt *n* (1 for the first retry) waits a random time, uniform between zero and
/// `min(maximumDelay, initialDelay × multiplierⁿ⁻¹)`. Full jitter spreads the reconnects of
/// many clients that lost the same server, so they do not all come back at once. After
/// `maximumAttempts` retries (if set) the client gives up.
public struct ReconnectPolicy: Sendable, Hashable {
    /// The ceiling of the first retry's delay.
    public var initialDelay: Duration
    /// How much the ceiling grows with each attempt; at least 1.
    public var multiplier: Double
    /// The largest ceiling.
    public var maximumDelay: Duration
    /// How many retries before giving up; `nil` for no limit.
    public var maximumAttempts: Int?
    /// Whether to keep trying after the server refused who this client is (ERROR
    /// UNAUTHORIZED, or a certificate refused either way: ``MessagingError/isIdentityRefusal``).
    /// By default the client gives up at once: the same certificate and node_id cannot
    /// succeed, and retrying forever would hide the mistake. (A collaborator that follows an
    /// election always retries: another leader may be elected.)
    public var retriesIdentityRefusals = false

    public init(
        initialDelay: Duration = .milliseconds(100),
        multiplier: Double = 2,
        maximumDelay: Duration = .seconds(30),
        maximumAttempts: Int? = nil
    ) {
        precondition(initialDelay >= .zero, "initialDelay must not be negative")
        precondition(multiplier >= 1, "multiplier must be at least 1")
        precondition(maximumDelay >= initialDelay, "maximumDelay must be at least initialDelay")
        precondition(maximumAttempts.map { $0 >= 0 } ?? true, "maximumAttempts must not be negative")
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maximumDelay = maximumDelay
        self.maximumAttempts = maximumAttempts
    }

    /// Never reconnect.
    public static let never = ReconnectPolicy(maximumAttempts: 0)

    /// The upper end of attempt `attempt`'s delay range (attempts count from 1).
    public func ceiling(forAttempt attempt: Int) -> Duration {
        precondition(attempt >= 1, "attempts count from 1")
        let initial = Self.seconds(self.initialDelay)
        let maximum = Self.seconds(self.maximumDelay)
        // Grow step by step and stop at the maximum, so large attempt numbers cannot overflow.
        var ceiling = initial
        var step = 1
        while step < attempt, ceiling < maximum {
            ceiling *= self.multiplier
            step += 1
        }
        return .nanoseconds(Int64(min(ceiling, maximum) * 1e9))
    }

    /// The delay before attempt `attempt`, or `nil` when the policy has given up.
    public func delay(
        forAttempt attempt: Int,
        using generator: inout some RandomNumberGenerator
    ) -> Duration? {
        if let maximumAttempts = self.maximumAttempts, attempt > maximumAttempts {
            return nil
        }
        let ceiling = self.ceiling(forAttempt: attempt)
        let nanoseconds = Int64(Self.seconds(ceiling) * 1e9)
        guard nanoseconds > 0 else { return .zero }
        return .nanoseconds(Int64.random(in: 0...nanoseconds, using: &generator))
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
