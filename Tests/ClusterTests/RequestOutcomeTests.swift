import Cluster
import Messaging
import NIOCore
import SMSGTestSupport
import Testing

/// A domain error of the application's that says which outcome its requester sees.
private struct OutOfStock: Error, RequestErrorConvertible {
    var item: String
    var requestErrorCode: RequestError.Code { .application(1001) }
    var requestErrorMessage: String { "\(self.item) is out of stock" }
    var requestErrorMetadata: MessageHeaders { ["retry-after-s": "30"] }
}

/// One error type for whatever ends a request without its answer (issue: "one outcome model").
@Suite("Request outcomes: one RequestError for every ending")
struct RequestOutcomeTests {
    @Test("a handler's RequestErrorConvertible error reaches the requester with its code, message and metadata")
    func convertibleError() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "order") { message, _ -> ByteBuffer in
                throw OutOfStock(item: String(buffer: message.body))
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let outcome = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "order", body: ByteBuffer(string: "widgets"))
            }
            #expect(outcome?.code == .application(1001))
            #expect(outcome?.message == "widgets is out of stock")
            #expect(outcome?.metadata["retry-after-s"] == "30")
            // A responder's answer: nothing underneath.
            #expect(outcome?.cause == nil)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("metadata needs the headers extension: without it the code and message still arrive")
    func metadataWithoutHeaders() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "order") { _, _ -> ByteBuffer in throw OutOfStock(item: "bolts") }
            let (collaborator, running) = try await startCollaborator(
                "collab-1",
                port: port,
                heartbeat: .seconds(1),
                configure: { $0.session.extensions = [.status, .cancel] }
            )
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let outcome = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "order", body: ByteBuffer())
            }
            #expect(outcome == RequestError(.application(1001), "bolts is out of stock"))
            #expect(outcome?.metadata.isEmpty == true)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("no such collaborator, a cancelled caller, a value that does not encode: each a RequestError")
    func localEndings() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            // Nobody of that name is connected.
            let absent = await #expect(throws: RequestError.self) {
                try await leader.request(to: "ghost", topic: "t", body: ByteBuffer())
            }
            #expect(absent?.code == .unavailable)
            #expect((absent?.cause as? MessagingError)?.code == .notConnected)

            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            collaborator.onRequest(topic: "hang") { _, _ -> ByteBuffer in
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer()
            }
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let caller = Task { try await leader.request(to: "collab-1", topic: "hang", body: ByteBuffer()) }
            try await Task.sleep(for: .milliseconds(100))
            caller.cancel()
            let cancelled = await #expect(throws: RequestError.self) { try await caller.value }
            #expect(cancelled?.code == .cancelled)
            #expect(cancelled?.cause is CancellationError)

            // Infinity has no JSON form.
            let unencodable = await #expect(throws: RequestError.self) {
                _ = try await leader.request(to: "collab-1", topic: "t", value: Double.infinity, as: Int.self)
            }
            #expect(unencodable?.code == .invalidArgument)
            #expect((unencodable?.cause as? MessageCodingError)?.kind == .encoding)

            // A collaborator that has left: its requests are UNAVAILABLE, not a hang.
            await collaborator.leave()
            try await running.value
            let gone = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "t", body: ByteBuffer(), timeout: .seconds(5))
            }
            #expect(gone?.code == .unavailable)
        }
    }

    @Test("a handler that lets through the outcome of its own request answers FAILED, not that outcome")
    func nestedOutcomeNotForwarded() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            // Its own request ends here (nobody called "ghost" is connected): UNAVAILABLE, with
            // a message about this leader's sessions, which is not the requester's business.
            leader.onRequest(topic: "relay") { _, _ -> ByteBuffer in
                try await leader.request(to: "ghost", topic: "t", body: ByteBuffer()).body
            }
            // A downstream's own answer passed on as it is: not this responder's either.
            leader.onRequest(topic: "relay-answer") { _, context -> ByteBuffer in
                try await leader.request(to: context.nodeID, topic: "refuse", body: ByteBuffer()).body
            }
            // To pass one on, a handler says so with an outcome of its own.
            leader.onRequest(topic: "relay-own") { _, context -> ByteBuffer in
                do {
                    return try await leader.request(to: context.nodeID, topic: "refuse", body: ByteBuffer()).body
                } catch let error as RequestError {
                    throw RequestError(error.code, "downstream: \(error.message)")
                }
            }
            // Its own typed request's answer does not decode: INVALID_ARGUMENT here, with the
            // decoder's words, which are not the requester's business either.
            leader.onRequest(topic: "relay-typed") { _, context -> ByteBuffer in
                let number = try await leader.request(to: context.nodeID, topic: "text", value: 1, as: Int.self)
                return ByteBuffer(string: "\(number)")
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            collaborator.onRequest(topic: "refuse") { _, _ -> ByteBuffer in
                throw RequestError(.permissionDenied, "not you")
            }
            collaborator.onRequest(topic: "text") { _, _ in ByteBuffer(string: "not a number") }
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            for topic in ["relay", "relay-answer", "relay-typed"] {
                let outcome = await #expect(throws: RequestError.self) {
                    try await collaborator.request(topic: topic, body: ByteBuffer())
                }
                #expect(outcome == RequestError(.failed, "the handler failed"), "\(topic)")
            }
            let own = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "relay-own", body: ByteBuffer())
            }
            #expect(own == RequestError(.permissionDenied, "downstream: not you"))
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("metadata that cannot be sent is left out; the handler's code and message still arrive")
    func unsendableMetadata() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "bad") { _, _ -> ByteBuffer in
                throw RequestError(.application(1002), "kept", metadata: ["smsg-reserved": "x"])
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let outcome = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "bad", body: ByteBuffer())
            }
            #expect(outcome == RequestError(.application(1002), "kept"))
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a RequestError's equality and hash ignore the cause; its text says what caused it")
    func equalityAndText() {
        let timeout = RequestError(
            endingRequest: MessagingError(.requestTimedOut, "no response within 2 s")
        )
        #expect(timeout == RequestError(.deadlineExceeded, "no response within 2 s"))
        #expect(timeout.hashValue == RequestError(.deadlineExceeded, "no response within 2 s").hashValue)
        #expect("\(timeout)" == "DEADLINE_EXCEEDED: no response within 2 s")
        let lost = RequestError(endingRequest: MessagingError(.connectionClosed, "the connection closed"))
        #expect(lost.code == .unavailable)
        #expect(RequestError(endingRequest: CancellationError()).code == .cancelled)
        #expect(RequestError(endingRequest: MessagingError(.payloadTooLarge, "too big")).code == .invalidArgument)
        #expect(String(reflecting: timeout).contains("cause: MessagingError(request timed out)"))
    }
}
