import NIOCore

@testable import Messaging

/// What the fuzzer drives: bytes from a peer, as a server session receives them. The bytes
/// go through the frame decoder in pieces (the first byte picks the piece size, so split
/// frames are covered too); every frame the decoder accepts goes to a server-side session
/// state machine, and is encoded again to check that it reads back the same. Any trap or
/// sanitizer report is a bug; a thrown protocol violation is the expected answer to garbage.
enum FuzzTarget {
    static let hello = Hello(nodeID: "server", role: "server", heartbeatMilliseconds: 5000, sessionID: "s-1")

    static func run(_ input: UnsafeRawBufferPointer) {
        guard let first = input.first else { return }
        let pieceSize = Int(first % 64) + 1
        let bytes = input.dropFirst()
        var machine = SessionStateMachine(
            configuration: .init(
                role: .server,
                hello: Self.hello,
                heartbeatInterval: .seconds(5),
                maxFrame: Frame.minimumMaxFrame,
                requiredIdentity: nil
            )
        )
        _ = machine.transportReady()
        let decoder = FrameDecoder(maxFrame: Frame.minimumMaxFrame)
        var buffer = ByteBuffer()
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            let end = min(offset + pieceSize, bytes.endIndex)
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[offset..<end]))
            offset = end
            while true {
                let frame: Frame?
                do {
                    frame = try decoder.decodeFrame(&buffer)
                } catch {
                    return
                }
                guard let frame else {
                    if let header = FrameDecoder.pendingHeader(buffer), machine.checkPendingHeader(header) != nil {
                        return
                    }
                    break
                }
                Self.checkRoundTrip(frame)
                switch machine.receive(frame) {
                case .fail, .peerFailed, .goodbyeComplete:
                    return
                default:
                    break
                }
            }
        }
    }

    /// A frame the decoder accepted encodes back to bytes that decode to the same frame.
    static func checkRoundTrip(_ frame: Frame) {
        var encoded = ByteBuffer()
        FrameEncoder().encode(frame, allocator: ByteBufferAllocator()) { part in
            var part = part
            encoded.writeBuffer(&part)
        }
        let again = try? FrameDecoder(maxFrame: Frame.minimumMaxFrame).decodeFrame(&encoded)
        precondition(again == frame, "a decoded frame did not survive encoding")
    }
}
