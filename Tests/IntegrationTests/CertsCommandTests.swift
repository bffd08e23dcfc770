import Foundation
import SMSGTestSupport
import Testing

/// `securemsg certs` and `securemsg demo` as a new user runs them: from an empty folder
/// holding only the binary.
@Suite("securemsg certs and demo from an empty folder")
struct CertsCommandTests {
    /// An empty folder with a copy of the binary in it.
    static func emptyFolder() throws -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-empty-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: BenchServerTests.executable, toPath: "\(folder)/securemsg")
        return folder
    }

    static func run(_ arguments: [String], in folder: String, timeout: Double = 10) async throws -> (Int32?, String) {
        let process = try ChildProcess("\(folder)/securemsg", arguments, directory: folder)
        let status = await process.waitForExit(timeout: timeout)
        return (status, process.output)
    }

    static func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try #require(attributes[.posixPermissions] as? Int)
    }

    @Test("certs ca and certs issue make a CA and certificates that openssl verifies; keys are 0600")
    func caAndIssue() async throws {
        let folder = try Self.emptyFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }

        let (caStatus, caOutput) = try await Self.run(["certs", "ca"], in: folder)
        #expect(caStatus == 0, "\(caOutput)")
        let (leaderStatus, leaderOutput) = try await Self.run(["certs", "issue", "leader", "--server"], in: folder)
        #expect(leaderStatus == 0, "\(leaderOutput)")
        let (collabStatus, collabOutput) = try await Self.run(
            [
                "certs", "issue", "collab-1", "--client", "--uri", "spiffe://example.org/node/collab-1", "--ip",
                "10.0.0.7",
            ],
            in: folder
        )
        #expect(collabStatus == 0, "\(collabOutput)")

        for key in ["ca.key", "leader.key", "collab-1.key"] {
            #expect(try Self.mode("\(folder)/\(key)") == 0o600, "\(key)")
        }
        let verified = try runProcess(
            "openssl",
            ["verify", "-CAfile", "\(folder)/ca.pem", "\(folder)/leader.pem", "\(folder)/collab-1.pem"]
        )
        #expect(verified.contains("leader.pem: OK"), "\(verified)")
        #expect(verified.contains("collab-1.pem: OK"), "\(verified)")

        let leaderText = try runProcess("openssl", ["x509", "-in", "\(folder)/leader.pem", "-noout", "-text"])
        #expect(leaderText.contains("DNS:leader, DNS:localhost, IP Address:127.0.0.1"), "\(leaderText)")
        #expect(leaderText.contains("TLS Web Server Authentication"))
        #expect(!leaderText.contains("TLS Web Client Authentication"))
        #expect(leaderText.contains("ASN1 OID: prime256v1"))
        let collabText = try runProcess("openssl", ["x509", "-in", "\(folder)/collab-1.pem", "-noout", "-text"])
        #expect(collabText.contains("DNS:collab-1, IP Address:10.0.0.7, URI:spiffe://example.org/node/collab-1"))
        #expect(collabText.contains("TLS Web Client Authentication"))
        #expect(!collabText.contains("TLS Web Server Authentication"))
    }

    @Test("certs refuses to overwrite, to issue without a CA, and bad names, each in one line")
    func refusals() async throws {
        let folder = try Self.emptyFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }

        let (noCA, noCAOutput) = try await Self.run(["certs", "issue", "leader"], in: folder)
        #expect(noCA == 1)
        #expect(
            noCAOutput
                == "Error: no certificate authority in . (ca.pem and ca.key); make one with: securemsg certs ca\n"
        )

        #expect(try await Self.run(["certs", "ca"], in: folder).0 == 0)
        let before = try String(contentsOfFile: "\(folder)/ca.pem", encoding: .utf8)
        let (again, againOutput) = try await Self.run(["certs", "ca"], in: folder)
        #expect(again == 1)
        #expect(againOutput == "Error: ./ca.pem exists; use --force to replace it\n")
        #expect(try String(contentsOfFile: "\(folder)/ca.pem", encoding: .utf8) == before)

        let (badDNS, badDNSOutput) = try await Self.run(
            ["certs", "issue", "x", "--dns", "a,DNS:evil.example"],
            in: folder
        )
        #expect(badDNS == 1)
        #expect(badDNSOutput.contains("\"a,DNS:evil.example\" is not a DNS name"), "\(badDNSOutput)")
        let (badIP, badIPOutput) = try await Self.run(["certs", "issue", "x", "--ip", "300.1.2.3"], in: folder)
        #expect(badIP == 1)
        #expect(badIPOutput.contains("\"300.1.2.3\" is not an IPv4 or IPv6 address"), "\(badIPOutput)")
        #expect(!FileManager.default.fileExists(atPath: "\(folder)/x.pem"))

        // A node id that is not a DNS name: a client certificate named by its common name only,
        // never one whose first DNS name (its identity) would be localhost.
        let (serverStatus, serverOutput) = try await Self.run(["certs", "issue", "collab_1"], in: folder)
        #expect(serverStatus == 1)
        #expect(serverOutput.contains("\"collab_1\" is not a DNS name"), "\(serverOutput)")
        let (clientStatus, clientOutput) = try await Self.run(["certs", "issue", "collab_1", "--client"], in: folder)
        #expect(clientStatus == 0, "\(clientOutput)")
        let text = try runProcess("openssl", ["x509", "-in", "\(folder)/collab_1.pem", "-noout", "-text"])
        #expect(text.contains("Subject: CN = collab_1"), "\(text)")
        #expect(!text.contains("DNS:"), "\(text)")
    }

    @Test("demo runs from an empty folder: it makes its certificates in a temporary folder")
    func demoFromAnywhere() async throws {
        let folder = try Self.emptyFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }

        let (status, output) = try await Self.run(["demo"], in: folder, timeout: 60)
        #expect(status == 0, "\(output)")
        #expect(output.contains("leader: collab-1 says 2 + 3 + 37 = 42"), "\(output)")
        #expect(output.hasSuffix("demo: done\n"), "\(output)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["securemsg"])
    }
}
