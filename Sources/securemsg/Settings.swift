import ArgumentParser
import Foundation

/// A command's settings from three places, the first that has a value winning: the command
/// line flag, an `SMSG_*` environment variable (the key in upper case), and a JSON config file
/// (`--config FILE`, one object whose keys are the flags' names in snake case).
///
/// Every value is checked, and an error names where the value came from, the key, and what is
/// wrong with it.
struct SettingsSource {
    /// Where a value was found, for error messages.
    enum Origin: CustomStringConvertible {
        case flag(String)
        case environment(String)
        case file(String, key: String)

        var description: String {
            switch self {
            case .flag(let name): "--\(name)"
            case .environment(let name): "environment variable \(name)"
            case .file(let path, let key): "config key \"\(key)\" in \(path)"
            }
        }
    }

    let knownKeys: [String]
    let filePath: String?
    private let file: [String: Any]
    private let environment: [String: String]

    /// Reads the config file at `path`, if any; refuses keys the command does not know.
    init(
        knownKeys: [String],
        configFile path: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        self.knownKeys = knownKeys
        self.filePath = path
        self.environment = environment
        guard let path else {
            self.file = [:]
            return
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ValidationError("cannot read the config file \(path): \(error.localizedDescription)")
        }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data)
        } catch {
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
        self.file = object
    }

    static func environmentName(of key: String) -> String {
        "SMSG_" + key.uppercased()
    }

    private static func flagName(of key: String) -> String {
        key.replacingOccurrences(of: "_", with: "-")
    }

    /// A string setting.
    func string(_ key: String, flag: String?) throws -> (String, Origin)? {
        if let flag {
            return (flag, .flag(Self.flagName(of: key)))
        }
        let variable = Self.environmentName(of: key)
        if let value = self.environment[variable] {
            return (value, .environment(variable))
        }
        guard let value = self.file[key], let path = self.filePath else { return nil }
        guard let text = value as? String else {
            throw ValidationError("\(Origin.file(path, key: key)): expected a string, got \(Self.show(value))")
        }
        return (text, .file(path, key: key))
    }

    /// A string setting that must be given somewhere.
    func requiredString(_ key: String, flag: String?) throws -> String {
        guard let (value, origin) = try self.string(key, flag: flag) else { throw Self.missing(key) }
        guard !value.isEmpty else { throw ValidationError("\(origin): must not be empty") }
        return value
    }

    /// A setting that must be given somewhere, checked by `parse`.
    func requiredParsed<T>(_ key: String, flag: String?, _ parse: (String) throws -> T) throws -> T {
        guard let value = try self.parsed(key, flag: flag, parse) else { throw Self.missing(key) }
        return value
    }

    private static func missing(_ key: String) -> ValidationError {
        ValidationError(
            "\(key) is required: give --\(Self.flagName(of: key)), \(Self.environmentName(of: key)) "
                + "or \"\(key)\" in a config file"
        )
    }

    /// A string setting checked by `parse`, whose error becomes "origin: message".
    func parsed<T>(_ key: String, flag: String?, _ parse: (String) throws -> T) throws -> T? {
        guard let (value, origin) = try self.string(key, flag: flag) else { return nil }
        do {
            return try parse(value)
        } catch let error as ValidationError {
            throw ValidationError("\(origin): \(error.message)")
        }
    }

    /// A switch: on when the flag is given, else from the environment or the file.
    func bool(_ key: String, flag: Bool) throws -> Bool {
        if flag {
            return true
        }
        let variable = Self.environmentName(of: key)
        if let value = self.environment[variable] {
            switch value.lowercased() {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off", "": return false
            default:
                throw ValidationError("\(Origin.environment(variable)): expected true or false, got \"\(value)\"")
            }
        }
        guard let value = self.file[key], let path = self.filePath else { return false }
        // Foundation hands JSON numbers over as NSNumbers that also cast to Bool: only a JSON
        // true or false (a boxed boolean) is a switch.
        let isBoolean = type(of: value) == Bool.self || String(describing: type(of: value)).contains("Boolean")
        guard isBoolean, let flag = value as? Bool else {
            throw ValidationError("\(Origin.file(path, key: key)): expected true or false, got \(Self.show(value))")
        }
        return flag
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

/// The effective settings of a command, printed as one JSON object (`--print-config`): the
/// same keys a config file takes, so the output can be used as one.
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
