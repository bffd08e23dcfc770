import NIOCore

/// The frames written in one event-loop tick, encoded into one buffer, so that a burst of
/// frames leaves in one TLS write and one system call. A large DATA body is not copied: the
/// batch ends before it and the body is written after it as it is.
struct FrameBatch {
    /// The smallest buffer a burst of outbound frames is encoded into.
    static let capacity = 4096

    private var buffer: ByteBuffer?
    private var promise: EventLoopPromise<Void>?
    /// The timestamp written into the frames of the current batch.
    private var timestamp: UInt64 = 0
    /// Counts not yet published to the metrics.
    private(set) var unpublishedFrames = 0
    private(set) var unpublishedBytes = 0

    /// Whether frames wait to be handed on.
    var isEmpty: Bool { self.buffer == nil }

    /// Makes sure a batch is open; returns true when this starts a new one (whose time is now).
    @inline(__always)
    private mutating func start(size: Int, allocator: @autoclosure () -> ByteBufferAllocator) -> Bool {
        guard self.buffer == nil else { return false }
        self.buffer = allocator().buffer(capacity: max(size, Self.capacity))
        self.timestamp = WallClock.nowMicroseconds()
        return true
    }

    /// Encodes a control frame (DATA goes through ``writeData``); returns whether a new batch
    /// started.
    mutating func write(_ frame: Frame, allocator: @autoclosure () -> ByteBufferAllocator) -> Bool {
        let size = Frame.headerSize + frame.payload.readableBytes
        self.count(size)
        let started = self.start(size: size, allocator: allocator())
        FrameEncoder.writeHeader(
            length: frame.payload.readableBytes,
            type: frame.type,
            flags: frame.flags,
            id: frame.id,
            timestamp: self.timestamp,
            into: &self.buffer!
        )
        self.buffer!.writeImmutableBuffer(frame.payload)
        return started
    }

    /// Encodes a DATA frame: header, topic length, topic, and the body when small. Returns
    /// whether a new batch started, and the body when it is to be written after the batch, as it is.
    @inline(__always)
    mutating func writeData(
        topic: String,
        body: ByteBuffer,
        flags: DataFlags,
        id: UInt64,
        headers: MessageHeaders? = nil,
        allocator: @autoclosure () -> ByteBufferAllocator
    ) -> (started: Bool, separateBody: ByteBuffer?) {
        let topicBytes = topic.utf8.count
        let bodyBytes = body.readableBytes
        let headerBytes = headers.map { 2 + $0.blockBytes } ?? 0
        let length = 1 + topicBytes + headerBytes + bodyBytes
        self.count(Frame.headerSize + length)
        let copyBody = bodyBytes < FrameEncoder.copyLimit
        let started = self.start(
            size: Frame.headerSize + 1 + topicBytes + headerBytes + (copyBody ? bodyBytes : 0),
            allocator: allocator()
        )
        FrameEncoder.writeHeader(
            length: length,
            type: .data,
            flags: headers == nil ? flags.rawValue : flags.union(.headers).rawValue,
            id: id,
            timestamp: self.timestamp,
            into: &self.buffer!
        )
        self.buffer!.writeInteger(UInt8(topicBytes))
        self.buffer!.writeString(topic)
        headers?.writeBlock(into: &self.buffer!)
        guard copyBody else { return (started, body) }
        self.buffer!.writeImmutableBuffer(body)
        return (started, nil)
    }

    /// Completes `promise` when the batch is written.
    mutating func join(_ promise: EventLoopPromise<Void>?) {
        guard let promise else { return }
        if let combined = self.promise {
            combined.futureResult.cascade(to: promise)
        } else {
            self.promise = promise
        }
    }

    /// The encoded batch and its promise, to hand to the layer below; the batch is empty after.
    mutating func take() -> (ByteBuffer, EventLoopPromise<Void>?)? {
        guard let buffer = self.buffer else { return nil }
        defer {
            self.buffer = nil
            self.promise = nil
        }
        return (buffer, self.promise)
    }

    /// The counts since the last call, for the metrics.
    mutating func takeCounts() -> (frames: Int, bytes: Int) {
        defer {
            self.unpublishedFrames = 0
            self.unpublishedBytes = 0
        }
        return (self.unpublishedFrames, self.unpublishedBytes)
    }

    private mutating func count(_ bytes: Int) {
        self.unpublishedFrames += 1
        self.unpublishedBytes += bytes
    }
}
