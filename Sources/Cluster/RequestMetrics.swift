public import CoreMetrics
import Messaging
import NIOConcurrencyHelpers

/// Requests counted by topic and outcome, with their latency, on both sides:
///
/// - `smsg_requests_total{side, topic, code}`: `side` is `served` (a REQUEST the router
///   answered, or left unanswered because its requester gave up: `CANCELLED`) or `made` (a
///   request this node sent); `code` is `OK` or the outcome's name (`NO_HANDLER`,
///   `DEADLINE_EXCEEDED`, …; every application code is `APPLICATION`).
/// - `smsg_request_duration_seconds{side, topic}`: from the REQUEST's arrival to its answer
///   (served), or from the call to its outcome (made).
///
/// The `topic` label is bounded: a topic served outside ``RequestMetrics/Topics`` is counted
/// as `other`, so peers that make up topics cannot grow the number of series. Topics of
/// requests made are this node's own (its code names them): with ``Topics/handled`` they are
/// labelled as they are; with ``Topics/only(_:)`` the set applies to them too.
public struct RequestMetrics: Sendable {
    /// Which topics get a label of their own.
    public enum Topics: Sendable, Hashable {
        /// The topics that have a handler on this node (the application's code bounds them);
        /// any other topic is `other`.
        case handled
        /// These topics; any other is `other`.
        case only(Set<String>)
    }

    /// Where the metrics go.
    public let factory: any MetricsFactory
    /// Which topics get a label of their own.
    public let topics: Topics

    private let cache = NIOLockedValueBox([Key: (counter: Counter, timer: Timer?)]())

    private struct Key: Hashable {
        var side: String
        var topic: String
        var code: String
    }

    /// - Parameters:
    ///   - factory: where the metrics go (default: the bootstrapped `MetricsSystem`).
    ///   - topics: which topics get a label of their own; ``Topics/handled`` by default.
    public init(factory: any MetricsFactory = MetricsSystem.factory, topics: Topics = .handled) {
        self.factory = factory
        self.topics = topics
    }

    /// The label of `topic`: itself when it is one of ``topics`` (or, for ``Topics/handled``,
    /// when `isHandled` says it has a handler), else `other`.
    func label(of topic: String, isHandled: (String) -> Bool) -> String {
        switch self.topics {
        case .handled: isHandled(topic) ? topic : "other"
        case .only(let topics): topics.contains(topic) ? topic : "other"
        }
    }

    /// The `code` label of an outcome: `OK` for an answer, else the code's name, one
    /// `APPLICATION` for all application codes.
    static func codeLabel(_ outcome: RequestError.Code?) -> String {
        guard let outcome else { return "OK" }
        return outcome.isApplication ? "APPLICATION" : outcome.description
    }

    /// Counts one request and records how long it took (when it was timed).
    func record(side: String, topic: String, code: RequestError.Code?, duration: Duration?) {
        let key = Key(side: side, topic: topic, code: Self.codeLabel(code))
        let metrics = self.cache.withLockedValue { cache in
            if let made = cache[key] { return made }
            let counter = Counter(
                label: "smsg_requests_total",
                dimensions: [("side", key.side), ("topic", key.topic), ("code", key.code)],
                factory: self.factory
            )
            let timer = Timer(
                label: "smsg_request_duration_seconds",
                dimensions: [("side", key.side), ("topic", key.topic)],
                preferredDisplayUnit: .seconds,
                factory: self.factory
            )
            cache[key] = (counter, timer)
            return (counter, timer)
        }
        metrics.counter.increment()
        if let duration {
            metrics.timer?.record(duration: duration)
        }
    }
}

extension Timer {
    fileprivate func record(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
