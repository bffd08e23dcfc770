import ArgumentParser
import Cluster
import Foundation
import Logging
import Messaging
import NIOCore
import Prometheus
import SecureTransport
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg leader`: runs a leader until SIGINT/SIGTERM.
struct LeaderCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leader",
        abstract: "Run a leader that collaborators join over mutual TLS.",
        discussion: """
            Prints "listening on HOST:PORT" once it accepts connections. On a terminal it shows a live \
            table of collaborators; otherwise it prints one line per membership event. SIGINT or \
            SIGTERM says GOODBYE to every collaborator and exits.
            """
    )

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen: String = "127.0.0.1:7443"

    @Option(help: "Leader certificate chain (PEM).")
    var cert: String

    @Option(help: "Leader private key (PEM).")
    var key: String

    @Option(help: "CA certificates (PEM) that collaborator certificates must chain to.")
    var ca: String

    @Flag(help: "Refuse collaborators without a client certificate (otherwise one is optional).")
    var requireClientCert = false

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics.")
    var metrics: String?

    @Option(help: "Certificate revocation lists (PEM) checked against collaborator certificates.")
    var crl: String?

    func validate() throws {
        _ = try HostPort(self.listen)
        if let metrics = self.metrics {
            _ = try HostPort(metrics)
        }
    }

    func run() async throws {
        let address = try HostPort(self.listen)
        var logger = Logger(label: "securemsg.leader")
        logger.logLevel = .warning
        var tls = TLSConfiguration.makeMutualTLSServerConfiguration(
            certificateChain: .file(self.cert),
            privateKey: .file(self.key),
            trustRoots: .file(self.ca),
            clientAuthentication: self.requireClientCert ? .required : .optional
        )
        tls.crlFile = self.crl
        tls.keyLogFile = keyLogFileFromEnvironment()
        let transport: TLSTransport
        do {
            transport = try TLSTransport(configuration: tls)
        } catch let error as TLSError {
            throw ValidationError("TLS configuration refused: \(error.reason)")
        }
        var configuration = LeaderConfiguration(host: address.host, port: address.port)
        configuration.server.requireCertificateIdentity = true
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var leaderMetrics = MessagingMetrics()
        if let metrics = self.metrics {
            let metricsAddress = try HostPort(metrics)
            let registry = PrometheusCollectorRegistry()
            leaderMetrics = MessagingMetrics(factory: PrometheusMetricsFactory(registry: registry))
            services.append(
                .init(
                    service: PrometheusEndpoint(
                        host: metricsAddress.host,
                        port: metricsAddress.port,
                        registry: registry
                    )
                )
            )
        }
        let leader = Leader(configuration: configuration, transport: transport, logger: logger, metrics: leaderMetrics)
        services.insert(.init(service: leader), at: 0)
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        let interactive = isatty(STDOUT_FILENO) == 1
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                // SIGHUP: certificate, key, CA and CRL are read from disk again for new
                // connections; the sessions already open carry on.
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    do {
                        let context = try leader.reloadTLS()
                        let fingerprint = context.localCertificate?.sha256FingerprintHex ?? "none"
                        print("TLS reloaded: certificate SHA-256 \(fingerprint)")
                    } catch let error as TLSError {
                        print("TLS reload refused (the previous certificate stays in use): \(error.reason)")
                    }
                    fflush(nil)
                }
            }
            tasks.addTask {
                let bound = try await leader.listeningAddress()
                print("listening on \(address.host):\(bound.port ?? address.port)")
                fflush(nil)
                if interactive {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        print(MembershipTable.render(leader.collaborators), terminator: "")
                        fflush(nil)
                    }
                } else {
                    for await event in leader.events {
                        print(MembershipTable.line(for: event))
                        fflush(nil)
                    }
                }
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }
}

/// How membership is shown: one line per event, or a table.
enum MembershipTable {
    static func line(for event: MembershipEvent) -> String {
        switch event {
        case .joined(let record):
            let status = record.status.map { " status=\($0)" } ?? ""
            let identity = record.certificateIdentity.map { " certificate=\($0)" } ?? ""
            return "joined \(record.nodeID)\(identity)\(status) from \(record.remoteAddress ?? "?")"
        case .statusChanged(let nodeID, let status):
            return "status \(nodeID) \(status ?? "-")"
        case .suspect(let nodeID):
            return "suspect \(nodeID)"
        case .active(let nodeID):
            return "active \(nodeID)"
        case .left(let nodeID, let reason):
            return "left \(nodeID) (\(self.describe(reason)))"
        }
    }

    static func describe(_ reason: LeaveReason) -> String {
        switch reason {
        case .graceful: "goodbye"
        case .timeout: "heartbeat timeout"
        case .connectionLost(let why): "connection lost: \(why)"
        case .replaced: "replaced by a newer connection"
        case .unauthorized: "unauthorized"
        }
    }

    static func render(_ records: [CollaboratorRecord]) -> String {
        var text = "\u{1B}[H\u{1B}[2J"
        text +=
            "id".padding(toLength: 20, withPad: " ", startingAt: 0)
            + "state".padding(toLength: 9, withPad: " ", startingAt: 0)
            + "status".padding(toLength: 16, withPad: " ", startingAt: 0)
            + "rtt".padding(toLength: 12, withPad: " ", startingAt: 0) + "last seen\n"
        let now = ContinuousClock.now
        for record in records {
            let rtt = record.roundTrip.map { "\($0.components.attoseconds / 1_000_000_000_000) ms" } ?? "-"
            let seen = now - record.lastSeen
            text +=
                record.nodeID.padding(toLength: 20, withPad: " ", startingAt: 0)
                + record.state.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)
                + (record.status ?? "-").padding(toLength: 16, withPad: " ", startingAt: 0)
                + rtt.padding(toLength: 12, withPad: " ", startingAt: 0)
                + "\(seen.components.seconds) s ago\n"
        }
        return text
    }
}

/// The key log file named by `SSLKEYLOGFILE`, if set: for debugging with Wireshark only
/// (building the TLS context prints a warning).
func keyLogFileFromEnvironment() -> String? {
    guard let value = getenv("SSLKEYLOGFILE") else { return nil }
    let path = String(cString: value)
    return path.isEmpty ? nil : path
}
