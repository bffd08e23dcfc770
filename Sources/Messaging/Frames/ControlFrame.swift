import NIOCore

/// A frame other than DATA, as the session handler writes it.
enum ControlFrame {
    case hello(Hello)
    case ack(UInt64)
    case ping(UInt64, status: ByteBuffer)
    case pong(UInt64)
    case flow(FlowSignal)
    case error(ProtocolViolation)
    case goodbye
    case cancel(UInt64)

    func frame(allocator: ByteBufferAllocator) -> Frame {
        switch self {
        case .hello(let hello):
            return Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded()))
        case .ack(let id):
            return Frame(type: .ack, id: id)
        case .ping(let id, let status):
            return Frame(type: .ping, id: id, payload: status)
        case .pong(let id):
            return Frame(type: .pong, id: id)
        case .flow(let signal):
            var payload = allocator.buffer(capacity: 1)
            payload.writeInteger(signal.rawValue)
            return Frame(type: .flow, payload: payload)
        case .error(let violation):
            let reason = Self.wireReason(violation)
            var payload = allocator.buffer(capacity: 2 + reason.utf8.count)
            payload.writeInteger(violation.code.rawValue)
            payload.writeString(reason)
            return Frame(type: .error, payload: payload)
        case .goodbye:
            return Frame(type: .goodbye)
        case .cancel(let id):
            return Frame(type: .cancel, id: id)
        }
    }

    /// An ERROR's reason as smsg/1 allows it: 1 to 1,024 bytes of UTF-8. A longer one is cut at
    /// a character; an empty one (which `Session.fail(code:reason:)` cannot refuse) becomes the
    /// code's name.
    static func wireReason(_ violation: ProtocolViolation) -> String {
        var reason = ""
        for character in violation.reason {
            guard reason.utf8.count + character.utf8.count <= Frame.maximumErrorReason else { break }
            reason.append(character)
        }
        return reason.isEmpty ? violation.code.description : reason
    }

    /// Whether sending it counts as this side's own traffic for the heartbeat: a PONG answers
    /// the peer's heartbeat and does not stand in for ours (else a side whose peer PINGs as
    /// often would never PING, nor measure the round trip).
    var isOwnTraffic: Bool {
        if case .pong = self { return false }
        return true
    }
}
