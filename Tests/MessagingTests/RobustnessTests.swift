import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import SecureTransport
import Testing

@testable import Messaging

/// Regressions found in review: each would hang, leak or mislead if it came back.
@Suite("Robustness")
struct RobustnessTests {
    // Sends parked behind SLOW_DOWN are tested with explicit time in SessionTimingTests.

    @Test("a client offering ALPN without smsg/1 is told so by the server's alert")
    func alpnAlertReachesClient() async throws {
        try await withServer(.tls) { _, port in
            var tls = TLSConfiguration.makeClientConfiguration(trustRoots: .file(Certificates.path("ca.pem")))
            tls.applicationProtocols = ["h2"]
            do {
                _ = try await SecureClient.connect(
                    host: "127.0.0.1",
                    port: port,
                    transport: try TLSTransport(configuration: tls),
                    serverHostname: "localhost",
                    configuration: ClientConfiguration(nodeID: "h2-client")
                )
                Issue.record("the connection should have been refused")
            } catch let error as MessagingError {
                #expect(error.code == .connectFailed)
                #expect(error.reason.contains("no application protocol"), "\(error)")
            }
        }
    }

    @Test("a closed session and its channel are freed", arguments: TransportKind.allCases)
    func sessionsAreFreed(kind: TransportKind) async throws {
        try await withServer(kind) { server, port in
            weak var weakSession: Session?
            weak var weakChannel: (any Channel)?
            do {
                let client = try await connect(kind, port: port)
                _ = try await client.request(topic: "t", body: ByteBuffer(string: "x"))
                weakSession = client.session
                weakChannel = client.session.channel
                await client.close()
            }
            await eventually("the client's session is freed") { weakSession == nil && weakChannel == nil }
            await eventually("the server forgot it") { server.activeSessionCount == 0 }
        }
    }

    @Test("a connection that ends without GOODBYE ends the message sequence with an error")
    func abruptEndIsAnError() async throws {
        let handler: SecureMessagingServer.Handler = { session in
            for try await _ in session.messages {
                // Vanish without GOODBYE.
                try await session.channel.close()
            }
        }
        try await withServer(.plaintext, handler: handler) { _, port in
            let client = try await connect(.plaintext, port: port)
            try await client.send(topic: "bye", body: ByteBuffer())
            do {
                for try await _ in client.messages {}
                Issue.record("the sequence ended as if the close were graceful")
            } catch let error as MessagingError {
                #expect(error.code == .connectionClosed)
            }
        }
    }

    @Test("a graceful close ends the message sequence cleanly")
    func gracefulEndIsClean() async throws {
        let handler: SecureMessagingServer.Handler = { session in
            for try await _ in session.messages {
                await session.close()
            }
        }
        try await withServer(.plaintext, handler: handler) { _, port in
            let client = try await connect(.plaintext, port: port)
            try await client.send(topic: "bye", body: ByteBuffer())
            var count = 0
            for try await _ in client.messages {
                count += 1
            }
            #expect(count == 0)
            // The sequence ends at the server's GOODBYE; the connection closes right after.
            await client.session.waitUntilClosed()
            #expect(client.session.currentState == .closed)
        }
    }

    @Test("trySend refuses a payload over the peer's max_frame instead of dropping it")
    func trySendRefusesOversized() async throws {
        try await withServer(.plaintext) { _, port in
            let client = try await connect(.plaintext, port: port)
            #expect(!client.trySend(topic: "big", body: ByteBuffer(repeating: 0, count: Frame.defaultMaxFrame)))
            #expect(!client.trySend(topic: String(repeating: "t", count: 256), body: ByteBuffer()))
            #expect(client.trySend(topic: "small", body: ByteBuffer(string: "ok")))
            var messages = client.messages.makeAsyncIterator()
            let echo = try await messages.next()
            #expect(echo?.topic == "small")
            await client.close()
        }
    }

    @Test("a connect timeout under a second is honoured")
    func subSecondConnectTimeout() {
        #expect(TimeAmount(.milliseconds(1500)) == .milliseconds(1500))
        #expect(TimeAmount(.milliseconds(500)) == .milliseconds(500))
    }
}
