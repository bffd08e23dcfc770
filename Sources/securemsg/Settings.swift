import ArgumentParser
import Configuration
import Foundation
import NIOConcurrencyHelpers
import SystemPackage

/// A command's settings from three places, read through swift-configuration: the command
/// line flags, `SMSG_*` environment variables (the key in upper case), and a JSON config file
/// (`--config FILE`, one object whose keys are the flags' names in snake case). A
/// `ConfigReader` asks them in that order and the first that has a value wins.
///
/// Every value is checked, and an error names where the value came from, the key, and what is
/// wrong with it. Secrets (`key_passphrase`) are marked secret in every provider and are never
/// a flag.
struct SettingsSource {
    /// Where a value was found, for error messages.
    enum Origin: CustomStringConvertible {
        case flag(String)
        case environment(String)
        case file(String, key: String)

        /// Which place wins: a lower rank.
        var rank: Int {
            switch self {
            case .flag: 0
            case .environment: 1
            case .file: 2
            }
        }

        var description: String {
            switch self {
            case .flag(let name): "--\(name)"
            case .environment(let name): "environment variable \(name)"
            case .file(let path, let key): "config key \"\(key)\" in \(path)"
            }
        }
    }

    /// The keys whose values are secret.
    static let secretKeys: Set<String> = ["key_passphrase"]

    let knownKeys: [String]
    let filePath: String?
    private let reader: ConfigReader
    private let lookups: Lookups
    /// The file's values as JSON gave them, to show a value of the wrong type.
    private let file: [String: Any]
    private let environment: [String: String]
    private static let flagsProvider = "flags"

    /// Reads the config file at `path`, if any, and refuses keys the command does not know.
    ///
    /// - Parameters:
    ///   - knownKeys: Every key the command takes.
    ///   - flags: The options given on the command line, by key.
    ///   - switches: The boolean flags given on the command line, by key.
    ///   - path: The JSON config file, if any.
    ///   - environment: The environment to read `SMSG_*` from.
    init(
        knownKeys: [String],
        flags: [String: String?],
        switches: [String: Bool] = [:],
        configFile path: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws {
        self.knownKeys = knownKeys
        self.filePath = path
        self.environment = environment
        var given: [AbsoluteConfigKey: ConfigValue] = [:]
        for case (let key, let value?) in flags {
            given[AbsoluteConfigKey([key])] = ConfigValue(.string(value), isSecret: Self.secretKeys.contains(key))
        }
        for (key, on) in switches where on {
            given[AbsoluteConfigKey([key])] = ConfigValue(.bool(true), isSecret: false)
        }
        let secretVariables = Set(Self.secretKeys.map(Self.environmentName(of:)))
        var providers: [any ConfigProvider] = [
            InMemoryProvider(name: Self.flagsProvider, values: given),
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .specific(secretVariables)
            ).prefixKeys(with: ConfigKey(["smsg"])),
        ]
        if let path {
            self.file = try Self.readObject(path, knownKeys: knownKeys)
            providers.append(
                try await FileProvider<JSONSnapshot>(
                    parsingOptions: JSONSnapshot.ParsingOptions(secretsSpecifier: .specific(Self.secretKeys)),
                    filePath: FilePath(path)
                )
            )
        } else {
            self.file = [:]
        }
        self.lookups = Lookups()
        self.reader = ConfigReader(providers: providers, accessReporter: self.lookups)
    }

    /// The JSON object in the file, checked to hold only known keys (the reader cannot list
    /// keys, and a misspelt key must not pass unnoticed).
    private static func readObject(_ path: String, knownKeys: [String]) throws -> [String: Any] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ValidationError("cannot read the config file \(path): \(error.localizedDescription)")
        }
        guard let parsed = try? JSONSerialization.jsonObject(with: data) else {
            throw ValidationError("the config file \(path) is not valid JSON")
        }
        guard let object = parsed as? [String: Any] else {
            throw ValidationError("the config file \(path) must hold one JSON object")
        }
        for key in object.keys.sorted() where !knownKeys.contains(key) {
            throw ValidationError(
                "unknown key \"\(key)\" in the config file \(path); known keys: \(knownKeys.joined(separator: ", "))"
            )
        }
        // The reader takes a null as no value and an object as keys of its own: either would
        // quietly leave the setting at its default.
        for (key, value) in object.sorted(by: { $0.key < $1.key }) where value is NSNull || value is [String: Any] {
            throw ValidationError(
                "\(Origin.file(path, key: key)): expected a value, got \(value is NSNull ? "null" : "an object")"
            )
        }
        return object
    }

    static func environmentName(of key: String) -> String {
        "SMSG_" + key.uppercased()
    }

    private static func flagName(of key: String) -> String {
        key.replacingOccurrences(of: "_", with: "-")
    }

    /// A string setting and where it came from.
    func string(_ key: String) throws -> (String, Origin)? {
        let value = self.reader.string(forKey: ConfigKey([key]), isSecret: Self.secretKeys.contains(key))
        let origin = try self.origin(of: key, expected: "a string")
        guard let value, let origin else { return nil }
        return (value, origin)
    }

    /// A string setting that must be given somewhere.
    func requiredString(_ key: String) throws -> String {
        guard let (value, origin) = try self.string(key) else { throw Self.missing(key) }
        guard !value.isEmpty else { throw ValidationError("\(origin): must not be empty") }
        return value
    }

    /// A setting that must be given somewhere, checked by `parse`.
    func requiredParsed<T>(_ key: String, _ parse: (String) throws -> T) throws -> T {
        guard let value = try self.parsed(key, parse) else { throw Self.missing(key) }
        return value
    }

    private static func missing(_ key: String) -> ValidationError {
        ValidationError(
            "\(key) is required: give --\(Self.flagName(of: key)), \(Self.environmentName(of: key)) "
                + "or \"\(key)\" in a config file"
        )
    }

    /// A string setting checked by `parse`, whose error becomes "origin: message".
    func parsed<T>(_ key: String, _ parse: (String) throws -> T) throws -> T? {
        guard let (value, origin) = try self.string(key) else { return nil }
        do {
            return try parse(value)
        } catch let error as ValidationError {
            throw ValidationError("\(origin): \(error.message)")
        }
    }

    /// A switch: off unless a flag, the environment (true/false, yes/no, 1/0) or the file
    /// (true/false; swift-configuration also takes a JSON number, non-zero for true) says
    /// otherwise.
    func bool(_ key: String) throws -> Bool {
        let value = self.reader.bool(forKey: ConfigKey([key]))
        guard try self.origin(of: key, expected: "true or false") != nil else { return false }
        return value ?? false
    }

    /// Where the reader found `key`'s value, or `nil` if nowhere. A provider that had the key
    /// with a value of the wrong type is an error naming it.
    private func origin(of key: String, expected: String) throws -> Origin? {
        guard let event = self.lookups.last(key) else { return nil }
        for result in event.providerResults {
            let origin: Origin
            if result.providerName.contains(Self.flagsProvider) && result.providerName.hasPrefix("InMemoryProvider") {
                origin = .flag(Self.flagName(of: key))
            } else if result.providerName.contains("EnvironmentVariablesProvider") {
                origin = .environment(Self.environmentName(of: key))
            } else {
                origin = .file(self.filePath ?? "?", key: key)
            }
            switch result.result {
            case .success(let lookup) where lookup.value != nil:
                return origin
            case .success:
                continue
            case .failure:
                let shown: String
                switch origin {
                case .environment(let name):
                    let value =
                        Self.secretKeys.contains(key) ? EffectiveSettings.redacted : (self.environment[name] ?? "")
                    shown = "\"\(value)\""
                default:
                    shown =
                        Self.secretKeys.contains(key)
                        ? EffectiveSettings.redacted : (self.file[key].map(Self.show) ?? "?")
                }
                throw ValidationError("\(origin): expected \(expected), got \(shown)")
            }
        }
        return nil
    }

    private static func show(_ value: Any) -> String {
        if let text = value as? String {
            return "\"\(text)\""
        }
        if let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed]),
            let text = String(data: data, encoding: .utf8)
        {
            return text
        }
        return "\(value)"
    }
}

/// What the reader reported for each key it was asked: which provider answered, and how.
private final class Lookups: AccessReporter, Sendable {
    private let events = NIOLockedValueBox<[String: AccessEvent]>([:])

    func report(_ event: AccessEvent) {
        let key = event.metadata.key.components.joined(separator: ".")
        self.events.withLockedValue { $0[key] = event }
    }

    func last(_ key: String) -> AccessEvent? {
        self.events.withLockedValue { $0[key] }
    }
}

/// The effective settings of a command, printed as one JSON object (`--print-config`): the
/// same keys a config file takes, so the output can be used as one (secrets excepted).
struct EffectiveSettings {
    /// What `--print-config` shows for a secret.
    static let redacted = "<redacted>"

    private var values: [String: Any] = [:]

    mutating func set(_ key: String, _ value: String?) {
        if let value {
            self.values[key] = value
        }
    }

    mutating func set(_ key: String, _ value: Bool) {
        self.values[key] = value
    }

    var json: String {
        let data =
            (try? JSONSerialization.data(withJSONObject: self.values, options: [.sortedKeys, .prettyPrinted])) ?? Data()
        return String(data: data, encoding: .utf8) ?? "{}"
    }
}
