import Foundation
import SMSGTestSupport
import Testing

/// What every command of `securemsg` does with `--help`, with arguments that do not parse, and
/// with a failure once running: help and exit 0; the error, the usage and exit 64; one line and
/// exit 1.
@Suite("securemsg help and exit statuses")
struct HelpTests {
    /// Every command, as the words that name it.
    static let commands: [[String]] = [
        [], ["demo"], ["certs"], ["certs", "ca"], ["certs", "issue"], ["leader"], ["collaborator"], ["bench"],
        ["bench", "server"], ["bench", "client"], ["bench", "push"],
    ]

    static func run(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
        let process = try ChildProcess(BenchServerTests.executable, arguments)
        let status = await process.waitForExit()
        return (status, process.output)
    }

    @Test("--help, -h and help SUBCOMMAND print the help and exit 0", arguments: HelpTests.commands)
    func help(_ command: [String]) async throws {
        var forms = [command + ["--help"], command + ["-h"]]
        if !command.isEmpty {
            forms.append(["help"] + command)
        }
        for form in forms {
            let (status, output) = try await Self.run(form)
            #expect(status == 0, "securemsg \(form.joined(separator: " ")): \(output)")
            #expect(output.contains("USAGE: securemsg \(command.joined(separator: " "))"), "\(output)")
            #expect(output.contains("OVERVIEW: "), "\(output)")
            #expect(!output.contains("Error"), "\(output)")
        }
    }

    @Test("an option that does not exist: the error and the usage, exit 64", arguments: HelpTests.commands)
    func unknownOption(_ command: [String]) async throws {
        let (status, output) = try await Self.run(command + ["--no-such-option"])
        #expect(status == 64, "\(output)")
        // A command with a required argument names that one first.
        #expect(output.hasPrefix("Error: "), "\(output)")
        #expect(output.contains("Usage: securemsg"), "\(output)")
    }

    /// Arguments that parse, and a failure once the command runs.
    static let failures: [(arguments: [String], line: String)] = [
        (["demo", "--certs", "/proc/no-such-dir"], "cannot create the directory /proc/no-such-dir: No such file"),
        (["certs", "ca", "--dir", "/proc/no-such-dir"], "cannot create the directory /proc/no-such-dir: No such file"),
        (["certs", "issue", "node-1", "--dir", "/nonexistent"], "no certificate authority in /nonexistent"),
        (
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "/nonexistent/a.pem", "--key", "/nonexistent/a.key",
                "--ca", "/nonexistent/ca.pem",
            ], "TLS configuration refused: cannot open the certificate chain file /nonexistent/a.pem"
        ),
        (
            [
                "collaborator", "--leader", "127.0.0.1:1", "--id", "c-1", "--cert", "/nonexistent/a.pem", "--key",
                "/nonexistent/a.key", "--ca", "/nonexistent/ca.pem",
            ], "TLS configuration refused: cannot open the certificate chain file /nonexistent/a.pem"
        ),
        (
            [
                "bench", "server", "--listen", "127.0.0.1:0", "--cert", "/nonexistent/a.pem", "--key",
                "/nonexistent/a.key",
            ],
            "TLS configuration refused: cannot open the certificate chain file /nonexistent/a.pem"
        ),
    ]

    @Test("a failure once running: one line naming it, no usage, exit 1")
    func runtimeFailures() async throws {
        let closed = ClosedPort()
        for failure in Self.failures {
            let arguments = failure.arguments.map { $0 == "127.0.0.1:1" ? "127.0.0.1:\(closed.port)" : $0 }
            let (status, output) = try await Self.run(arguments)
            let command = arguments.prefix(2).joined(separator: " ")
            #expect(status == 1, "\(command): \(output)")
            let lines = output.split(separator: "\n")
            #expect(lines.count == 1, "\(command): \(output)")
            #expect(output.hasPrefix("Error: \(failure.line)"), "\(command): \(output)")
            #expect(!output.contains("Usage"), "\(command): \(output)")
            // A sentence: no type names, no Foundation dictionaries.
            #expect(!output.contains("Error("), "\(command): \(output)")
            #expect(!output.contains("Domain="), "\(command): \(output)")
        }
        let port = closed.port
        for command in [["bench", "client", "--workload", "echo", "--duration", "1"], ["bench", "push"]] {
            let (status, output) = try await Self.run(command + ["--connect", "127.0.0.1:\(port)", "--plaintext"])
            #expect(status == 1, "\(output)")
            #expect(output == "Error: connection refused by 127.0.0.1:\(port)\n", "\(output)")
        }
    }
}
