import NIOCore
import SMSGTestSupport
import Testing

@testable import Messaging

@Suite("Messaging end to end")
struct EchoTests {
    @Test("echo, request/response, ACK, PING/PONG", arguments: TransportKind.allCases)
    func basics(kind: TransportKind) async throws {
        let configuration = serverConfiguration { $0.session.heartbeatInterval = .milliseconds(250) }
        try await withServer(kind, configuration: configuration) { server, port in
            let client = try await connect(kind, port: port) { $0.session.heartbeatInterval = .milliseconds(250) }
            #expect(client.session.sessionID?.isEmpty == false)
            #expect(client.session.peer?.nodeID == "server")

            try await client.send(topic: "greeting", body: ByteBuffer(string: "hello"))
            var iterator = client.messages.makeAsyncIterator()
            let echo = try #require(try await iterator.next())
            #expect(echo.topic == "greeting")
            #expect(String(buffer: echo.body) == "hello")
            #expect(echo.id == 1, "the server numbers its own DATA")
            #expect(echo.timestamp > 0)

            let reply = try await client.request(topic: "question", body: ByteBuffer(string: "42?"))
            #expect(reply.isResponse)
            #expect(String(buffer: reply.body) == "42?")

            try await client.send(topic: "acked", body: ByteBuffer(string: "x"), ackRequested: true)
            await eventually("ACK") { client.session.acksReceived == 1 }

            // Silence for a few intervals: PINGs flow both ways and are answered.
            await eventually("a PING answered") { client.session.lastRoundTrip != nil }
            #expect(client.session.currentState == .open)
            await client.close()
            #expect(client.session.currentState == .closed)
        }
    }

    @Test("a side whose peer PINGs more often still PINGs and measures the round trip")
    func bothSidesMeasureRoundTrip() async throws {
        let capture = SessionCapture()
        let configuration = serverConfiguration { $0.session.heartbeatInterval = .milliseconds(300) }
        let handler: SecureMessagingServer.Handler = { session in
            capture.add(session)
            await session.waitUntilClosed()
        }
        try await withServer(.plaintext, configuration: configuration, handler: handler) { _, port in
            // The client PINGs every 100 ms; the server answers each with a PONG. Those PONGs
            // must not count as the server's own heartbeat, or it would never PING.
            let client = try await connect(.plaintext, port: port) { $0.session.heartbeatInterval = .milliseconds(100) }
            await eventually("both sides measured a round trip") {
                client.session.lastRoundTrip != nil && capture.all.first?.lastRoundTrip != nil
            }
            await client.close()
        }
    }

    @Test("1,000 pipelined messages arrive in order", arguments: TransportKind.allCases)
    func pipelined(kind: TransportKind) async throws {
        try await withServer(kind) { _, port in
            let client = try await connect(kind, port: port)
            let count = 1000
            let receiver = Task {
                var seen: [Int] = []
                for try await message in client.messages {
                    seen.append(Int(String(buffer: message.body))!)
                    if seen.count == count { break }
                }
                return seen
            }
            for index in 0..<count {
                try await client.send(topic: "seq", body: ByteBuffer(string: "\(index)"))
            }
            let seen = try await receiver.value
            #expect(seen == Array(0..<count))
            await client.close()
        }
    }

    @Test("empty and 255-byte topics, a 1 MiB body", arguments: TransportKind.allCases)
    func sizes(kind: TransportKind) async throws {
        let configuration = serverConfiguration { $0.session.maxFrame = 2 << 20 }
        try await withServer(kind, configuration: configuration) { _, port in
            let client = try await connect(kind, port: port) { $0.session.maxFrame = 2 << 20 }
            let longTopic = String(repeating: "t", count: 255)
            for topic in ["", longTopic] {
                let reply = try await client.request(topic: topic, body: ByteBuffer(string: "b"))
                #expect(reply.topic == topic)
            }
            let big = patternBuffer(1 << 20, step: 13)
            let reply = try await client.request(topic: "big", body: big)
            #expect(reply.body == big)

            // A 256-byte topic and a body over the server's max_frame are refused locally.
            await #expect(throws: MessagingError.self) {
                try await client.send(topic: longTopic + "x", body: ByteBuffer())
            }
            let tooBig = ByteBuffer(repeating: 0, count: 2 << 20)
            do {
                try await client.send(topic: "t", body: tooBig)
                Issue.record("an oversized payload was sent")
            } catch let error as MessagingError {
                #expect(error.code == .payloadTooLarge)
            }
            // The session survived the refusals.
            let after = try await client.request(topic: "after", body: ByteBuffer(string: "ok"))
            #expect(String(buffer: after.body) == "ok")
            await client.close()
        }
    }

    @Test("a request times out, and one in flight fails when the connection is lost")
    func requestFailures() async throws {
        let slow: SecureMessagingServer.Handler = { session in
            for try await message in session.messages where message.topic == "close" {
                session.fail(code: .internal, reason: "closing on purpose")
            }
        }
        try await withServer(.plaintext, handler: slow) { _, port in
            let client = try await connect(.plaintext, port: port)
            do {
                _ = try await client.request(topic: "never", body: ByteBuffer(), timeout: .milliseconds(100))
                Issue.record("expected a timeout")
            } catch let error as RequestError {
                #expect(error.code == .deadlineExceeded)
                #expect((error.cause as? MessagingError)?.code == .requestTimedOut)
            }
            let pending = Task { try await client.request(topic: "never", body: ByteBuffer(), timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(50))
            try await client.send(topic: "close", body: ByteBuffer())
            do {
                _ = try await pending.value
                Issue.record("expected the request to fail")
            } catch let error as RequestError {
                // The connection ended: UNAVAILABLE, and the ERROR that ended it underneath.
                #expect(error.code == .unavailable)
                let cause = error.cause as? MessagingError
                #expect(cause?.code == .peerError)
                #expect(cause?.errorCode == .internal)
            }
        }
    }
}
