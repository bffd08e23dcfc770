public import NIOCore

/// Writes ``Frame``s as bytes: the header and payload in one buffer, with a large DATA body
/// (``Frame/body``) written after it as it is, uncopied.
public struct FrameEncoder: Sendable {
    /// Bodies at least this large are written as their own buffer instead of being copied.
    public static let copyLimit = 8192

    public init() {}

    /// The header of `frame` written into `buffer`.
    public static func writeHeader(of frame: Frame, into buffer: inout ByteBuffer) {
        Self.writeHeader(
            length: frame.length,
            type: frame.type,
            flags: frame.flags,
            id: frame.id,
            timestamp: frame.timestamp,
            into: &buffer
        )
    }

    /// Writes a header from its fields, in one store into the buffer.
    @inlinable
    static func writeHeader(
        length: Int,
        type: FrameType,
        flags: UInt8,
        id: UInt64,
        timestamp: UInt64,
        into buffer: inout ByteBuffer
    ) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Frame.headerSize) { bytes in
            bytes.storeBytes(of: UInt32(truncatingIfNeeded: length).bigEndian, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: type.rawValue, toByteOffset: 4, as: UInt8.self)
            bytes.storeBytes(of: flags, toByteOffset: 5, as: UInt8.self)
            bytes.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
            bytes.storeBytes(of: id.bigEndian, toByteOffset: 8, as: UInt64.self)
            bytes.storeBytes(of: timestamp.bigEndian, toByteOffset: 16, as: UInt64.self)
            return Frame.headerSize
        }
    }

    /// Encodes `frame` into one or two buffers, calling `emit` for each in order.
    public func encode(_ frame: Frame, allocator: ByteBufferAllocator, emit: (ByteBuffer) -> Void) {
        let bodyBytes = frame.body?.readableBytes ?? 0
        let copyBody = bodyBytes < Self.copyLimit
        var buffer = allocator.buffer(
            capacity: Frame.headerSize + frame.payload.readableBytes + (copyBody ? bodyBytes : 0)
        )
        Self.writeHeader(of: frame, into: &buffer)
        buffer.writeImmutableBuffer(frame.payload)
        if let body = frame.body {
            if copyBody {
                buffer.writeImmutableBuffer(body)
                emit(buffer)
            } else {
                emit(buffer)
                emit(body)
            }
        } else {
            emit(buffer)
        }
    }
}
