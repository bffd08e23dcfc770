import Cluster
import Messaging
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

@Suite("A leader's settings: it runs once; identities need client certificates")
struct LeaderSettingsTests {
    @Test("a second run() throws alreadyRunning, while running and after")
    func runsOnce() async throws {
        let leader = Leader(
            configuration: LeaderConfiguration(),
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet
        )
        let running = Task { try await leader.run() }
        _ = try await leader.listeningAddress()
        let again = await #expect(throws: MessagingError.self) { try await leader.run() }
        #expect(again?.code == .alreadyRunning)
        leader.shutdown()
        try await running.value
        let after = await #expect(throws: MessagingError.self) { try await leader.run() }
        #expect(after?.code == .alreadyRunning)
    }

    @Test("over plain TCP the default (identities from certificates) is refused with the setting named")
    func plainTransportNamesTheSetting() async throws {
        let leader = Leader(configuration: LeaderConfiguration(), transport: PlainTCPTransport(), logger: quiet)
        let refusal = await #expect(throws: MessagingError.self) { try await leader.run() }
        #expect(refusal?.code == .invalidConfiguration)
        #expect(refusal?.reason.contains("requireCertificateIdentity") == true, "\(String(describing: refusal))")
        // The events end, and whoever waits for the address hears why there is none.
        for await _ in leader.events {}
        let address = await #expect(throws: MessagingError.self) { try await leader.listeningAddress() }
        #expect(address?.code == .invalidConfiguration)
    }

    @Test("TLS that asks for no client certificate is refused the same way; optional client certificates run")
    func tlsClientAuthentication() async throws {
        let certificates = ClusterCertificates.self
        func transport(_ authentication: TLSConfiguration.ClientAuthentication) throws -> TLSTransport {
            try TLSTransport(
                configuration: .makeMutualTLSServerConfiguration(
                    certificateChain: .file(certificates.path("leader.pem")),
                    privateKey: .file(certificates.path("leader.key")),
                    trustRoots: .file(certificates.path("ca.pem")),
                    clientAuthentication: authentication
                )
            )
        }
        let none = Leader(configuration: LeaderConfiguration(), transport: try transport(.none), logger: quiet)
        let refusal = await #expect(throws: MessagingError.self) { try await none.run() }
        #expect(refusal?.code == .invalidConfiguration)

        let optional = Leader(configuration: LeaderConfiguration(), transport: try transport(.optional), logger: quiet)
        let running = Task { try await optional.run() }
        _ = try await optional.listeningAddress()
        optional.shutdown()
        try await running.value
    }

    @Test("over plain TCP with requireCertificateIdentity off, a collaborator joins with its node_id as given")
    func plainTransportWithoutIdentities() async throws {
        var configuration = LeaderConfiguration()
        configuration.server.requireCertificateIdentity = false
        let leader = Leader(configuration: configuration, transport: PlainTCPTransport(), logger: quiet)
        leader.onRequest(topic: "who") { _, context in ByteBuffer(string: context.nodeID) }
        let running = Task { try await leader.run() }
        let port = try await leader.listeningAddress().port!
        let collaborator = Collaborator(
            leaderHost: "127.0.0.1",
            leaderPort: port,
            transport: PlainTCPTransport(),
            configuration: CollaboratorConfiguration(nodeID: "plain-1"),
            logger: quiet
        )
        let collaboratorRun = Task { try await collaborator.run() }
        let answer = try await collaborator.request(topic: "who", body: ByteBuffer(), timeout: .seconds(20))
        #expect(String(buffer: answer.body) == "plain-1")
        await collaborator.leave()
        try await collaboratorRun.value
        leader.shutdown()
        try await running.value
    }
}
