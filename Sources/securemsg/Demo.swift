import ArgumentParser
import Cluster
import Foundation
import Logging
import Messaging
import NIOCore
import SecureTransport
import ToolSupport

/// `securemsg demo`: a leader and three collaborators over mutual TLS on 127.0.0.1.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a leader and three collaborators over mutual TLS on 127.0.0.1, step by step.",
        discussion: """
            Makes a certificate authority and certificates for the leader and each collaborator \
            (in a temporary directory, or in --certs where missing), then shows the \
            collaborators joining, a status change, a broadcast, requests both ways, one collaborator's \
            connection killed and the collaborator rejoining by itself, and a graceful shutdown.
            """
    )

    @Option(
        help: """
            A directory for ca.pem/key, leader.pem/key and collab-1…3.pem/key; what is missing is \
            made there (default: a temporary directory, removed afterwards).
            """
    )
    var certs: String?

    func run() async throws {
        let certs: String
        if let directory = self.certs {
            certs = directory
        } else {
            certs = FileManager.default.temporaryDirectory.appendingPathComponent("securemsg-demo-\(UUID())").path
        }
        defer {
            if self.certs == nil { try? FileManager.default.removeItem(atPath: certs) }
        }
        try Self.ensureCertificates(in: certs)
        let logger = Logger(label: "securemsg.demo", factory: { _ in SwiftLogNoOpLogHandler() })

        step("1. a leader on 127.0.0.1, mutual TLS, node_id bound to the client certificate")
        var configuration = LeaderConfiguration(host: "127.0.0.1", port: 0)
        configuration.server.session.heartbeatInterval = .milliseconds(500)
        configuration.server.session.drainTimeout = .seconds(1)
        let leader = Leader(
            configuration: configuration,
            transport: try TLSTransport(
                configuration: .makeMutualTLSServerConfiguration(
                    certificateChain: .file("\(certs)/leader.pem"),
                    privateKey: .file("\(certs)/leader.key"),
                    trustRoots: .file("\(certs)/ca.pem")
                )
            ),
            logger: logger
        )
        leader.onRequest(topic: "time") { _, _ in ByteBuffer(string: "leader time \(Date())") }
        let leading = Task { try await leader.run() }
        let events = Task {
            for await event in leader.events {
                print("   leader: \(MembershipTable.line(for: event))")
            }
        }
        let port = try await leader.listeningAddress().port!
        print("   leader: listening on 127.0.0.1:\(port)")

        step("2. three collaborators join")
        let names = ["collab-1", "collab-2", "collab-3"]
        var collaborators: [String: (Collaborator, Task<Void, any Error>)] = [:]
        for name in names {
            var settings = CollaboratorConfiguration(nodeID: name, status: "starting")
            settings.session.heartbeatInterval = .milliseconds(500)
            settings.reconnect = ReconnectPolicy(
                initialDelay: .milliseconds(100),
                multiplier: 2,
                maximumDelay: .seconds(1)
            )
            let collaborator = Collaborator(
                leaderHost: "127.0.0.1",
                leaderPort: port,
                transport: try TLSTransport(
                    configuration: .makeClientConfiguration(
                        certificateChain: .file("\(certs)/\(name).pem"),
                        privateKey: .file("\(certs)/\(name).key"),
                        trustRoots: .file("\(certs)/ca.pem")
                    )
                ),
                serverHostname: "localhost",
                configuration: settings,
                logger: logger
            )
            collaborator.on(topic: "news") { message, _ in
                print("   \(name): received broadcast \"\(String(buffer: message.body))\"")
            }
            collaborator.onRequest(topic: "sum") { message, _ in
                let numbers = String(buffer: message.body).split(separator: " ").compactMap { Int($0) }
                return ByteBuffer(string: "\(numbers.reduce(0, +))")
            }
            collaborators[name] = (collaborator, Task { try await collaborator.run() })
        }
        try await waitFor("all three joined") { leader.collaborators.filter { $0.state == .active }.count == 3 }
        for (_, entry) in collaborators {
            entry.0.setStatus("ready")
        }
        try await waitFor("statuses") { leader.collaborators.allSatisfy { $0.status == "ready" } }

        step("3. collab-2 changes its status")
        collaborators["collab-2"]!.0.setStatus("busy")
        try await waitFor("the new status") { leader.collaborator("collab-2")?.status == "busy" }

        step("4. the leader broadcasts")
        let reached = leader.broadcast(topic: "news", body: ByteBuffer(string: "hello, collaborators"))
        print("   leader: broadcast taken by \(reached) collaborators")
        try await Task.sleep(for: .milliseconds(300))

        step("5. requests both ways")
        let sum = try await leader.request(to: "collab-1", topic: "sum", body: ByteBuffer(string: "2 3 37"))
        print("   leader: collab-1 says 2 + 3 + 37 = \(String(buffer: sum.body))")
        let time = try await collaborators["collab-3"]!.0.request(topic: "time", body: ByteBuffer())
        print("   collab-3: the leader answered \"\(String(buffer: time.body))\"")

        step("6. collab-3's connection is killed; it rejoins by itself")
        let before = leader.collaborator("collab-3")?.sessionID
        try await collaborators["collab-3"]!.0.session?.channel.close()
        try await waitFor("collab-3 rejoined") {
            let record = leader.collaborator("collab-3")
            return record?.state == .active && record?.sessionID != before
        }
        print("   leader: \(leader.collaborators.filter { $0.state == .active }.count) collaborators active")

        step("7. graceful shutdown")
        for name in names {
            let (collaborator, running) = collaborators[name]!
            await collaborator.leave()
            try await running.value
        }
        try await waitFor("everyone left") { leader.collaborators.allSatisfy { $0.state == .gone } }
        leader.shutdown()
        try await leading.value
        events.cancel()
        print("demo: done")
    }

    /// Makes what is missing of the demo's certificates in `directory`, with the tool's own
    /// certificate authority (the one there, or a new one).
    static func ensureCertificates(in directory: String) throws {
        let files = CertificateFiles(directory: directory)
        let leaves: [(String, CertificateUsage)] = [
            ("leader", [.server, .client]), ("collab-1", .client), ("collab-2", .client), ("collab-3", .client),
        ]
        let missing = leaves.filter { !files.exists($0.0) }
        if missing.isEmpty { return }
        if !files.exists("ca") {
            try files.write(try CertificateAuthority(commonName: "smsg demo CA").root, as: "ca", force: false)
            print("demo: made a certificate authority in \(directory)")
        }
        let authority = try files.authority()
        for (name, usage) in missing {
            try files.write(
                try authority.issue(try CertificateRequest.node(name, usage: usage)),
                as: name,
                force: false
            )
        }
        print("demo: issued \(missing.map(\.0).joined(separator: ", ")) in \(directory)")
    }
}

private func step(_ title: String) {
    print("\n== \(title)")
}

/// Polls `condition` every 20 ms for up to 10 s.
private func waitFor(_ what: String, _ condition: () -> Bool) async throws {
    guard await poll(seconds: 10, every: .milliseconds(20), condition) else {
        throw ValidationError("demo: timed out waiting for \(what)")
    }
}
