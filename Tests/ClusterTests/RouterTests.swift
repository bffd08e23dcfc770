import Cluster
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

/// A failure no handler means to show its requester.
private struct DatabaseDown: Error {}

/// What handlers saw, for the tests to look at.
private final class Seen: Sendable {
    private let state = NIOLockedValueBox<[String]>([])
    private let contexts = NIOLockedValueBox<[HandlerContext]>([])

    var all: [String] { self.state.withLockedValue { $0 } }
    var lastContext: HandlerContext? { self.contexts.withLockedValue { $0.last } }

    func add(_ entry: String) {
        self.state.withLockedValue { $0.append(entry) }
    }

    func add(_ context: HandlerContext) {
        self.contexts.withLockedValue { $0.append(context) }
    }
}

// The application layer over the leader/collaborator link: handler failures are request
// outcomes, never a broken or wedged link (issue "Application layer", its list at the top).
@Suite("Handlers: failures, outcomes, context")
struct RouterTests {
    @Test("a leader handler that throws an ordinary error answers FAILED; the link and the record stay")
    func leaderHandlerThrows() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, log in
            leader.onRequest(topic: "broken") { _, _ -> ByteBuffer in throw DatabaseDown() }
            leader.onRequest(topic: "fine") { message, _ in message.body }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let session = try #require(leader.collaborator("collab-1")?.sessionID)

            await #expect(throws: RequestError(.failed, "the handler failed")) {
                try await collaborator.request(topic: "broken", body: ByteBuffer())
            }
            let reply = try await collaborator.request(topic: "fine", body: ByteBuffer(string: "next"))
            #expect(String(buffer: reply.body) == "next")
            #expect(leader.collaborator("collab-1")?.sessionID == session, "the same connection")
            #expect(log.left("collab-1") == nil, "no leave, no replace")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a leader handler that throws a MessagingError (a send to an absent node) does not wedge the link")
    func leaderHandlerThrowsMessagingError() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "forward") { _, _ -> ByteBuffer in
                try await leader.send(to: "nobody", topic: "x", body: ByteBuffer())
                return ByteBuffer()
            }
            leader.onRequest(topic: "fine") { message, _ in message.body }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "forward", body: ByteBuffer(), timeout: .seconds(20))
            }
            let reply = try await collaborator.request(
                topic: "fine",
                body: ByteBuffer(string: "alive"),
                timeout: .seconds(20)
            )
            #expect(String(buffer: reply.body) == "alive")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a collaborator handler that fails: the leader's request gets the outcome, not a timeout")
    func collaboratorHandlerThrows() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            collaborator.onRequest(topic: "lookup") { message, _ -> ByteBuffer in
                guard message.body.readableBytes > 0 else {
                    throw RequestError(.invalidArgument, "an empty key")
                }
                throw DatabaseDown()
            }
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let start = ContinuousClock.now
            await #expect(throws: RequestError(.invalidArgument, "an empty key")) {
                try await leader.request(to: "collab-1", topic: "lookup", body: ByteBuffer(), timeout: .seconds(30))
            }
            await #expect(throws: RequestError(.failed, "the handler failed")) {
                try await leader.request(
                    to: "collab-1",
                    topic: "lookup",
                    body: ByteBuffer(string: "k"),
                    timeout: .seconds(30)
                )
            }
            #expect(ContinuousClock.now - start < .seconds(15), "answered, not timed out")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a REQUEST on a topic nobody handles is answered NO_HANDLER, both ways")
    func noHandler() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            await #expect(throws: RequestError(.noHandler, "no handler for this topic")) {
                try await collaborator.request(topic: "nobody-serves-this", body: ByteBuffer())
            }
            await #expect(throws: RequestError(.noHandler, "no handler for this topic")) {
                try await leader.request(to: "collab-1", topic: "nobody-serves-this", body: ByteBuffer())
            }
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a failing DATA handler is logged and counted; later messages are still handled, in order")
    func messageHandlerThrows() async throws {
        let seen = Seen()
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.on(topic: "event") { message, _ in
                let text = String(buffer: message.body)
                seen.add(text)
                if text == "2" { throw DatabaseDown() }
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            for index in 1...5 {
                try await collaborator.send(topic: "event", body: ByteBuffer(string: "\(index)"))
            }
            await eventually("all handled") { seen.all.count == 5 }
            #expect(seen.all == ["1", "2", "3", "4", "5"])
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a handler's context: the peer's node_id and certificate identity, the headers and the deadline")
    func context() async throws {
        let seen = Seen()
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "who") { _, context in
                seen.add(context)
                return Response(headers: ["served-by": "leader"], body: ByteBuffer(string: context.nodeID))
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            let before = ContinuousClock.now
            let reply = try await collaborator.request(
                topic: "who",
                headers: ["tenant": "blue"],
                body: ByteBuffer(),
                timeout: .seconds(20)
            )
            #expect(String(buffer: reply.body) == "collab-1")
            #expect(reply.headers == ["served-by": "leader"])
            let context = try #require(seen.lastContext)
            #expect(context.nodeID == "collab-1")
            #expect(context.certificateIdentity == "collab-1")
            #expect(context.headers == ["tenant": "blue"])
            let deadline = try #require(context.deadline)
            #expect(deadline > before + .seconds(10) && deadline <= before + .seconds(21), "\(deadline)")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a handler that outlives its deadline is cancelled then, even when the requester sends no CANCEL")
    func deadlineCancelsHandler() async throws {
        let seen = Seen()
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "slow") { _, _ -> ByteBuffer in
                do {
                    try await Task.sleep(for: .seconds(30))
                } catch {
                    seen.add("cancelled")
                    throw error
                }
                return ByteBuffer()
            }
            // Without `cancel` the requester gives up silently: only the deadline stops the work.
            let (collaborator, running) = try await startCollaborator(
                "collab-1",
                port: port,
                heartbeat: .seconds(1),
                configure: { $0.session.extensions = [.headers, .status] }
            )
            // Connected on both sides first: the request's timeout would also cover waiting for
            // the connection, and could pass before the request was ever sent.
            await eventually("joined") {
                leader.collaborator("collab-1")?.state == .active && collaborator.session?.currentState == .open
            }
            let start = ContinuousClock.now
            // The requester's own timeout: DEADLINE_EXCEEDED, whichever side noticed first.
            let outcome = await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "slow", body: ByteBuffer(), timeout: .seconds(2))
            }
            #expect(outcome?.code == .deadlineExceeded)
            await eventually("the handler cancelled at its deadline", timeout: .seconds(20)) {
                seen.all == ["cancelled"]
            }
            #expect(ContinuousClock.now - start < .seconds(25), "before the handler's 30 s")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test(
        "an answer that cannot go as given still answers: headers left out for a peer without them, FAILED for a body too large"
    )
    func answerThatCannotGo() async throws {
        try await withLeader(heartbeat: .seconds(1)) { leader, port, _ in
            leader.onRequest(topic: "tagged") { _, _ in
                Response(headers: ["served-by": "leader"], body: ByteBuffer(string: "ok"))
            }
            leader.onRequest(topic: "huge") { _, _ in
                ByteBuffer(repeating: 0, count: 2 << 20)
            }
            let (collaborator, running) = try await startCollaborator(
                "collab-1",
                port: port,
                heartbeat: .seconds(1),
                configure: { $0.session.extensions = [.status] }
            )
            let reply = try await collaborator.request(topic: "tagged", body: ByteBuffer(), timeout: .seconds(20))
            #expect(String(buffer: reply.body) == "ok")
            #expect(reply.headers.isEmpty)
            let start = ContinuousClock.now
            await #expect(throws: RequestError(.failed, "the answer could not be sent")) {
                try await collaborator.request(topic: "huge", body: ByteBuffer(), timeout: .seconds(20))
            }
            #expect(ContinuousClock.now - start < .seconds(15), "answered, not timed out")
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("requests beyond the concurrency limit wait for a slot instead of failing")
    func concurrencyLimit() async throws {
        let gate = NIOLockedValueBox(false)
        let running = NIOLockedValueBox((now: 0, most: 0, started: 0))
        let configure: (inout LeaderConfiguration) -> Void = { $0.maximumConcurrentRequests = 2 }
        try await withLeader(heartbeat: .seconds(1), configure: configure) { leader, port, _ in
            leader.onRequest(topic: "hold") { _, _ -> ByteBuffer in
                running.withLockedValue {
                    $0.now += 1
                    $0.started += 1
                    $0.most = max($0.most, $0.now)
                }
                defer { running.withLockedValue { $0.now -= 1 } }
                while !gate.withLockedValue({ $0 }) {
                    try await Task.sleep(for: .milliseconds(10))
                }
                return ByteBuffer(string: "done")
            }
            let (collaborator, task) = try await startCollaborator("collab-1", port: port, heartbeat: .seconds(1))
            let held = (0..<5).map { _ in
                Task { try await collaborator.request(topic: "hold", body: ByteBuffer(), timeout: .seconds(30)) }
            }
            await eventually("two in handlers") { running.withLockedValue { $0.started } == 2 }
            // The other three wait: none is answered, none starts.
            try await Task.sleep(for: .milliseconds(200))
            #expect(running.withLockedValue { $0.started } == 2)
            gate.withLockedValue { $0 = true }
            for task in held {
                #expect(String(buffer: try await task.value.body) == "done")
            }
            #expect(running.withLockedValue { $0.most } == 2, "never more than the limit at once")
            #expect(running.withLockedValue { $0.started } == 5)
            await collaborator.leave()
            try await task.value
        }
    }
}
