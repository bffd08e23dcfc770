import NIOCore
import Testing

@testable import SecureTransport

/// Two ``TLSConnection``s joined in memory: ciphertext is shuttled between them by hand.
final class InMemoryPair {
    let client: TLSConnection
    let server: TLSConnection

    init(
        client clientContext: TLSContext,
        server serverContext: TLSContext,
        serverHostname: String = "localhost",
        resumptionKey: String? = nil
    ) throws {
        let allocator = ByteBufferAllocator()
        self.client = try TLSConnection(
            context: clientContext,
            allocator: allocator,
            serverHostname: serverHostname,
            resumptionKey: resumptionKey
        )
        self.server = try TLSConnection(context: serverContext, allocator: allocator)
    }

    /// Moves ciphertext both ways until neither side has any left; returns whether any moved.
    @discardableResult
    func shuttle() -> Bool {
        var moved = false
        while true {
            var movedThisRound = false
            if let bytes = self.client.takeOutboundCiphertext() {
                self.server.receiveCiphertext(bytes)
                movedThisRound = true
            }
            if let bytes = self.server.takeOutboundCiphertext() {
                self.client.receiveCiphertext(bytes)
                movedThisRound = true
            }
            if !movedThisRound { return moved }
            moved = true
        }
    }

    enum Outcome {
        case complete
        case clientFailed(TLSError)
        case serverFailed(TLSError)
    }

    /// Runs both handshakes to the end.
    func handshake() -> Outcome {
        var clientDone = false
        var serverDone = false
        for _ in 0..<20 {
            if !clientDone {
                switch self.client.handshake() {
                case .complete: clientDone = true
                case .inProgress: break
                case .failed(let error): return .clientFailed(error)
                }
            }
            self.shuttle()
            if !serverDone {
                switch self.server.handshake() {
                case .complete: serverDone = true
                case .inProgress: break
                case .failed(let error): return .serverFailed(error)
                }
            }
            self.shuttle()
            if clientDone && serverDone { return .complete }
        }
        Issue.record("handshake did not finish")
        return .clientFailed(TLSError(.internalError, "handshake did not finish"))
    }

    /// Reads everything `connection` can decrypt now.
    static func readAll(_ connection: TLSConnection) -> (ByteBuffer, TLSConnection.ReadResult) {
        var collected = ByteBuffer()
        while true {
            var buffer = ByteBufferAllocator().buffer(capacity: 65_536)
            let result = connection.readPlaintext(into: &buffer)
            collected.writeBuffer(&buffer)
            if case .bufferFull = result { continue }
            return (collected, result)
        }
    }
}
