// A test as a user of the package writes one: only the public test-support product.
import SecureMessagingTesting
import Testing

@Suite("A user's own test, through SecureMessagingTesting only")
struct LeaderAndCollaboratorsTests {
    @Test("a leader and two collaborators: requests both ways, status, a graceful leave")
    func requestsBothWays() async throws {
        try await withTestCluster { cluster in
            cluster.leader.onRequest(topic: "time") { _, context in
                ByteBuffer(string: "noon for \(context.nodeID)")
            }
            let first = try await cluster.addCollaborator("worker-1") { collaborator in
                collaborator.onRequest(topic: "sum") { message, _ in
                    let numbers = String(buffer: message.body).split(separator: " ").compactMap { Int($0) }
                    return ByteBuffer(string: "\(numbers.reduce(0, +))")
                }
            }
            let second = try await cluster.addCollaborator("worker-2")
            #expect(
                cluster.leader.collaborators.filter { $0.state == .active }.map(\.nodeID).sorted() == [
                    "worker-1", "worker-2",
                ]
            )
            #expect(cluster.leader.collaborator("worker-1")?.certificateIdentity == "worker-1")

            // Leader → collaborator.
            let sum = try await cluster.leader.request(to: "worker-1", topic: "sum", body: ByteBuffer(string: "2 3 37"))
            #expect(String(buffer: sum.body) == "42")
            // Collaborator → leader.
            let time = try await second.request(topic: "time", body: ByteBuffer())
            #expect(String(buffer: time.body) == "noon for worker-2")
            // A topic nobody serves is an error to the caller only.
            await #expect(throws: (any Error).self) {
                _ = try await first.request(topic: "nobody", body: ByteBuffer())
            }

            second.setStatus("busy")
            try await cluster.waitForEvent(awaiting: "worker-2 busy") { event in
                event == .statusChanged(nodeID: "worker-2", status: "busy")
            }

            await first.leave()
            try await cluster.waitForEvent(awaiting: "worker-1 to leave") { event in
                event == .left(nodeID: "worker-1", reason: .graceful)
            }
            #expect(cluster.leader.collaborator("worker-1")?.state == .gone)
        }
    }

    @Test("a wait that cannot succeed ends with a timeout naming what it waited for")
    func timeout() async throws {
        try await withTestCluster { cluster in
            let error = await #expect(throws: TestClusterTimeout.self) {
                try await cluster.waitForEvent(timeout: .milliseconds(200), awaiting: "a ghost") { event in
                    if case .joined(let record) = event { return record.nodeID == "ghost" }
                    return false
                }
            }
            #expect(error?.description == "timed out after 0.2 seconds waiting for a ghost")
        }
    }

    @Test("a collaborator whose certificate names another node cannot pose as it")
    func certificatesAreChecked() async throws {
        try await withTestCluster { cluster in
            let impostor = try cluster.certificates.clientTransport(nodeID: "someone-else")
            await #expect(throws: MessagingError.self) {
                _ = try await SecureClient.connect(
                    host: "127.0.0.1",
                    port: cluster.port,
                    transport: impostor,
                    serverHostname: "localhost",
                    configuration: ClientConfiguration(nodeID: "worker-1")
                )
            }
            #expect(cluster.leader.collaborators.isEmpty)
        }
    }

    @Test("a leader that maps identities from SPIFFE URIs takes the node named by the URI, not the CN")
    func spiffeIdentity() async throws {
        var configuration = TestCluster.leaderConfiguration()
        configuration.server.identityMapping = .uri(prefix: "spiffe://example.org/node/")
        try await withTestCluster(configuration: configuration) { cluster in
            let issued = try cluster.certificates.authority.issue(
                CertificateRequest(commonName: "pod-1234", uris: ["spiffe://example.org/node/worker-7"], usage: .client)
            )
            var tls = TLSConfiguration.makeClientConfiguration(trustRoots: cluster.certificates.authority.trustRoots)
            tls.certificateChain = issued.certificateChain
            tls.privateKey = issued.privateKey
            let transport = try TLSTransport(configuration: tls)

            let client = try await SecureClient.connect(
                host: "127.0.0.1",
                port: cluster.port,
                transport: transport,
                serverHostname: "localhost",
                configuration: ClientConfiguration(nodeID: "worker-7")
            )
            try await cluster.waitUntil("worker-7 to join") { cluster.leader.collaborator("worker-7") != nil }
            #expect(cluster.leader.collaborator("worker-7")?.certificateIdentity == "worker-7")
            await client.close()

            // The common name is no identity under this mapping.
            let error = await #expect(throws: MessagingError.self) {
                _ = try await SecureClient.connect(
                    host: "127.0.0.1",
                    port: cluster.port,
                    transport: transport,
                    serverHostname: "localhost",
                    configuration: ClientConfiguration(nodeID: "pod-1234")
                )
            }
            #expect(error?.errorCode == .unauthorized)
        }
    }

    @Test("a collaborator the leader refuses fails addCollaborator at once with the refusal, not a timeout")
    func refusedCollaborator() async throws {
        var configuration = TestCluster.leaderConfiguration()
        configuration.allowList = ["worker-1"]
        try await withTestCluster(configuration: configuration) { cluster in
            let started = ContinuousClock.now
            let error = await #expect(throws: MessagingError.self) {
                try await cluster.addCollaborator("intruder", timeout: .seconds(30))
            }
            #expect(error?.code == .gaveUp)
            #expect(error?.errorCode == .unauthorized)
            #expect(ContinuousClock.now - started < .seconds(20), "the refusal, well before the 30 s wait")
        }
    }

    @Test("a condition may read the cluster itself")
    func conditionReadsTheCluster() async throws {
        try await withTestCluster { cluster in
            try await cluster.addCollaborator("worker-1")
            let second = try await cluster.addCollaborator("worker-2")
            second.setStatus("busy")
            try await cluster.waitUntil("three events") { cluster.events.count >= 3 }
            try await cluster.waitForEvent(awaiting: "an event after two") { _ in cluster.events.count >= 3 }
        }
    }
}
