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
/// made on demand with the openssl CLI.
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

    private static let lock = NIOLock()

    /// Makes (once) a client certificate whose CN and SAN DNS name are `name`.
    ///
    /// The openssl runs block their thread, so they run on NIO's thread pool: blocking Swift's
    /// cooperative pool (two threads on a two-core machine) stalled every test in the process for
    /// seconds on a clean clone, where no client certificate exists yet.
    static func client(_ name: String) async throws -> (cert: String, key: String) {
        try await NIOThreadPool.singleton.runIfActive {
            try self.lock.withLock { try self.makeClient(name) }
        }
    }

    private static func makeClient(_ name: String) throws -> (cert: String, key: String) {
        let cert = path("\(name).pem")
        let key = path("\(name).key")
        if FileManager.default.fileExists(atPath: cert), FileManager.default.fileExists(atPath: key) {
            return (cert, key)
        }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-\(name)-\(UUID())").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        _ = try runProcess(
            "openssl",
            ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "\(scratch)/k"]
        )
        _ = try runProcess(
            "openssl",
            ["req", "-new", "-key", "\(scratch)/k", "-subj", "/CN=\(name)", "-out", "\(scratch)/r"]
        )
        let extensions = "\(scratch)/ext"
        try "subjectAltName=DNS:\(name)\nextendedKeyUsage=clientAuth\n".write(
            toFile: extensions,
            atomically: true,
            encoding: .utf8
        )
        _ = try runProcess(
            "openssl",
            [
                "x509", "-req", "-in", "\(scratch)/r", "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                "-set_serial", "\(UInt32.random(in: 1...UInt32.max))", "-days", "30", "-sha256",
                "-extfile", extensions, "-out", "\(scratch)/c",
            ]
        )
        // Move into place key first, certificate last: a half-made pair is never picked up.
        try? FileManager.default.removeItem(atPath: key)
        try FileManager.default.moveItem(atPath: "\(scratch)/k", toPath: key)
        try? FileManager.default.removeItem(atPath: cert)
        try FileManager.default.moveItem(atPath: "\(scratch)/c", toPath: cert)
        return (cert, key)
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
            let (cert, key) = try await client(name)
            config.certificateChain = .file(cert)
            config.privateKey = .file(key)
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
