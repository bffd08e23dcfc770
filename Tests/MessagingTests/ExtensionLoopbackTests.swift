import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing

@testable import Messaging

/// The requests a test server saw, and what became of them.
private final class RequestLog: Sendable {
    private let state = NIOLockedValueBox<(requests: [Message], cancelled: [UInt64])>(([], []))

    var requests: [Message] { self.state.withLockedValue { $0.requests } }
    var cancelled: [UInt64] { self.state.withLockedValue { $0.cancelled } }

    func add(_ request: Message) {
        self.state.withLockedValue { $0.requests.append(request) }
    }

    func cancelled(_ id: UInt64) {
        self.state.withLockedValue { $0.cancelled.append(id) }
    }
}

/// Answers by topic: "echo" with the body and the request's headers back, "refuse" with
/// INVALID_ARGUMENT, "hang" never (it waits, aside, for the requester to give up).
private func answeringHandler(_ log: RequestLog) -> SecureMessagingServer.Handler {
    { session in
        for try await message in session.messages where message.isRequest {
            log.add(message)
            switch message.topic {
            case "refuse":
                try await session.respond(to: message, failure: RequestError(.invalidArgument, "no such user"))
            case "hang":
                // Waits aside, so that the requests after it are answered meanwhile.
                Task {
                    if await session.waitForCancellation(of: message) {
                        log.cancelled(message.id)
                    }
                }
            default:
                try await session.respond(to: message, headers: message.headers, body: message.body)
            }
        }
    }
}

@Suite("Extensions over loopback")
struct ExtensionLoopbackTests {
    @Test("headers cross both ways and the responder sees the request's timeout", arguments: TransportKind.allCases)
    func headersRoundTrip(kind: TransportKind) async throws {
        let log = RequestLog()
        try await withServer(kind, handler: answeringHandler(log)) { _, port in
            let client = try await connect(kind, port: port)
            #expect(client.session.extensions == .all)
            let reply = try await client.request(
                topic: "echo",
                headers: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-empty": ""],
                body: ByteBuffer(string: "ping"),
                timeout: .seconds(20)
            )
            #expect(String(buffer: reply.body) == "ping")
            #expect(reply.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            #expect(reply.headers["x-empty"] == "")
            let seen = try #require(log.requests.first)
            let timeout = try #require(seen.timeout)
            #expect(timeout <= .seconds(20) && timeout > .seconds(10), "\(timeout)")
            #expect(seen.headers.count == 2, "smsg-timeout-ms is the protocol's, not among the headers")
            await client.close()
        }
    }

    @Test("a FAILED answer makes request throw its code and message; the session stays open")
    func failedAnswer() async throws {
        let log = RequestLog()
        try await withServer(.plaintext, handler: answeringHandler(log)) { _, port in
            let client = try await connect(.plaintext, port: port)
            await #expect(throws: RequestError(.invalidArgument, "no such user")) {
                try await client.request(topic: "refuse", body: ByteBuffer())
            }
            let reply = try await client.request(topic: "echo", body: ByteBuffer(string: "still here"))
            #expect(String(buffer: reply.body) == "still here")
            await client.close()
        }
    }

    @Test("cancelling the caller's task returns at once and CANCELs the request at the responder")
    func callerCancelled() async throws {
        let log = RequestLog()
        try await withServer(.plaintext, handler: answeringHandler(log)) { _, port in
            let client = try await connect(.plaintext, port: port)
            let caller = Task { try await client.request(topic: "hang", body: ByteBuffer(), timeout: .seconds(60)) }
            await eventually("the request reached the server") { !log.requests.isEmpty }
            caller.cancel()
            // The caller's cancellation is the request's outcome, CANCELLED, with its cause.
            let outcome = await #expect(throws: RequestError.self) { try await caller.value }
            #expect(outcome?.code == .cancelled)
            #expect(outcome?.cause is CancellationError)
            await eventually("the responder heard of it") { log.cancelled == log.requests.map(\.id) }
            #expect(client.session.currentState == .open)
            let reply = try await client.request(topic: "echo", body: ByteBuffer(string: "after"))
            #expect(String(buffer: reply.body) == "after")
            await client.close()
        }
    }

    @Test("a request that times out CANCELs itself at the responder")
    func timeoutCancels() async throws {
        let log = RequestLog()
        try await withServer(.plaintext, handler: answeringHandler(log)) { _, port in
            let client = try await connect(.plaintext, port: port)
            let outcome = await #expect(throws: RequestError.self) {
                try await client.request(topic: "hang", body: ByteBuffer(), timeout: .milliseconds(200))
            }
            #expect(outcome?.code == .deadlineExceeded)
            #expect((outcome?.cause as? MessagingError)?.code == .requestTimedOut)
            await eventually("the responder heard of it") { log.cancelled.count == 1 }
            await client.close()
        }
    }

    /// (client's extensions, server's extensions): one side is plain smsg/1.
    static let mixed: [(ProtocolExtensions, ProtocolExtensions)] = [([], .all), (.all, [])]

    @Test("an extension-aware peer and a plain smsg/1 peer, both ways", arguments: Self.mixed)
    func interop(clientExtensions: ProtocolExtensions, serverExtensions: ProtocolExtensions) async throws {
        let log = RequestLog()
        let configuration = serverConfiguration { $0.session.extensions = serverExtensions }
        try await withServer(.plaintext, configuration: configuration, handler: answeringHandler(log)) { _, port in
            let client = try await connect(.plaintext, port: port) { $0.session.extensions = clientExtensions }
            #expect(client.session.extensions == [])
            let reply = try await client.request(topic: "echo", body: ByteBuffer(string: "plain"))
            #expect(String(buffer: reply.body) == "plain")
            #expect(reply.headers.isEmpty)
            #expect(log.requests.first?.timeout == nil, "no smsg-timeout-ms without headers")

            // Headers cannot go to a plain peer: a clear error, and the session carries on.
            let refusal = await #expect(throws: RequestError.self) {
                try await client.request(topic: "echo", headers: ["k": "v"], body: ByteBuffer())
            }
            #expect(refusal?.code == .invalidArgument)
            #expect((refusal?.cause as? MessagingError)?.code == .extensionNotInForce)
            // A failure is an empty RESPONSE to a plain peer.
            let refused = try await client.request(topic: "refuse", body: ByteBuffer())
            #expect(refused.body.readableBytes == 0)
            #expect(refused.failure == nil)
            // A timed-out request sends no CANCEL to a peer that would take it for an unknown type.
            let timeout = await #expect(throws: RequestError.self) {
                try await client.request(topic: "hang", body: ByteBuffer(), timeout: .milliseconds(100))
            }
            #expect(timeout?.code == .deadlineExceeded)
            let after = try await client.request(topic: "echo", body: ByteBuffer(string: "alive"))
            #expect(String(buffer: after.body) == "alive")
            #expect(client.session.currentState == .open)
            await client.close()
            #expect(client.session.closeReason == nil)
        }
    }

    @Test("a reconnecting client's request timeout covers waiting for a connection")
    func timeoutCoversConnecting() async throws {
        let closed = ClosedPort()
        let client = ReconnectingClient(
            host: "127.0.0.1",
            port: closed.port,
            transport: PlainTCPTransport(),
            configuration: ClientConfiguration(nodeID: "waiting"),
            policy: ReconnectPolicy(initialDelay: .milliseconds(50), multiplier: 1, maximumDelay: .milliseconds(50))
        )
        let running = startRunning(client)
        let start = ContinuousClock.now
        do {
            _ = try await client.request(topic: "t", body: ByteBuffer(), timeout: .milliseconds(300))
            Issue.record("there is no server")
        } catch let error as RequestError {
            #expect(error.code == .deadlineExceeded)
            #expect((error.cause as? MessagingError)?.code == .requestTimedOut)
        }
        // The timeout is 0.3 s; a wide margin for a loaded machine, far below the 30 s default.
        #expect(ContinuousClock.now - start < .seconds(10))
        await client.close()
        try await running.value
        _ = closed
    }
}
