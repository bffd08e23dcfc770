import Cluster
import Foundation
import Messaging
import SecureTransport
import Testing

@testable import securemsg

/// What the commands print for people: waits, addresses and errors.
@Suite("securemsg's words for people")
struct OutputTests {
    @Test("a reconnect's wait reads in milliseconds or seconds, not as a Duration's dump")
    func delays() {
        #expect(CollaboratorCommand.describe(delay: .nanoseconds(14_912_434)) == "15 ms")
        #expect(CollaboratorCommand.describe(delay: .microseconds(200)) == "1 ms")
        #expect(CollaboratorCommand.describe(delay: .milliseconds(400)) == "0.4 s")
        #expect(CollaboratorCommand.describe(delay: .seconds(12) + .milliseconds(340)) == "12.3 s")
        let event = ConnectionEvent.reconnecting(attempt: 1, delay: .nanoseconds(14_912_434))
        #expect(CollaboratorCommand.describe(event) == "reconnecting, attempt 1 in 15 ms")
    }

    @Test("an IPv6 address is printed in brackets")
    func addresses() {
        #expect(addressText(host: "::1", port: 7472) == "[::1]:7472")
        #expect(addressText(host: "127.0.0.1", port: 7472) == "127.0.0.1:7472")
    }

    @Test("an error is one sentence: no type names, no dictionaries")
    func sentences() {
        let refusal = MessagingError(
            .gaveUp,
            "the server refused this node (node_id does not match the client certificate); not retrying",
            errorCode: .unauthorized
        )
        #expect(
            SecureMsg.failureLine(refusal)
                == "Error: the server refused this node (node_id does not match the client certificate); not retrying\n"
        )
        #expect(String(reflecting: refusal).hasPrefix("MessagingError(gave up, UNAUTHORIZED)"))
        let peer = MessagingError(.peerError, "node not allowed", errorCode: .unauthorized)
        #expect("\(peer)" == "the peer ended the session: node not allowed (UNAUTHORIZED)")
        #expect("\(TLSError(.noApplicationProtocol, ""))" == "TLS no application protocol")
        let missing = CocoaError(
            .fileNoSuchFile,
            userInfo: [NSFilePathErrorKey: "/tmp/x", NSUnderlyingErrorKey: POSIXError(.ENOENT)]
        )
        #expect(SecureMsg.failureLine(missing) == "Error: No such file or directory (/tmp/x)\n")
    }
}

@Suite("The CLI's settings never show the passphrase")
struct SettingsRedactionTests {
    @Test("description and dump of the common settings redact the key's passphrase")
    func passphrase() {
        var values = CommonOptions.Values()
        values.keyPassphrase = "correct horse battery staple"
        var dumped = ""
        dump(values, to: &dumped)
        for text in ["\(values)", String(reflecting: values), dumped] {
            #expect(!text.contains("correct horse"), "\(text)")
            #expect(text.contains("<redacted>"), "\(text)")
        }
    }
}

@Suite("The version")
struct VersionTests {
    @Test("securemsg --version prints the newest version of CHANGELOG.md")
    func agreesWithChangelog() throws {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let changelog = try String(contentsOf: root.appendingPathComponent("CHANGELOG.md"), encoding: .utf8)
        let newest = try #require(changelog.split(separator: "\n").first { $0.hasPrefix("## ") })
        let number = newest.dropFirst(3).prefix { $0 != " " }
        #expect(String(number) == SecureMsg.versionNumber, "\(newest)")
        #expect(SecureMsg.version == "securemsg \(number) (smsg/1)")
    }
}
