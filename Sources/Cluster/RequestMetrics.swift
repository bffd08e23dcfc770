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
/// The `topic` label is bounded, so that neither peers nor topics built from data can grow the
/// number of series: with ``Topics/handled`` (the default) a topic served is labelled only when
/// it has a handler, and the topics of requests made only for the first
/// ``madeTopicLimit`` seen; with ``Topics/only(_:)``, only the topics listed. Any other topic is
/// `other`.
public struct RequestMetrics: Sendable {
    /// Which topics get a label of their own.
    public enum Topics: Sendable, Hashable {
        /// Served: the topics that have a handler on this node (the application's code bounds
        /// them). Made: the first ``RequestMetrics/madeTopicLimit`` topics. Any other is `other`.
        case handled
        /// These topics; any other is `other`.
        case only(Set<String>)
    }

    /// Where the metrics go.
    public let factory: any MetricsFactory
    /// Which topics get a label of their own.
    public let topics: Topics

    /// How many topics of requests made get a label of their own with ``Topics/handled``.
    public static let madeTopicLimit = 64

    private struct Made: Sendable {
        var counters: [Key: Counter] = [:]
        var timers: [TimerKey: Timer] = [:]
        /// The topics of requests made that have a label of their own.
        var madeTopics: Set<String> = []
    }

    private let cache = NIOLockedValueBox(Made())

    private struct Key: Hashable {
        var side: String
        var topic: String
        var code: String
    }

    private struct TimerKey: Hashable {
        var side: String
        var topic: String
    }

    /// - Parameters:
    ///   - factory: where the metrics go (default: the bootstrapped `MetricsSystem`).
    ///   - topics: which topics get a label of their own; ``Topics/handled`` by default.
    public init(factory: any MetricsFactory = MetricsSystem.factory, topics: Topics = .handled) {
        self.factory = factory
        self.topics = topics
    }

    /// The label of a topic served: itself when it is one of ``topics`` (or, for
    /// ``Topics/handled``, when `isHandled` says it has a handler), else `other`.
    func label(of topic: String, isHandled: (String) -> Bool) -> String {
        switch self.topics {
        case .handled: isHandled(topic) ? topic : "other"
        case .only(let topics): topics.contains(topic) ? topic : "other"
        }
    }

    /// The label of the topic of a request made: itself when it is one of ``topics`` (or, for
    /// ``Topics/handled``, one of the first ``madeTopicLimit`` seen), else `other`.
    func madeLabel(of topic: String) -> String {
        switch self.topics {
        case .only(let topics):
            return topics.contains(topic) ? topic : "other"
        case .handled:
            return self.cache.withLockedValue { cache in
                if cache.madeTopics.contains(topic) { return topic }
                guard cache.madeTopics.count < Self.madeTopicLimit else { return "other" }
                cache.madeTopics.insert(topic)
                return topic
            }
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
        let timerKey = TimerKey(side: side, topic: topic)
        let (counter, timer) = self.cache.withLockedValue { cache in
            if let counter = cache.counters[key], let timer = cache.timers[timerKey] {
                return (counter, timer)
            }
            let counter =
                cache.counters[key]
                ?? Counter(
                    label: "smsg_requests_total",
                    dimensions: [("side", key.side), ("topic", key.topic), ("code", key.code)],
                    factory: self.factory
                )
            let timer =
                cache.timers[timerKey]
                ?? Timer(
                    label: "smsg_request_duration_seconds",
                    dimensions: [("side", side), ("topic", topic)],
                    preferredDisplayUnit: .seconds,
                    factory: self.factory
                )
            cache.counters[key] = counter
            cache.timers[timerKey] = timer
            return (counter, timer)
        }
        counter.increment()
        if let duration {
            timer.record(duration: duration)
        }
    }
}

extension Timer {
    fileprivate func record(duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
