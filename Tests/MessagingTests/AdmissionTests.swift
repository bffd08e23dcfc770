import Logging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

@testable import Messaging

/// `Session.admitMessages(while:)`: what a leader whose leadership ended must not take.
@Suite("Message admission")
struct AdmissionTests {
    @Test("a message that arrives once admission has ended is neither taken nor ACKed")
    func notAdmitted() async throws {
        let admitted = NIOLockedValueBox(true)
        let taken = NIOLockedValueBox<[String]>([])
        let ended = NIOLockedValueBox(false)
        let handler: SecureMessagingServer.Handler = { session in
            session.admitMessages { admitted.withLockedValue { $0 } }
            for try await message in session.messages {
                taken.withLockedValue { $0.append(message.topic) }
            }
            ended.withLockedValue { $0 = true }
            await session.waitUntilClosed()
        }
        try await withServer(.plaintext, handler: handler) { _, port in
            let client = try await connect(.plaintext, port: port)
            let acks = NIOLockedValueBox(0)
            client.session.onAck { _ in acks.withLockedValue { $0 += 1 } }
            try await client.session.send(topic: "a", body: ByteBuffer(string: "1"), ackRequested: true)
            await eventually("the ACK of the admitted message") { acks.withLockedValue { $0 } == 1 }

            admitted.withLockedValue { $0 = false }
            try await client.session.send(topic: "b", body: ByteBuffer(string: "2"), ackRequested: true)
            await eventually("the server's messages ended") { ended.withLockedValue { $0 } }
            // An ACK would have gone out the moment the message was taken; none comes.
            try await Task.sleep(for: .milliseconds(300))
            #expect(acks.withLockedValue { $0 } == 1)
            #expect(taken.withLockedValue { $0 } == ["a"])
            await client.session.close()
        }
    }

    @Test("a message already queued when admission ends stays untaken")
    func queuedNotAdmitted() async throws {
        let admitted = NIOLockedValueBox(true)
        let taken = NIOLockedValueBox<[String]>([])
        let ended = NIOLockedValueBox(false)
        let release = AsyncStream.makeStream(of: Void.self)
        let handler: SecureMessagingServer.Handler = { session in
            session.admitMessages { admitted.withLockedValue { $0 } }
            // Nothing is taken until the test says so: the messages wait in the queue.
            for await _ in release.stream { break }
            for try await message in session.messages {
                taken.withLockedValue { $0.append(message.topic) }
            }
            ended.withLockedValue { $0 = true }
            await session.waitUntilClosed()
        }
        try await withServer(.plaintext, handler: handler) { server, port in
            let client = try await connect(.plaintext, port: port)
            let acks = NIOLockedValueBox(0)
            client.session.onAck { _ in acks.withLockedValue { $0 += 1 } }
            try await client.session.send(topic: "a", body: ByteBuffer(string: "1"), ackRequested: true)
            await eventually("the message queued at the server") {
                server.registry.all.first?.queuedMessageCount == 1
            }
            admitted.withLockedValue { $0 = false }
            release.continuation.yield()
            await eventually("the server's messages ended") { ended.withLockedValue { $0 } }
            try await Task.sleep(for: .milliseconds(300))
            #expect(acks.withLockedValue { $0 } == 0)
            #expect(taken.withLockedValue { $0 }.isEmpty)
            await client.session.close()
        }
    }
}
