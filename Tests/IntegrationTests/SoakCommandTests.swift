import Foundation
import SMSGTestSupport
import Testing

/// `smsg-soak soak` as a real process tree (an orchestrator, a leader process, swarm
/// processes), briefly: CI runs the 2-minute form through scripts/soak.sh.
@Suite("smsg-soak soak")
struct SoakCommandTests {
    /// The smsg-soak binary next to the test bundle (not part of the user-facing securemsg).
    static var executable: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return bundle.appendingPathComponent("smsg-soak").path
    }

    static let collaboratorCertificates: String = {
        let directory = "\(BenchServerTests.repositoryRoot)/.build/soak-certs"
        _ = try? runProcess("bash", ["\(BenchServerTests.repositoryRoot)/scripts/gen-soak-certs.sh", "6", directory])
        return directory
    }()

    @Test("a 12-second soak with kills and freezes passes its checks and reports its figures")
    func shortSoak() async throws {
        let soak = try ChildProcess(
            Self.executable,
            [
                "soak", "--duration", "12", "--collaborators", "6", "--swarms", "2", "--chaos-interval", "4",
                "--sample-interval", "2", "--seed", "7", "--certs", BenchServerTests.certificates,
                "--collaborator-certs", Self.collaboratorCertificates,
            ]
        )
        let status = await soak.waitForExit(timeout: 120)
        #expect(status == 0, "output: \(soak.output)")
        #expect(soak.output.contains("soak: passed"))
        let line = try #require(soak.output.split(separator: "\n").first { $0.hasPrefix("{") })
        let report = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let ledger = try #require(report["ledger"] as? [String: Any])
        let fleet = try #require(report["fleet"] as? [String: Any])
        let baseline = try #require(report["baseline"] as? [String: Any])
        let after = try #require(report["after"] as? [String: Any])
        #expect((ledger["acknowledged"] as? Int ?? 0) > 100)
        #expect(ledger["lost"] as? Int == 0)
        #expect((ledger["received"] as? Int ?? 0) >= (ledger["acknowledged"] as? Int ?? .max))
        #expect((fleet["kills"] as? Int ?? 0) + (fleet["freezes"] as? Int ?? 0) >= 1, "no chaos happened")
        #expect((report["peak_sessions"] as? Int ?? 0) >= 3, "the collaborators did not join")
        #expect(after["sessions"] as? Int == 0)
        #expect(after["records"] as? Int == 0)
        #expect(after["file_descriptors"] as? Int == baseline["file_descriptors"] as? Int)
        #expect(report["leader_exited_cleanly"] as? Bool == true)
    }

    @Test("without the collaborators' certificates it says which script makes them")
    func missingCertificates() async throws {
        let soak = try ChildProcess(
            Self.executable,
            ["soak", "--collaborators", "5", "--collaborator-certs", "/nonexistent"]
        )
        let status = await soak.waitForExit(timeout: 30)
        #expect(status != 0)
        #expect(soak.output.contains("scripts/gen-soak-certs.sh"), "output: \(soak.output)")
    }
}
