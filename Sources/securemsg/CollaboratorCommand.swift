import ArgumentParser
import Cluster
import EtcdElection
import Foundation
import Logging
import Messaging
import NIOCore
import SecureTransport
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg collaborator`: joins a leader and stays joined until SIGINT/SIGTERM.
struct CollaboratorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collaborator",
        abstract: "Join a leader over mutual TLS and stay connected (reconnecting with backoff).",
        discussion: """
            Answers the leader's "ping" requests and prints what the leader broadcasts. \
            SIGINT or SIGTERM leaves gracefully (GOODBYE). With --etcd and --election instead of \
            --leader it follows the elected leader, moves to each new one, and refuses a leader whose \
            term is lower than one it has seen.
            """
    )

    @Option(
        help:
            "A JSON config file with any of the settings below (snake_case keys); flags and SMSG_* environment variables override it."
    )
    var config: String?

    @Flag(help: "Print the effective settings as JSON (usable as a config file) and exit.")
    var printConfig = false

    @Option(help: "The leader's address, HOST:PORT (or --etcd and --election).")
    var leader: String?

    @Option(
        help: "This node's id; it must be the identity in its certificate. Required (here, as SMSG_ID or in --config)."
    )
    var id: String?

    @Option(help: "Client certificate chain (PEM). Required (here, as SMSG_CERT or in --config).")
    var cert: String?

    @Option(help: "Client private key (PEM). Required (here, as SMSG_KEY or in --config).")
    var key: String?

    @Option(help: "CA certificates (PEM) to verify the leader with. Required (here, as SMSG_CA or in --config).")
    var ca: String?

    @Option(help: "The name the leader's certificate must carry (default: the leader's host).")
    var serverName: String?

    @Option(help: "Application status reported to the leader.")
    var status: String?

    @Option(
        help: ArgumentHelp(
            "Also answer requests on these topics, comma-separated TOPIC[:MS]: after MS milliseconds (a simulated cost, default 0), with this node's id.",
            valueName: "topics"
        )
    )
    var serve: String?

    @Option(help: "The most requests from the leader it serves at once (1 to 65535; default 64).")
    var capacity: String?

    @OptionGroup(title: "Logging, heartbeat and key")
    var common: CommonOptions

    @OptionGroup(title: "Election (instead of --leader)")
    var electionOptions: ElectionOptions

    /// The settings from flags, environment and config file, checked.
    struct Settings {
        static let keys =
            ["leader", "id", "cert", "key", "ca", "server_name", "status", "serve", "capacity"] + CommonOptions.keys
            + ElectionOptions.keys

        var leader: HostPort?
        var id: String
        var cert: String
        var key: String
        var ca: String
        var serverName: String?
        var status: String?
        /// Topics answered with the node's id, each after its simulated cost.
        var serve: [ServedTopic] = []
        var capacity: Int?
        var common = CommonOptions.Values()
        var election: EtcdElectionConfiguration?
        var effective = EffectiveSettings()
    }

    func settings() async throws -> Settings {
        let flags: [String: String?] = [
            "leader": self.leader, "id": self.id, "cert": self.cert, "key": self.key, "ca": self.ca,
            "server_name": self.serverName, "status": self.status, "serve": self.serve,
            "capacity": self.capacity,
        ]
        let source = try await SettingsSource(
            knownKeys: Settings.keys,
            flags: flags.merging(self.common.flagValues) { $1 }.merging(self.electionOptions.flagValues) { $1 },
            configFile: self.config
        )
        var effective = EffectiveSettings()
        let election = try self.electionOptions.configuration(from: source, effective: &effective)
        let leader = try source.parsed("leader") { try HostPort($0) }
        if election == nil, leader == nil {
            throw ValidationError(
                "leader is required: give --leader, SMSG_LEADER or \"leader\" in a config file (or --etcd and --election)"
            )
        }
        if election != nil, leader != nil {
            throw ValidationError("give either the leader's address or an election (--etcd), not both")
        }
        let id = try source.requiredParsed("id") { id in
            guard Hello.isValidNodeID(id) else {
                throw ValidationError("must be 1 to 128 of A-Z a-z 0-9 . _ : @ -, got \"\(id)\"")
            }
            return id
        }
        var settings = Settings(
            leader: leader,
            id: id,
            cert: try source.requiredString("cert"),
            key: try source.requiredString("key"),
            ca: try source.requiredString("ca"),
            serverName: try source.string("server_name")?.0,
            status: try source.string("status")?.0,
            election: election,
            effective: effective
        )
        settings.effective.set("leader", settings.leader.map { "\($0)" })
        settings.effective.set("id", settings.id)
        settings.effective.set("cert", settings.cert)
        settings.effective.set("key", settings.key)
        settings.effective.set("ca", settings.ca)
        settings.effective.set("server_name", settings.serverName)
        settings.effective.set("status", settings.status)
        settings.serve = try source.parsed("serve", ServedTopic.list) ?? []
        settings.effective.set(
            "serve",
            settings.serve.isEmpty ? nil : settings.serve.map(\.description).joined(separator: ",")
        )
        settings.capacity = try source.parsed("capacity") { text in
            guard let capacity = Int(text), (1...65_535).contains(capacity) else {
                throw ValidationError("must be a whole number from 1 to 65535, got \"\(text)\"")
            }
            return capacity
        }
        settings.effective.set("capacity", settings.capacity.map { "\($0)" })
        settings.common = try self.common.values(from: source, effective: &settings.effective)
        return settings
    }

    func run() async throws {
        let settings = try await self.settings()
        if self.printConfig {
            print(settings.effective.json)
            return
        }
        let logger = OperatorLogHandler.logger(
            "securemsg.collaborator",
            level: settings.common.logLevel,
            write: writeToStandardError
        )
        var tls = TLSConfiguration.makeClientConfiguration(
            certificateChain: .file(settings.cert),
            privateKey: .file(settings.key),
            trustRoots: .file(settings.ca)
        )
        tls.privateKeyPassphrase = settings.common.keyPassphrase
        tls.keyLogFile = keyLogFileFromEnvironment()
        let transport: TLSTransport
        do {
            transport = try TLSTransport(configuration: tls)
        } catch let error as TLSError {
            throw ValidationError("TLS configuration refused: \(error.reason)")
        }
        var configuration = CollaboratorConfiguration(nodeID: settings.id, status: settings.status)
        if let heartbeat = settings.common.heartbeat {
            configuration.session.heartbeatInterval = heartbeat
        }
        if let capacity = settings.capacity {
            configuration.maximumConcurrentRequests = capacity
        }
        let collaborator: Collaborator
        var etcd: EtcdLeaderElection?
        if let address = settings.leader {
            collaborator = Collaborator(
                leaderHost: address.host,
                leaderPort: address.port,
                transport: transport,
                serverHostname: settings.serverName ?? (address.host == "127.0.0.1" ? "localhost" : address.host),
                configuration: configuration,
                logger: logger
            )
        } else if let election = settings.election {
            let made = try ElectionOptions.makeElection(election, logger: logger)
            etcd = made
            collaborator = Collaborator(
                election: made,
                transport: transport,
                serverHostname: settings.serverName,
                configuration: configuration,
                logger: logger
            )
        } else {
            throw ValidationError("leader is required")
        }
        let id = settings.id
        collaborator.onRequest(topic: "ping") { _, _ in ByteBuffer(string: "pong from \(id)") }
        for served in settings.serve {
            let cost = served.cost
            collaborator.onRequest(topic: served.topic) { _, _ in
                if cost > .zero {
                    try await Task.sleep(for: cost)
                }
                return ByteBuffer(string: id)
            }
        }
        collaborator.on(topic: "broadcast") { message, _ in
            print("\(id): broadcast: \(String(buffer: message.body))")
            fflush(nil)
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: collaborator)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        let printing = Task {
            for await event in collaborator.events {
                print("\(id): \(Self.describe(event))")
                fflush(nil)
            }
        }
        defer { printing.cancel() }
        do {
            try await group.run()
            await etcd?.shutdown()
        } catch {
            await etcd?.shutdown()
            // A collaborator that gave up (refused for its identity, or out of attempts): its
            // last events first, then the error, and a non-zero exit.
            await printing.value
            throw error
        }
    }

    /// A topic `--serve` answers, and its simulated cost.
    struct ServedTopic: CustomStringConvertible {
        var topic: String
        var cost: Duration

        var description: String {
            let milliseconds = self.cost / .milliseconds(1)
            return milliseconds > 0 ? "\(self.topic):\(Int(milliseconds.rounded()))" : self.topic
        }

        /// Reads `TOPIC[:MS],…`.
        static func list(_ text: String) throws -> [ServedTopic] {
            try text.split(separator: ",", omittingEmptySubsequences: false).map { item in
                let parts = item.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                let topic = String(parts[0]).trimmingCharacters(in: .whitespaces)
                guard TopicInterest.isValidPattern(topic) else {
                    throw ValidationError("each topic must be 1 to 255 bytes, in TOPIC[:MS],… (got \"\(text)\")")
                }
                var cost = Duration.zero
                if parts.count == 2 {
                    guard let milliseconds = Int(parts[1]), (0...3_600_000).contains(milliseconds) else {
                        throw ValidationError(
                            "the cost after \"\(topic):\" must be milliseconds from 0 to 3600000 (got \"\(parts[1])\")"
                        )
                    }
                    cost = .milliseconds(milliseconds)
                }
                return ServedTopic(topic: topic, cost: cost)
            }
        }
    }

    static func describe(_ event: ConnectionEvent) -> String {
        switch event {
        case .connected(let session): "connected (session \(session ?? "?"))"
        case .disconnected(let error): "disconnected\(error.map { ": \($0.reason)" } ?? "")"
        case .reconnecting(let attempt, let delay): "reconnecting, attempt \(attempt) in \(Self.describe(delay: delay))"
        case .gaveUp(let error): "gave up\(error.map { ": \($0.reason)" } ?? "")"
        }
    }

    /// A wait as a person reads it: "15 ms" under a tenth of a second, else seconds with one
    /// decimal ("0.4 s", "12.3 s").
    static func describe(delay: Duration) -> String {
        let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
        if seconds < 0.1 {
            return "\(max(1, Int((seconds * 1000).rounded()))) ms"
        }
        return String(format: "%.1f s", seconds)
    }
}
