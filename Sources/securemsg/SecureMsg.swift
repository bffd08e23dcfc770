import ArgumentParser
import Foundation

@main
struct SecureMsg: AsyncParsableCommand {
    /// What `--version` prints.
    static let version = "securemsg 0.1.0 (smsg/1)"

    static let configuration = CommandConfiguration(
        commandName: "securemsg",
        abstract: "TLS messaging over the system's OpenSSL.",
        version: version,
        subcommands: [
            Demo.self, CertsCommand.self, LeaderCommand.self, CollaboratorCommand.self, Bench.self,
        ]
    )

    /// Arguments that do not parse get the usage (exit 64); a command that fails once running (a
    /// certificate file missing, a setting refused) prints one line naming the problem and
    /// exits 1, without the usage, which would only hide it.
    static func main() async {
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
        } catch let error as ExitCode {
            exit(withError: error)
        } catch let error as CleanExit {
            exit(withError: error)
        } catch {
            FileHandle.standardError.write(Data(Self.failureLine(error).utf8))
            Foundation.exit(1)
        }
    }

    /// The line a failed command prints: "Error: " and what went wrong, on one line.
    static func failureLine(_ error: any Error) -> String {
        let text = "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
        return "Error: \(text)\n"
    }
}
