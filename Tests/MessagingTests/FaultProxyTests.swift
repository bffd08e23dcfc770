import NIOCore
import SMSGTestSupport
import Testing

@testable import Messaging

@Suite("FaultProxy")
struct FaultProxyTests {
    @Test("forwards both ways, and cuts")
    func forwards() async throws {
        try await withServer(.plaintext) { server, port in
            let proxy = try await FaultProxy.start(targetPort: port)
            let client = try await connect(.plaintext, port: proxy.port)
            let reply = try await client.request(topic: "via", body: ByteBuffer(string: "proxy"))
            #expect(String(buffer: reply.body) == "proxy")
            #expect(proxy.openChannelCount == 2)
            proxy.cutAll()
            await client.session.waitUntilClosed()
            await eventually("server side closed too") { server.activeSessionCount == 0 }
            await proxy.close()
        }
    }
}
