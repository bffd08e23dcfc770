import ArgumentParser
import Cluster
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
            SIGINT or SIGTERM leaves gracefully (GOODBYE).
            """
    )

    @Option(help: "The leader's address, HOST:PORT.")
    var leader: String

    @Option(help: "This node's id; it must be the identity in its certificate.")
    var id: String

    @Option(help: "Client certificate chain (PEM).")
    var cert: String

    @Option(help: "Client private key (PEM).")
    var key: String

    @Option(help: "CA certificates (PEM) to verify the leader with.")
    var ca: String

    @Option(help: "The name the leader's certificate must carry (default: the leader's host).")
    var serverName: String?

    @Option(help: "Application status reported to the leader.")
    var status: String?

    func validate() throws {
        _ = try HostPort(self.leader)
        guard Hello.isValidNodeID(self.id) else {
            throw ValidationError("--id must be 1 to 128 of A-Z a-z 0-9 . _ : @ -")
        }
    }

    func run() async throws {
        let address = try HostPort(self.leader)
        var logger = Logger(label: "securemsg.collaborator")
        logger.logLevel = .warning
        var tls = TLSConfiguration.makeClientConfiguration(
            certificateChain: .file(self.cert),
            privateKey: .file(self.key),
            trustRoots: .file(self.ca)
        )
        tls.keyLogFile = keyLogFileFromEnvironment()
        let transport: TLSTransport
        do {
            transport = try TLSTransport(configuration: tls)
        } catch let error as TLSError {
            throw ValidationError("TLS configuration refused: \(error.reason)")
        }
        let collaborator = Collaborator(
            leaderHost: address.host,
            leaderPort: address.port,
            transport: transport,
            serverHostname: self.serverName ?? (address.host == "127.0.0.1" ? "localhost" : address.host),
            configuration: CollaboratorConfiguration(nodeID: self.id, status: self.status),
            logger: logger
        )
        let id = self.id
        collaborator.onRequest(topic: "ping") { _, _ in ByteBuffer(string: "pong from \(id)") }
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
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                for await event in collaborator.events {
                    print("\(id): \(Self.describe(event))")
                    fflush(nil)
                }
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }

    static func describe(_ event: ConnectionEvent) -> String {
        switch event {
        case .connected(let session): "connected (session \(session ?? "?"))"
        case .disconnected(let error): "disconnected\(error.map { ": \($0.reason)" } ?? "")"
        case .reconnecting(let attempt, let delay): "reconnecting, attempt \(attempt) in \(delay)"
        case .gaveUp(let error): "gave up\(error.map { ": \($0.reason)" } ?? "")"
        }
    }
}
