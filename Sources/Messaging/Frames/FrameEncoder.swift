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

/// The outbound half of the frame codec as a channel handler.
///
/// Frames written between two flushes are encoded into one buffer (large DATA bodies stay
/// their own buffers, uncopied), so a flush hands the layer below one write for a whole
/// burst: one `SSL_write` and one system call instead of one per frame.
public final class FrameEncoderHandler: ChannelOutboundHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    /// The smallest buffer a burst is encoded into.
    static let batchCapacity = 4096

    private var batch: ByteBuffer?
    private var batchPromise: EventLoopPromise<Void>?

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = Self.unwrapOutboundIn(data)
        let bodyBytes = frame.body?.readableBytes ?? 0
        if bodyBytes >= FrameEncoder.copyLimit, let body = frame.body {
            // The header and topic join the batch; the body follows it as it is.
            self.append(frame, body: nil, context: context)
            self.emitBatch(context: context, promise: nil)
            context.write(Self.wrapOutboundOut(body), promise: promise)
            return
        }
        self.append(frame, body: frame.body, context: context)
        if let promise {
            if let combined = self.batchPromise {
                combined.futureResult.cascade(to: promise)
            } else {
                self.batchPromise = promise
            }
        }
    }

    public func flush(context: ChannelHandlerContext) {
        self.emitBatch(context: context, promise: nil)
        context.flush()
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Unflushed frames go down as unflushed writes: the layer below decides their fate.
        self.emitBatch(context: context, promise: nil)
        context.close(mode: mode, promise: promise)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.batch = nil
        self.batchPromise?.fail(ChannelError.ioOnClosedChannel)
        self.batchPromise = nil
    }

    private func append(_ frame: Frame, body: ByteBuffer?, context: ChannelHandlerContext) {
        let size = Frame.headerSize + frame.payload.readableBytes + (body?.readableBytes ?? 0)
        if self.batch == nil {
            self.batch = context.channel.allocator.buffer(capacity: max(size, Self.batchCapacity))
        }
        FrameEncoder.writeHeader(of: frame, into: &self.batch!)
        self.batch!.writeImmutableBuffer(frame.payload)
        if let body {
            self.batch!.writeImmutableBuffer(body)
        }
    }

    /// Writes the batch down (not flushed), completing `promise` or the batch's own with it.
    private func emitBatch(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard let batch = self.batch else { return }
        self.batch = nil
        var combined = self.batchPromise
        self.batchPromise = nil
        if let promise {
            if let combined {
                combined.futureResult.cascade(to: promise)
            } else {
                combined = promise
            }
        }
        context.write(Self.wrapOutboundOut(batch), promise: combined)
    }
}

@available(*, unavailable)
extension FrameEncoderHandler: Sendable {}
