import ArgumentParser
import Cluster
import EtcdElection
import Foundation
import Logging
import Messaging
import MetricsEndpoint
import NIOConcurrencyHelpers
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
            SIGTERM says GOODBYE to every collaborator and exits. SIGHUP reads the certificate, key, CA \
            and CRL again for new connections (open sessions carry on). SSLKEYLOGFILE=FILE appends TLS \
            secrets to FILE for Wireshark: debugging only.

            With --etcd and --election the leader is one of several candidates: it prints "standby" \
            while another leads (refusing collaborators with ERROR GOING_AWAY), "elected term=N" when \
            it serves, and "stepped down term=N: REASON" when its lease is lost or not confirmed in \
            time; then it campaigns again.
            """
    )

    @Option(
        help:
            "A JSON config file with any of the settings below (snake_case keys); flags and SMSG_* environment variables override it."
    )
    var config: String?

    @Flag(help: "Print the effective settings as JSON (usable as a config file) and exit.")
    var printConfig = false

    @Option(help: "Address to listen on, HOST:PORT (default 127.0.0.1:7443).")
    var listen: String?

    @Option(help: "Leader certificate chain (PEM). Required (here, as SMSG_CERT or in --config).")
    var cert: String?

    @Option(help: "Leader private key (PEM). Required (here, as SMSG_KEY or in --config).")
    var key: String?

    @Option(
        help:
            "CA certificates (PEM) that collaborator certificates must chain to. Required (here, as SMSG_CA or in --config)."
    )
    var ca: String?

    @Option(help: "Node ids allowed to join, comma-separated (default: any with a valid certificate).")
    var allow: String?

    @Flag(help: "Refuse collaborators without a client certificate (otherwise one is optional).")
    var requireClientCert = false

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics.")
    var metrics: String?

    @Option(help: "Certificate revocation lists (PEM) checked against collaborator certificates.")
    var crl: String?

    @Option(help: "With an election: the address collaborators connect to, HOST:PORT (default: where it listens).")
    var advertise: String?

    @OptionGroup(title: "Logging, heartbeat and key")
    var common: CommonOptions

    @OptionGroup(title: "Election")
    var electionOptions: ElectionOptions

    /// The settings from flags, environment and config file, checked.
    struct Settings {
        static let keys =
            ["listen", "cert", "key", "ca", "require_client_cert", "metrics", "crl", "advertise", "allow"]
            + CommonOptions.keys + ElectionOptions.keys

        var listen: HostPort
        var cert: String
        var key: String
        var ca: String
        var requireClientCert: Bool
        var metrics: HostPort?
        var crl: String?
        var advertise: HostPort?
        var allow: Set<String>?
        var common = CommonOptions.Values()
        var election: EtcdElectionConfiguration?
        var effective = EffectiveSettings()
    }

    func settings() async throws -> Settings {
        let flags: [String: String?] = [
            "listen": self.listen, "cert": self.cert, "key": self.key, "ca": self.ca, "metrics": self.metrics,
            "crl": self.crl, "advertise": self.advertise, "allow": self.allow,
        ]
        let source = try await SettingsSource(
            knownKeys: Settings.keys,
            flags: flags.merging(self.common.flagValues) { $1 }.merging(self.electionOptions.flagValues) { $1 },
            switches: ["require_client_cert": self.requireClientCert],
            configFile: self.config
        )
        var settings = Settings(
            listen: try source.parsed("listen") { try HostPort($0) } ?? HostPort("127.0.0.1:7443"),
            cert: try source.requiredString("cert"),
            key: try source.requiredString("key"),
            ca: try source.requiredString("ca"),
            requireClientCert: try source.bool("require_client_cert"),
            metrics: try source.parsed("metrics") { try HostPort($0) },
            crl: try source.string("crl")?.0,
            advertise: try source.parsed("advertise") { try HostPort($0) }
        )
        settings.effective.set("listen", "\(settings.listen)")
        settings.effective.set("cert", settings.cert)
        settings.effective.set("key", settings.key)
        settings.effective.set("ca", settings.ca)
        settings.effective.set("require_client_cert", settings.requireClientCert)
        settings.effective.set("metrics", settings.metrics.map { "\($0)" })
        settings.effective.set("crl", settings.crl)
        settings.allow = try source.parsed("allow") { text -> Set<String> in
            let ids = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !ids.isEmpty, ids.allSatisfy(Hello.isValidNodeID) else {
                throw ValidationError("expected node ids separated by commas, got \"\(text)\"")
            }
            return Set(ids)
        }
        settings.effective.set("allow", settings.allow.map { $0.sorted().joined(separator: ",") })
        settings.common = try self.common.values(from: source, effective: &settings.effective)
        settings.election = try self.electionOptions.configuration(from: source, effective: &settings.effective)
        if settings.advertise != nil, settings.election == nil {
            throw ValidationError("advertise is for an election: give the etcd endpoints too (--etcd)")
        }
        let wildcard = settings.listen.host == "0.0.0.0" || settings.listen.host == "::"
        if settings.election != nil, settings.advertise == nil, wildcard {
            throw ValidationError(
                "listening on \(settings.listen) in an election: give advertise, the address collaborators reach (--advertise HOST:PORT)"
            )
        }
        settings.effective.set("advertise", settings.advertise.map { "\($0)" })
        return settings
    }

    func run() async throws {
        let settings = try await self.settings()
        if self.printConfig {
            print(settings.effective.json)
            return
        }
        let address = settings.listen
        let interactive = isatty(STDOUT_FILENO) == 1
        // On a terminal the table is redrawn every second: what would be printed goes under it.
        let screen = LiveScreen(interactive: interactive)
        let logger = OperatorLogHandler.logger("securemsg.leader", level: settings.common.logLevel) { screen.say($0) }
        var tls = TLSConfiguration.makeMutualTLSServerConfiguration(
            certificateChain: .file(settings.cert),
            privateKey: .file(settings.key),
            trustRoots: .file(settings.ca),
            clientAuthentication: settings.requireClientCert ? .required : .optional
        )
        tls.crlFile = settings.crl
        tls.privateKeyPassphrase = settings.common.keyPassphrase
        tls.keyLogFile = keyLogFileFromEnvironment()
        let transport: TLSTransport
        do {
            transport = try TLSTransport(configuration: tls)
        } catch let error as TLSError {
            throw ValidationError("TLS configuration refused: \(error.reason)")
        }
        var configuration = LeaderConfiguration(host: address.host, port: address.port)
        configuration.server.requireCertificateIdentity = true
        configuration.advertisedAddress = settings.advertise.map { "\($0)" }
        configuration.allowList = settings.allow
        if let heartbeat = settings.common.heartbeat {
            configuration.server.session.heartbeatInterval = heartbeat
        }
        let election = try settings.election.map { try ElectionOptions.makeElection($0, logger: logger) }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var leaderMetrics = MessagingMetrics()
        if let metricsAddress = settings.metrics {
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
        let leader = Leader(
            configuration: configuration,
            transport: transport,
            logger: logger,
            metrics: leaderMetrics,
            election: election
        )
        services.insert(.init(service: leader), at: 0)
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        do {
            try await Self.serve(leader, in: group, screen: screen, address: address, interactive: interactive)
        } catch {
            await election?.shutdown()
            throw error
        }
        // After the leader: it resigns its leadership as it stops.
        await election?.shutdown()
    }

    private static func serve(
        _ leader: Leader,
        in group: ServiceGroup,
        screen: LiveScreen,
        address: HostPort,
        interactive: Bool
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                // SIGHUP: certificate, key, CA and CRL are read from disk again for new
                // connections; the sessions already open carry on.
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    do {
                        let context = try leader.reloadTLS()
                        let fingerprint = context.localCertificate?.sha256FingerprintHex ?? "none"
                        screen.say("TLS reloaded: certificate SHA-256 \(fingerprint)")
                    } catch let error as TLSError {
                        screen.say("TLS reload refused (the previous certificate stays in use): \(error.reason)")
                    }
                }
            }
            tasks.addTask {
                for await event in leader.leadershipEvents {
                    screen.say(Self.describe(event))
                }
                // Ended with the leader: wait for the others.
                try await Task.sleep(for: .seconds(1_000_000_000))
            }
            tasks.addTask {
                let bound = try await leader.listeningAddress()
                screen.setHeader("listening on \(addressText(host: address.host, port: bound.port ?? address.port))")
                for await event in leader.events {
                    screen.say(MembershipTable.line(for: event))
                }
            }
            if interactive {
                tasks.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        print(screen.render(table: MembershipTable.render(leader.collaborators)), terminator: "")
                        fflush(nil)
                    }
                }
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }
}

extension LeaderCommand {
    static func describe(_ event: LeadershipEvent) -> String {
        switch event {
        case .standby: "standby"
        case .elected(let term): "elected term=\(term)"
        case .steppedDown(let term, let reason): "stepped down term=\(term): \(reason)"
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
        case .interestChanged(let nodeID, let interest):
            return "interest \(nodeID) \(interest)"
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

    /// The table of `records`, a heading line and a line each.
    static func render(_ records: [CollaboratorRecord]) -> String {
        var text =
            "id".padding(toLength: 20, withPad: " ", startingAt: 0)
            + "state".padding(toLength: 9, withPad: " ", startingAt: 0)
            + "status".padding(toLength: 16, withPad: " ", startingAt: 0)
            + "rtt".padding(toLength: 12, withPad: " ", startingAt: 0)
            + "out".padding(toLength: 6, withPad: " ", startingAt: 0) + "last seen\n"
        let now = ContinuousClock.now
        for record in records {
            let rtt = record.roundTrip.map(Self.describe(roundTrip:)) ?? "-"
            let seen = now - record.lastSeen
            text +=
                record.nodeID.padding(toLength: 20, withPad: " ", startingAt: 0)
                + record.state.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)
                + (record.status ?? "-").padding(toLength: 16, withPad: " ", startingAt: 0)
                + rtt.padding(toLength: 12, withPad: " ", startingAt: 0)
                + "\(record.outstandingRequests)".padding(toLength: 6, withPad: " ", startingAt: 0)
                + "\(seen.components.seconds) s ago\n"
        }
        return text
    }

    /// A round trip in milliseconds, with the precision a person reads: "0.84 ms", "12.3 ms",
    /// "1250 ms".
    static func describe(roundTrip: Duration) -> String {
        let milliseconds =
            Double(roundTrip.components.seconds) * 1_000 + Double(roundTrip.components.attoseconds) / 1e15
        switch milliseconds {
        case ..<10: return String(format: "%.2f ms", milliseconds)
        case ..<1_000: return String(format: "%.1f ms", milliseconds)
        default: return "\(Int(milliseconds.rounded())) ms"
        }
    }
}

/// What the leader tells its operator. Printed line by line when stdout is not a terminal; on
/// a terminal the membership table is redrawn every second, so the listening address stays
/// on top and the latest lines stay under the table instead of being cleared away.
final class LiveScreen: Sendable {
    private struct State {
        var header: String?
        var recent: [String] = []
    }

    /// How many of the latest lines stay on screen under the table.
    static let recentLines = 10
    private let interactive: Bool
    private let state = NIOLockedValueBox(State())

    init(interactive: Bool) {
        self.interactive = interactive
    }

    /// The line shown above the table (printed at once, too).
    func setHeader(_ line: String) {
        self.state.withLockedValue { $0.header = line }
        print(line)
        fflush(nil)
    }

    /// Prints `line`, or on a terminal keeps it for the next redraw.
    func say(_ line: String) {
        guard self.interactive else {
            print(line)
            fflush(nil)
            return
        }
        self.state.withLockedValue { state in
            state.recent.append(line)
            if state.recent.count > Self.recentLines {
                state.recent.removeFirst(state.recent.count - Self.recentLines)
            }
        }
    }

    /// The whole screen: cleared, the header, `table`, then the latest lines.
    func render(table: String) -> String {
        let (header, recent) = self.state.withLockedValue { ($0.header, $0.recent) }
        var text = "\u{1B}[H\u{1B}[2J"
        if let header { text += header + "\n\n" }
        text += table
        if !recent.isEmpty {
            text += "\n" + recent.joined(separator: "\n") + "\n"
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
