import Foundation
import NIOCore
import Testing

@testable import SecureTransport

/// Heavy: run apart from timing-sensitive tests (scripts/test.sh runs `LoadTests` suites last).
@Suite("No leaks (load)")
struct HandshakeLoadTests {
    /// Open file descriptors of this process.
    static func openFileDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }

    @Test("2,000 sequential handshakes leave no descriptors or SSL objects behind")
    func sequentialHandshakes() async throws {
        let serverContext = try TLSContext(configuration: TestCertificates.serverConfiguration())
        let clientConfig = TestCertificates.clientConfiguration()
        let clientContext = try TLSContext(configuration: clientConfig)
        let server = try await LoopbackServer.start(group: testGroup, context: serverContext)
        let before = Self.openFileDescriptors()

        let rounds = 2000
        for round in 0..<rounds {
            let client = try await LoopbackClient.connect(group: testGroup, port: server.port, context: clientContext)
            guard await client.log.wait("handshake \(round)", until: { $0.handshake != nil }) else { break }
            try await client.channel.close()
        }
        let logs = server.logs
        #expect(logs.count == rounds)
        for log in logs {
            await log.wait("server side closed") { $0.isClosed }
        }

        // Every SSL is freed once its channel is gone; allow the channels a moment to go.
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline,
            serverContext.activeConnectionCount + clientContext.activeConnectionCount > 0
        {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(serverContext.activeConnectionCount == 0)
        #expect(clientContext.activeConnectionCount == 0)
        try await server.close()

        // Other suites run in parallel and open descriptors of their own, hence the margin;
        // a leak here would be one descriptor per round, 2,000 in all.
        let after = Self.openFileDescriptors()
        #expect(after - before < 100, "descriptors: \(before) before, \(after) after")

    }

    @Test("a context is freed when its last connection is")
    func contextFreed() throws {
        weak var weakContext: TLSContext?
        do {
            let context = try TLSContext(configuration: TestCertificates.clientConfiguration())
            weakContext = context
            var connection: TLSConnection? = try TLSConnection(
                context: context,
                allocator: .init(),
                serverHostname: "localhost"
            )
            #expect(connection != nil)
            connection = nil
        }
        #expect(weakContext == nil)
    }
}
