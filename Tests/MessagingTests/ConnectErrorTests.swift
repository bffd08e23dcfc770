import Messaging
import NIOCore
import SMSGTestSupport
import Testing

/// What a failed connect says: one line naming what happened and where.
@Suite("Connect errors")
struct ConnectErrorTests {
    @Test("a refused connect names the refusal and the address")
    func refused() async throws {
        let closed = ClosedPort()
        do {
            _ = try await connect(.plaintext, port: closed.port)
            Issue.record("the connect should have been refused")
        } catch let error as MessagingError {
            #expect(error.code == .connectFailed)
            // Once: "connection reset (error set): Connection refused) (errno: 111)".
            #expect(error.reason == "connection refused by 127.0.0.1:\(closed.port)")
        }
        _ = closed
    }

}
