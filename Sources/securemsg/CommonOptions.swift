import ArgumentParser
import Foundation
import Logging
import NIOConcurrencyHelpers

/// The settings `leader` and `collaborator` share: how much to log, the heartbeat, and the
/// private key's passphrase.
struct CommonOptions: ParsableArguments {
    static let keys = ["log_level", "heartbeat", "key_passphrase_file", "key_passphrase"]

    @Option(help: "What to log: trace, debug, info, notice (default: refusals, elections), warning, error, critical.")
    var logLevel: String?

    @Option(help: "Seconds between heartbeats (PING), e.g. 5 or 0.5 (default 5).")
    var heartbeat: String?

    @Option(
        help: """
            A file holding the private key's passphrase. The passphrase itself comes only from this \
            file, SMSG_KEY_PASSPHRASE or "key_passphrase" in a config file: never from a flag.
            """
    )
    var keyPassphraseFile: String?

    /// The flags given, by key (the passphrase itself has none).
    var flagValues: [String: String?] {
        ["log_level": self.logLevel, "heartbeat": self.heartbeat, "key_passphrase_file": self.keyPassphraseFile]
    }

    struct Values: CustomStringConvertible, CustomReflectable {
        var logLevel: Logger.Level = .notice
        var heartbeat: Duration?
        var keyPassphrase: String?

        /// The settings, with the passphrase redacted.
        var description: String {
            "log_level: \(self.logLevel), heartbeat: \(self.heartbeat.map { "\($0)" } ?? "default"), "
                + "key_passphrase: \(self.keyPassphrase == nil ? "none" : EffectiveSettings.redacted)"
        }

        /// What `dump` shows: the passphrase redacted.
        var customMirror: Mirror {
            Mirror(
                self,
                children: [
                    "logLevel": self.logLevel, "heartbeat": self.heartbeat as Any,
                    "keyPassphrase": self.keyPassphrase.map { _ in EffectiveSettings.redacted } as Any,
                ],
                displayStyle: .struct
            )
        }
    }

    func values(from source: SettingsSource, effective: inout EffectiveSettings) throws -> Values {
        var values = Values()
        if let level = try source.parsed("log_level", Self.level) {
            values.logLevel = level
            effective.set("log_level", level.rawValue)
        }
        if let (text, heartbeat) = try source.parsed("heartbeat", { ($0, try Self.heartbeat($0)) }) {
            values.heartbeat = heartbeat
            effective.set("heartbeat", text)
        }
        var file = try source.string("key_passphrase_file")
        var inline = try source.string("key_passphrase")
        if let (_, fileOrigin) = file, let (_, inlineOrigin) = inline {
            // Two keys for one thing: the one from the stronger place wins (flag, environment,
            // file); from the same place, it is ambiguous.
            switch fileOrigin.rank - inlineOrigin.rank {
            case ..<0: inline = nil
            case 1...: file = nil
            default:
                throw ValidationError(
                    "\(fileOrigin) and \(inlineOrigin) both give the key's passphrase: give one"
                )
            }
        }
        if let (path, origin) = file {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("\(origin): cannot read the passphrase file \(path)")
            }
            values.keyPassphrase = String(text.trimmingSuffix { $0 == "\n" || $0 == "\r" })
            effective.set("key_passphrase_file", path)
        } else if let (secret, _) = inline {
            values.keyPassphrase = secret
            effective.set("key_passphrase", EffectiveSettings.redacted)
        }
        return values
    }

    static func level(_ text: String) throws -> Logger.Level {
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError(
                "expected trace, debug, info, notice, warning, error or critical, got \"\(text)\""
            )
        }
        return level
    }

    static func heartbeat(_ text: String) throws -> Duration {
        guard let seconds = Double(text), seconds >= 0.05, seconds <= 3600 else {
            throw ValidationError("must be seconds from 0.05 to 3600, got \"\(text)\"")
        }
        return .milliseconds(Int64((seconds * 1e3).rounded()))
    }
}

extension StringProtocol {
    fileprivate func trimmingSuffix(while predicate: (Character) -> Bool) -> SubSequence {
        var end = self.endIndex
        while end > self.startIndex, predicate(self[self.index(before: end)]) {
            end = self.index(before: end)
        }
        return self[..<end]
    }
}

/// Log lines for an operator: "notice refused a connection reason=… remote=…", one per event,
/// handed to `write` (the leader's screen, or standard error).
struct OperatorLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level
    let write: @Sendable (String) -> Void

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = self.metadata
        merged.merge(event.metadata ?? [:]) { $1 }
        var line = "\(event.level) \(event.message)"
        for key in merged.keys.sorted() {
            line += " \(key)=\(merged[key]!)"
        }
        self.write(line)
    }

    /// A logger at `level` that writes through `write`.
    static func logger(_ label: String, level: Logger.Level, write: @escaping @Sendable (String) -> Void) -> Logger {
        var logger = Logger(label: label) { _ in OperatorLogHandler(logLevel: level, write: write) }
        logger.logLevel = level
        return logger
    }
}

/// Writes a line to standard error.
@Sendable func writeToStandardError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
