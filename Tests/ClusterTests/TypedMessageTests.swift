import Cluster
import Foundation
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

struct Sum: Codable, Equatable {
    var numbers: [Int]
}

struct Total: Codable, Equatable {
    var total: Int
    var by: String
}

/// A coder that counts its work, to show the Leader and Collaborator use the one they are given.
final class CountingCoder: MessageEncoder, MessageDecoder {
    let encodes = NIOLockedValueBox(0)
    let decodes = NIOLockedValueBox(0)

    func encode(_ value: some Encodable, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        self.encodes.withLockedValue { $0 += 1 }
        return try JSONEncoder().encode(value, allocator: allocator)
    }

    func decode<Value: Decodable>(_ type: Value.Type, from body: ByteBuffer) throws -> Value {
        self.decodes.withLockedValue { $0 += 1 }
        return try JSONDecoder().decode(type, from: body)
    }
}

@Suite("Typed messages")
struct TypedMessageTests {
    @Test("typed requests both ways, a typed DATA handler, and a body that does not decode")
    func typedBothWays() async throws {
        try await withLeader { leader, port, _ in
            leader.onRequest(topic: "sum", as: Sum.self) { sum, context in
                Total(total: sum.numbers.reduce(0, +), by: context.nodeID)
            }
            let received = NIOLockedValueBox<[Sum]>([])
            leader.on(topic: "report", as: Sum.self) { sum, _ in
                received.withLockedValue { $0.append(sum) }
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port)
            collaborator.onRequest(topic: "sum", as: Sum.self) { sum, _ in
                Total(total: sum.numbers.reduce(0, +), by: "collab-1")
            }
            await eventually("joined") {
                leader.collaborator("collab-1")?.state == .active && collaborator.session != nil
            }

            let up: Total = try await collaborator.request(topic: "sum", value: Sum(numbers: [1, 2, 3]))
            #expect(up == Total(total: 6, by: "collab-1"), "the leader's handler saw who asked")
            let down = try await leader.request(
                to: "collab-1",
                topic: "sum",
                value: Sum(numbers: [10, 20]),
                as: Total.self
            )
            #expect(down == Total(total: 30, by: "collab-1"))

            try await collaborator.send(topic: "report", value: Sum(numbers: [7]))
            await eventually("the typed DATA arrived") { received.withLockedValue { $0 } == [Sum(numbers: [7])] }

            // Not a Sum: the handler never runs, the requester hears INVALID_ARGUMENT.
            do {
                _ = try await collaborator.request(topic: "sum", body: ByteBuffer(string: "{\"numbers\": \"x\"}"))
                Issue.record("expected INVALID_ARGUMENT")
            } catch let error as RequestError {
                #expect(error.code == .invalidArgument)
            }
            // An answer of the wrong shape: INVALID_ARGUMENT, the decoding error its cause.
            do {
                _ = try await collaborator.request(topic: "sum", value: Sum(numbers: [1]), as: Sum.self)
                Issue.record("expected a decoding error")
            } catch let error as RequestError {
                #expect(error.code == .invalidArgument)
                #expect((error.cause as? MessageCodingError)?.kind == .decoding)
            }
            #expect(collaborator.session?.currentState == .open)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a coder of the user's choice is the one used")
    func customCoder() async throws {
        let coder = CountingCoder()
        var configuration = LeaderConfiguration()
        configuration.server.session.heartbeatInterval = .milliseconds(200)
        let leader = Leader(
            configuration: configuration,
            transport: try ClusterCertificates.leaderTransport(),
            logger: quiet,
            coder: MessageCoder(encoder: coder, decoder: coder)
        )
        leader.onRequest(topic: "sum", as: Sum.self) { sum, _ in Total(total: sum.numbers.reduce(0, +), by: "leader") }
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await leader.run() }
            let port = try await leader.listeningAddress().port!
            let (collaborator, running) = try await startCollaborator("collab-1", port: port)
            await eventually("connected") { collaborator.session != nil }
            let total: Total = try await collaborator.request(topic: "sum", value: Sum(numbers: [2, 2]))
            #expect(total.total == 4)
            #expect(coder.decodes.withLockedValue { $0 } == 1)
            #expect(coder.encodes.withLockedValue { $0 } == 1)
            await collaborator.leave()
            try await running.value
            leader.shutdown()
            try await tasks.waitForAll()
        }
    }
}
