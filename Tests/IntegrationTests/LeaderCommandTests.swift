import Foundation
import SMSGTestSupport
import Testing

/// `securemsg leader` and `securemsg collaborator` as real processes.
@Suite("securemsg leader and collaborator")
struct LeaderCommandTests {
    /// `securemsg leader` with mutual TLS on a free port, once it listens.
    static func startLeader() async throws -> (ChildProcess, Int) {
        let certs = BenchServerTests.certificates
        let leader = try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key",
                "--ca", "\(certs)/ca.pem", "--require-client-cert",
            ]
        )
        await leader.waitForOutput(containing: "listening on 127.0.0.1:")
        let port = try #require(BenchServerTests.listeningPort(leader.output))
        return (leader, port)
    }

    /// Whether this machine has the IPv6 loopback address.
    static let hasIPv6Loopback: Bool = {
        let interfaces = (try? String(contentsOfFile: "/proc/net/if_inet6", encoding: .utf8)) ?? ""
        return interfaces.split(separator: "\n").contains { $0.hasPrefix("00000000000000000000000000000001") }
    }()

    @Test(
        "an IPv6 listening address is printed in brackets, and a collaborator reaches it",
        .enabled(if: LeaderCommandTests.hasIPv6Loopback, "this machine has no IPv6 loopback")
    )
    func ipv6Listening() async throws {
        let certs = BenchServerTests.certificates
        let leader = try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "[::1]:0", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key",
                "--ca", "\(certs)/ca.pem", "--require-client-cert",
            ]
        )
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "listening on [::1]:")
        let line = try #require(leader.output.split(separator: "\n").first { $0.hasPrefix("listening on") })
        let port = try #require(Int(line.dropFirst("listening on [::1]:".count)))
        let collaborator = try ChildProcess(
            BenchServerTests.executable,
            [
                "collaborator", "--leader", "[::1]:\(port)", "--server-name", "localhost", "--id", "collab-1",
                "--cert", "\(certs)/collab-1.pem", "--key", "\(certs)/collab-1.key", "--ca", "\(certs)/ca.pem",
            ]
        )
        defer { collaborator.terminate() }
        await leader.waitForOutput(containing: "joined collab-1")
        collaborator.signal(SIGTERM)
        #expect(await collaborator.waitForExit() == 0)
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }

    @Test("a collaborator joins, leaves on SIGTERM, and the leader stops on SIGTERM")
    func leaderAndCollaborator() async throws {
        let certs = BenchServerTests.certificates
        let (leader, port) = try await Self.startLeader()
        defer { leader.terminate() }

        let collaborator = try ChildProcess(
            BenchServerTests.executable,
            [
                "collaborator", "--leader", "127.0.0.1:\(port)", "--id", "collab-1", "--cert", "\(certs)/collab-1.pem",
                "--key", "\(certs)/collab-1.key", "--ca", "\(certs)/ca.pem", "--status", "ready",
            ]
        )
        defer { collaborator.terminate() }
        await collaborator.waitForOutput(containing: "collab-1: connected")
        await leader.waitForOutput(containing: "joined collab-1 certificate=collab-1 status=ready")

        collaborator.signal(SIGTERM)
        #expect(await collaborator.waitForExit() == 0)
        await leader.waitForOutput(containing: "left collab-1 (goodbye)")

        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }

    @Test("an impostor is refused: the leader logs a notice with its address, the impostor gives up with one line")
    func impostor() async throws {
        let certs = BenchServerTests.certificates
        let (leader, port) = try await Self.startLeader()
        defer { leader.terminate() }
        let impostor = try ChildProcess(
            BenchServerTests.executable,
            [
                "collaborator", "--leader", "127.0.0.1:\(port)", "--id", "collab-1", "--cert", "\(certs)/collab-2.pem",
                "--key", "\(certs)/collab-2.key", "--ca", "\(certs)/ca.pem",
            ]
        )
        defer { impostor.terminate() }
        // Refused for its identity: it stops trying at once.
        #expect(await impostor.waitForExit() == 1)
        let errorLine = try #require(impostor.output.split(separator: "\n").last)
        #expect(errorLine.hasPrefix("Error: "), "\(impostor.output)")
        #expect(errorLine.contains("node_id does not match the client certificate"), "\(impostor.output)")
        #expect(errorLine.contains("not retrying"), "\(impostor.output)")
        // A sentence for people, not a type's dump.
        #expect(!errorLine.contains("MessagingError"), "\(impostor.output)")
        #expect(!impostor.output.contains("reconnecting"), "\(impostor.output)")

        await leader.waitForOutput(containing: "notice refused a connection")
        let notice = try #require(leader.output.split(separator: "\n").first { $0.contains("refused a connection") })
        #expect(notice.contains("reason=identity_mismatch"), "\(notice)")
        #expect(notice.contains("remote=127.0.0.1:"), "\(notice)")
        #expect(!leader.output.contains("joined"))
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }
}
