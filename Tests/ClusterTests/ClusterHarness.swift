import Cluster
import Foundation
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SMSGTestSupport
import SecureTransport
import Testing
import Tracing

/// The test CA of scripts/gen-certs.sh, plus client certificates for `collab-1` … `collab-N`
/// issued on demand, in memory, by that CA (SecureTransport's `CertificateAuthority`).
enum ClusterCertificates {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let directory: String = {
        let directory = "\(root)/certs"
        _ = try? runProcess("bash", ["\(root)/scripts/gen-certs.sh", directory])
        return directory
    }()

    static func path(_ name: String) -> String { "\(directory)/\(name)" }

    /// The fixtures' CA, able to issue.
    static let authority = Result {
        try CertificateAuthority(
            root: CertificateAndKey(
                certificatePEM: try String(contentsOfFile: path("ca.pem"), encoding: .utf8),
                privateKeyPEM: try String(contentsOfFile: path("ca.key"), encoding: .utf8)
            )
        )
    }

    private static let issued = NIOLockedValueBox<[String: CertificateAndKey]>([:])

    /// A client certificate whose CN and SAN DNS name are `name` (made once per process).
    static func client(_ name: String) throws -> CertificateAndKey {
        if let made = self.issued.withLockedValue({ $0[name] }) { return made }
        let made = try self.authority.get().issue(
            CertificateRequest(commonName: name, dnsNames: [name], usage: .client, validity: .seconds(30 * 86_400))
        )
        return self.issued.withLockedValue { issued in
            if let first = issued[name] { return first }
            issued[name] = made
            return made
        }
    }

    static func leaderTransport() throws -> TLSTransport {
        try TLSTransport(
            configuration: .makeMutualTLSServerConfiguration(
                certificateChain: .file(path("leader.pem")),
                privateKey: .file(path("leader.key")),
                trustRoots: .file(path("ca.pem"))
            )
        )
    }

    static func collaboratorTransport(_ name: String?) async throws -> TLSTransport {
        var config = TLSConfiguration.makeClientConfiguration(trustRoots: .file(path("ca.pem")))
        if let name {
            let issued = try client(name)
            config.certificateChain = issued.certificateChain
            config.privateKey = issued.privateKey
        }
        return try TLSTransport(configuration: config)
    }
}

let quiet = Logger(label: "smsg.cluster.test", factory: { _ in SwiftLogNoOpLogHandler() })

/// Collects a leader's membership events.
final class MembershipLog: Sendable {
    private let events = NIOLockedValueBox<[MembershipEvent]>([])

    init(_ leader: Leader) {
        let events = self.events
        Task {
            for await event in leader.events {
                events.withLockedValue { $0.append(event) }
            }
        }
    }

    var all: [MembershipEvent] { self.events.withLockedValue { $0 } }

    func left(_ nodeID: String) -> LeaveReason? {
        for case .left(let node, let reason) in self.all.reversed() where node == nodeID { return reason }
        return nil
    }
}

/// A leader on 127.0.0.1 with mutual TLS, running for the duration of `body`.
func withLeader<T>(
    heartbeat: Duration = .milliseconds(200),
    tracer: (any Tracer)? = nil,
    metrics: MessagingMetrics = MessagingMetrics(),
    configure: (inout LeaderConfiguration) -> Void = { _ in },
    _ body: (Leader, Int, MembershipLog) async throws -> T
) async throws -> T {
    var configuration = LeaderConfiguration()
    configuration.server.session.heartbeatInterval = heartbeat
    configuration.server.session.drainTimeout = .milliseconds(500)
    configure(&configuration)
    let leader = Leader(
        configuration: configuration,
        transport: try ClusterCertificates.leaderTransport(),
        logger: quiet,
        metrics: metrics,
        tracer: tracer
    )
    let log = MembershipLog(leader)
    let running = Task { try await leader.run() }
    let port = try await leader.listeningAddress().port!
    do {
        let result = try await body(leader, port, log)
        leader.shutdown()
        try await running.value
        return result
    } catch {
        leader.shutdown()
        _ = try? await running.value
        throw error
    }
}

/// A collaborator with its own certificate, running until `leave()`.
func startCollaborator(
    _ name: String,
    port: Int,
    status: String? = nil,
    heartbeat: Duration = .milliseconds(200),
    certificate: String? = nil,
    tracer: (any Tracer)? = nil,
    configure: (inout CollaboratorConfiguration) -> Void = { _ in }
) async throws -> (Collaborator, Task<Void, any Error>) {
    var configuration = CollaboratorConfiguration(nodeID: name, status: status)
    configuration.session.heartbeatInterval = heartbeat
    configuration.reconnect = ReconnectPolicy(
        initialDelay: .milliseconds(20),
        multiplier: 2,
        maximumDelay: .milliseconds(300)
    )
    configure(&configuration)
    let collaborator = Collaborator(
        leaderHost: "127.0.0.1",
        leaderPort: port,
        // `certificate` "" is none at all.
        transport: try await ClusterCertificates.collaboratorTransport(
            certificate == "" ? nil : (certificate ?? name)
        ),
        serverHostname: "localhost",
        configuration: configuration,
        tracer: tracer
    )
    let running = Task { try await collaborator.run() }
    return (collaborator, running)
}
