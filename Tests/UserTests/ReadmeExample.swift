import SecureMessagingTesting
import Testing

@Test("the README's test: a leader and two collaborators, a request each way")
func readmeRequestsBothWays() async throws {
    try await withTestCluster { cluster in
        cluster.leader.onRequest(topic: "time") { _, context in
            ByteBuffer(string: "noon for \(context.nodeID)")
        }
        _ = try await cluster.addCollaborator("worker-1") { collaborator in
            collaborator.onRequest(topic: "echo") { message, _ in message.body }
        }
        // Returns once the leader saw it join.
        let second = try await cluster.addCollaborator("worker-2")
        let echoed = try await cluster.leader.request(to: "worker-1", topic: "echo", body: ByteBuffer(string: "hi"))
        #expect(String(buffer: echoed.body) == "hi")
        let time = try await second.request(topic: "time", body: ByteBuffer())
        #expect(String(buffer: time.body) == "noon for worker-2")
        second.setStatus("busy")
        try await cluster.waitForEvent { $0 == .statusChanged(nodeID: "worker-2", status: "busy") }
    }
}
