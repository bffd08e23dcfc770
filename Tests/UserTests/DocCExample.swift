import SecureMessagingTesting
import Testing

@Test("the SecureMessagingTesting overview's test")
func askTheWorker() async throws {
    try await withTestCluster { cluster in
        _ = try await cluster.addCollaborator("worker-1") { collaborator in
            collaborator.onRequest(topic: "echo") { message, _ in message.body }
        }
        let echoed = try await cluster.leader.request(
            to: "worker-1",
            topic: "echo",
            body: ByteBuffer(string: "hi")
        )
        #expect(String(buffer: echoed.body) == "hi")
    }
}
