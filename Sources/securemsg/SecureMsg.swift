import ArgumentParser
import Foundation
import Logging

@main
struct SecureMsg: AsyncParsableCommand {
    /// The package's version: the newest entry of CHANGELOG.md, and the git tag of its release.
    static let versionNumber = "0.2.0"
    /// What `--version` prints.
    static let version = "securemsg \(versionNumber) (smsg/1)"

    static let configuration = CommandConfiguration(
        commandName: "securemsg",
        abstract: "TLS messaging over the system's OpenSSL.",
        version: version,
        subcommands: [
            Demo.self, CertsCommand.self, LeaderCommand.self, CollaboratorCommand.self, Bench.self,
        ]
    )

    /// Three outcomes, each with its exit status:
    /// - help (`--help`, `-h`, `help SUBCOMMAND`) and `--version` print to standard output and
    ///   exit 0;
    /// - arguments that do not parse print the error and the usage, and exit 64;
    /// - a command that fails once running (a certificate file missing, a setting refused)
    ///   prints one line naming the problem and exits 1, without the usage, which would only
    ///   hide it.
    ///
    /// The parser reports help both when parsing (`--help`) and when running (`help leader`
    /// runs a command that throws for it): errors that belong to the parser are told apart by
    /// the exit status it gives them, never by their text.
    static func main() async {
        // What logs without a logger of its own (a bench client's sessions): warnings and
        // errors, on standard error, never mixed into a command's output on standard output.
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exit(withError: error)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var command = command
                try command.run()
            }
        } catch {
            if Self.belongsToParser(error) {
                exit(withError: error)
            }
            FileHandle.standardError.write(Data(Self.failureLine(error).utf8))
            Foundation.exit(1)
        }
    }

    /// Whether the argument parser handles `error` itself: help, `--version`, an exit status
    /// chosen by a command, or an error in the arguments. Every other error is a failure of the
    /// command once running.
    static func belongsToParser(_ error: any Error) -> Bool {
        if error is ExitCode || error is CleanExit {
            return true
        }
        // A command's own refusal once running (a setting that cannot be used): one line.
        // `validate()` runs while parsing, so its errors never come here.
        if error is ValidationError {
            return false
        }
        // The parser's own errors (help asked for by `help SUBCOMMAND`) are of a type it does
        // not export; it gives them an exit status other than 1.
        return Self.exitCode(for: error) != .failure
    }

    /// The line a failed command prints: "Error: " and what went wrong, on one line.
    static func failureLine(_ error: any Error) -> String {
        let text = Self.sentence(error).split(whereSeparator: \.isNewline).joined(separator: " ")
        return "Error: \(text)\n"
    }

    /// An error as a person reads it. Foundation's file errors describe themselves as a
    /// dictionary dump: their text, then the POSIX cause and the path, says the same.
    static func sentence(_ error: any Error, namingPath: Bool = true) -> String {
        if let error = error as? CocoaError {
            var text = error.localizedDescription
            if let posix = error.userInfo[NSUnderlyingErrorKey] as? POSIXError {
                text = String(cString: strerror(posix.code.rawValue))
            }
            if namingPath, let path = error.filePath {
                text += " (\(path))"
            }
            return text
        }
        return "\(error)"
    }
}
