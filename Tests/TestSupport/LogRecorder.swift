public import Logging
import NIOConcurrencyHelpers

/// Log records kept in memory, for a test to read what was logged: ``logger`` writes here.
public final class LogRecorder: Sendable {
    /// One record: its level, its message and its metadata (the logger's and the call's).
    public struct Record: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: Logger.Metadata
    }

    private let records = NIOLockedValueBox<[Record]>([])

    public init() {}

    /// Every record so far, in order.
    public var all: [Record] { self.records.withLockedValue { $0 } }

    /// The records at `notice`.
    public var notices: [Record] { self.all.filter { $0.level == .notice } }

    /// A logger at `trace` that records here.
    public var logger: Logger {
        Logger(label: "test") { _ in Handler(recorder: self) }
    }

    private struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged = self.metadata
            merged.merge(event.metadata ?? [:]) { $1 }
            let record = Record(level: event.level, message: "\(event.message)", metadata: merged)
            self.recorder.records.withLockedValue { $0.append(record) }
        }
    }
}
