// swift-format-ignore-file
// The code fragments of the DocC catalogues, compiled: each one sits, as it is written in
// its document, in a function whose parameters give its free names. scripts/check-doc-snippets.py
// keeps the copies here equal to the documents. Nothing here runs.
import Cluster
import EtcdElection
import Logging
import Messaging
import NIOCore
import NIOPosix
import SecureTransport

/// What the handler fragment looks up.
struct User {
    var name: String
}

// doc: Sources/Cluster/Docs.docc/HighAvailability.md #1
func highAvailability(
    configuration: LeaderConfiguration,
    tls: TLSTransport,
    logger: Logger,
    election: any LeaderElection
) async throws {
    let leader = Leader(configuration: configuration, transport: tls, logger: logger, election: election)
    for await event in leader.leadershipEvents {
        switch event {
        case .standby: logger.info("standby")
        case .elected(let term): logger.info("serving", metadata: ["term": "\(term)"])
        case .steppedDown(let term, let reason): logger.warning("stepped down from \(term): \(reason)")
        }
    }
}

// doc: Sources/Cluster/Docs.docc/LeaderAndCollaborators.md #2
func handlers(collaborator: Collaborator, leader: Leader, users: [String: User]) async throws {
    collaborator.onRequest(topic: "user") { message, context in
        guard let user = users[String(buffer: message.body)] else {
            throw RequestError(.invalidArgument, "no such user")  // the requester sees this code and message
        }
        context.logger.debug("served")                            // with node_id, session_id, topic, request_id
        return ByteBuffer(string: user.name)
    }

    do {
        let reply = try await leader.request(to: "collab-1", topic: "user", body: ByteBuffer(string: "42"))
        print(String(buffer: reply.body))
    } catch let failure as RequestError {
        print(failure.code)  // .invalidArgument, .noHandler, .deadlineExceeded, .unavailable, .cancelled, …
    }
}

// doc: Sources/Cluster/Docs.docc/LeaderAndCollaborators.md #3
func identityMapping() {
    var configuration = LeaderConfiguration(host: "0.0.0.0", port: 7443)
    // spiffe://example.org/node/collab-1 is the node "collab-1"
    configuration.server.identityMapping = .uri(prefix: "spiffe://example.org/node/")
    _ = configuration
}

// doc: Sources/EtcdElection/Docs.docc/index.md #1
func etcdElection(logger: Logger, leaderConfiguration: LeaderConfiguration, tls: TLSTransport) throws {
    var configuration = EtcdElectionConfiguration(
        endpoints: ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"],
        electionName: "orders-leader"
    )
    configuration.leaseTTL = .seconds(2)
    let election = try EtcdLeaderElection(configuration: configuration, logger: logger)
    let leader = Leader(configuration: leaderConfiguration, transport: tls, logger: logger, election: election)
    _ = leader
}

// doc: Sources/Messaging/Docs.docc/GettingStarted.md #1
func gettingStarted() async throws {
    let serverTLS = try TLSTransport(configuration: .makeServerConfiguration(
        certificateChain: .file("certs/leader.pem"),
        privateKey: .file("certs/leader.key")
    ))
    let server = SecureMessagingServer(
        configuration: ServerConfiguration(host: "127.0.0.1", port: 0),  // any free port
        transport: serverTLS,
        logger: Logger(label: "server")
    ) { session in
        for try await message in session.messages where message.isRequest {
            try await session.respond(to: message, body: message.body)
        }
    }
    // run it, in a ServiceGroup or a task:
    async let serving: Void = server.run()
    // Connect once it listens: listeningAddress() waits for that and says which port it took.
    let port = try await server.listeningAddress().port!

    let client = try await SecureClient.connect(
        host: "127.0.0.1",
        port: port,
        transport: try TLSTransport(configuration: .makeClientConfiguration(trustRoots: .file("certs/ca.pem"))),
        serverHostname: "localhost",
        configuration: ClientConfiguration(nodeID: "client-1")
    )
    let reply = try await client.request(topic: "echo", body: ByteBuffer(string: "hello"))
    await client.close()
    _ = reply
    server.shutdown()
    try await serving
}

// doc: Sources/SecureTransport/Docs.docc/TLSAndCertificates.md #1
func mutualTLS() throws {
    var server = TLSConfiguration.makeServerConfiguration(
        certificateChain: .file("certs/server.pem"),
        privateKey: .file("certs/server.key")
    )
    // Mutual TLS: verify client certificates against a CA, and refuse revoked ones.
    server.trustRoots = .file("certs/ca.pem")
    server.clientAuthentication = .required
    server.crlFile = "certs/ca.crl.pem"
    let context = try TLSContext(configuration: server)
    _ = context
}

// doc: Sources/SecureTransport/Docs.docc/TLSAndCertificates.md #2
func clientConfiguration() {
    let client = TLSConfiguration.makeClientConfiguration(trustRoots: .file("certs/ca.pem"))
    _ = client
}

// doc: Sources/SecureTransport/Docs.docc/TLSAndCertificates.md #3
func makingCertificates() throws {
    let authority = try CertificateAuthority(commonName: "example CA")
    let leader = try authority.issue(
        CertificateRequest(commonName: "leader", dnsNames: ["leader", "localhost"], ipAddresses: ["127.0.0.1"])
    )
    var server = TLSConfiguration.makeServerConfiguration(
        certificateChain: leader.certificateChain,
        privateKey: leader.privateKey
    )
    server.trustRoots = authority.trustRoots
    server.clientAuthentication = .required
    _ = server
}

// doc: Sources/SecureTransport/Docs.docc/index.md #1
func handler(channel: any Channel) throws {
    let context = try TLSContext(configuration: .makeServerConfiguration(
        certificateChain: .file("certs/server.pem"),
        privateKey: .file("certs/server.key")
    ))
    // in a channel initializer:
    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
}

// doc: README.md #5
func secureTransportDirectly() async throws {
    /// Yours: whatever reads and writes the plaintext. This one echoes it back.
    final class EchoHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.write(data, promise: nil)     // TLSHandler encrypts it on the way out
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            context.flush()
        }
    }

    // One context per configuration, shared by every connection.
    let serverContext = try TLSContext(
        configuration: .makeMutualTLSServerConfiguration(
            certificateChain: .file("certs/leader.pem"),
            privateKey: .file("certs/leader.key"),
            trustRoots: .file("certs/ca.pem")      // client certificates must chain to this CA
        )
    )
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandlers(
                    TLSHandler(context: serverContext),   // handshake timeout 10 s by default
                    EchoHandler()                         // sees plaintext ByteBuffers
                )
            }
        }
        .bind(host: "127.0.0.1", port: 0)
        .get()

    // A client verifies the server's chain and name; this one also presents a certificate.
    let clientContext = try TLSContext(
        configuration: .makeClientConfiguration(
            certificateChain: .file("certs/collab-1.pem"),
            privateKey: .file("certs/collab-1.key"),
            trustRoots: .file("certs/ca.pem")
        )
    )
    // ... ClientBootstrap with TLSHandler(context: clientContext, serverHostname: "localhost")
    _ = (server, clientContext)
}

/// A job and its answer, for the dispatch fragment.
struct ResizeJob: Codable {
    var image: String
    var width: Int
}

struct Thumbnail: Codable {
    var bytes: [UInt8]
}

// doc: README.md #2
func dispatch(leader: Leader, id: String, update: ByteBuffer, userID: String) async throws {
    // To whichever collaborator handling "resize" has the most room: the fewest outstanding
    // requests for its capacity. Tried again elsewhere, within the same 10 s, if that one is
    // lost or refuses (marked idempotent: running it twice does no harm).
    let thumbnail = try await leader.request(
        toAnyHandling: "resize",
        value: ResizeJob(image: id, width: 256),
        as: Thumbnail.self,
        timeout: .seconds(10),
        options: DispatchOptions(idempotent: true)
    )
    // The same key goes to the same collaborator (rendezvous hashing): a join or a leave moves
    // only the keys of the collaborator that came or went.
    _ = try await leader.request(
        toAnyHandling: "session.update",
        body: update,
        options: DispatchOptions(affinity: .key(userID), eligible: { $0.status != "draining" })
    )
    _ = thumbnail
}
