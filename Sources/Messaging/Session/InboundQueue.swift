import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore

/// The received messages of one session that the application has not taken yet, bounded by
/// the watermarks and hard limits of ``FlowControlConfiguration``.
///
/// The session's event loop pushes; one task at a time consumes through ``InboundMessages``.
/// When the connection ends, messages already queued are still delivered, then the sequence
/// ends (cleanly after GOODBYE, with the error otherwise).
final class InboundQueue: Sendable {
    typealias PushResult = InboundWatermarks.PushResult
    typealias Limits = InboundWatermarks.Limits

    private struct State {
        // Small at first (most sessions are idle most of the time); it doubles as it fills.
        var buffer = CircularBuffer<Message>(initialCapacity: 1)
        var watermarks: InboundWatermarks
        var waiter: CheckedContinuation<Message?, any Error>?
        var finished = false
        var failure: (any Error)?
        /// Whether the application may take messages now (see ``admit(while:)``).
        var admits: (@Sendable () -> Bool)?
    }

    private let state: NIOLockedValueBox<State>
    /// The process-wide gauge of payload bytes waiting for applications, if metrics are kept.
    private let gauge: Meter?
    /// Called (outside the lock) for each message the application takes; `resume` is true
    /// when taking it brought the queue back under both low watermarks after a SLOW_DOWN.
    private let onConsume: @Sendable (_ message: Message, _ resume: Bool) -> Void

    init(
        limits: Limits,
        gauge: Meter? = nil,
        onConsume: @escaping @Sendable (_ message: Message, _ resume: Bool) -> Void
    ) {
        self.state = NIOLockedValueBox(State(watermarks: InboundWatermarks(limits: limits)))
        self.gauge = gauge
        self.onConsume = onConsume
    }

    deinit {
        // Messages never taken leave the gauge with the queue.
        let left = self.state.withLockedValue { $0.watermarks.bytes }
        if left > 0 {
            self.gauge?.decrement(by: Double(left))
        }
    }

    /// The DATA payload bytes a message counts for: its topic, its header block as it came on
    /// the wire (the protocol's own `smsg-` headers included) and its body.
    static func size(of message: Message) -> Int {
        var headerBlock = 0
        if message.flags.contains(.headers) {
            headerBlock = message.extras?.wireBlockBytes ?? (2 + message.headers.blockBytes)
        }
        return 1 + message.topic.utf8.count + headerBlock + message.body.readableBytes
    }

    /// From now on, messages are taken only while `condition` holds: when it does not, the
    /// sequence ends (`nil`) with the message left untaken — so not ACKed. `condition` is
    /// called under the queue's lock: it must be quick and must not touch the session.
    func admit(while condition: @escaping @Sendable () -> Bool) {
        self.state.withLockedValue { $0.admits = condition }
    }

    /// Queues a message (or hands it straight to a waiting consumer) and says what the sender
    /// must be told.
    func push(_ message: Message) -> PushResult {
        let size = Self.size(of: message)
        let (waiter, handedOver, result): (CheckedContinuation<Message?, any Error>?, Bool, PushResult) = self.state
            .withLockedValue { state in
                guard !state.finished else { return (nil, false, .queued) }
                var refused: CheckedContinuation<Message?, any Error>?
                if let waiter = state.waiter {
                    state.waiter = nil
                    guard let admits = state.admits, !admits() else { return (waiter, true, .queued) }
                    // Not admitted: the consumer's sequence ends, the message stays.
                    refused = waiter
                }
                state.buffer.append(message)
                self.gauge?.increment(by: Double(size))
                return (refused, false, state.watermarks.pushed(size: size))
            }
        if handedOver {
            waiter?.resume(returning: message)
            self.onConsume(message, false)
        } else {
            waiter?.resume(returning: nil)
        }
        return result
    }

    /// No more messages will come; `error` ends the sequence with a throw after the queue drains.
    func finish(error: (any Error)? = nil) {
        let waiter: CheckedContinuation<Message?, any Error>? = self.state.withLockedValue { state in
            guard !state.finished else { return nil }
            state.finished = true
            state.failure = error
            defer { state.waiter = nil }
            return state.waiter
        }
        if let error {
            waiter?.resume(throwing: error)
        } else {
            waiter?.resume(returning: nil)
        }
    }

    /// The number of messages waiting.
    var count: Int { self.state.withLockedValue { $0.buffer.count } }
    /// The payload bytes waiting.
    var bytes: Int { self.state.withLockedValue { $0.watermarks.bytes } }
    /// The most payload bytes that were ever waiting at once.
    var peakBytes: Int { self.state.withLockedValue { $0.watermarks.peakBytes } }
    /// The most messages that were ever waiting at once.
    var peakMessages: Int { self.state.withLockedValue { $0.watermarks.peakMessages } }

    /// Takes the first message; the caller holds the lock. Returns whether RESUME is due.
    private func pop(_ state: inout State) -> (Message, Bool)? {
        guard let message = state.buffer.popFirst() else { return nil }
        let size = Self.size(of: message)
        self.gauge?.decrement(by: Double(size))
        return (message, state.watermarks.popped(size: size))
    }

    func next() async throws -> Message? {
        enum Immediate {
            case message(Message, Bool)
            case end
            case failure(any Error)
            case wait
        }
        let immediate: Immediate = self.state.withLockedValue { state in
            if !state.buffer.isEmpty, let admits = state.admits, !admits() { return .end }
            if let (message, resume) = self.pop(&state) { return .message(message, resume) }
            if state.finished {
                if let failure = state.failure { return .failure(failure) }
                return .end
            }
            return .wait
        }
        switch immediate {
        case .message(let message, let resume):
            self.onConsume(message, resume)
            return message
        case .end:
            return nil
        case .failure(let error):
            throw error
        case .wait:
            break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message?, any Error>) in
                let resumeNow: (Result<Message?, any Error>, Bool)? = self.state.withLockedValue { state in
                    if !state.buffer.isEmpty, let admits = state.admits, !admits() { return (.success(nil), false) }
                    if let (message, resume) = self.pop(&state) { return (.success(message), resume) }
                    if state.finished {
                        return (state.failure.map { .failure($0) } ?? .success(nil), false)
                    }
                    if Task.isCancelled { return (.failure(CancellationError()), false) }
                    precondition(state.waiter == nil, "a session's messages are consumed by one task at a time")
                    state.waiter = continuation
                    return nil
                }
                if let (result, resume) = resumeNow {
                    if case .success(let message?) = result {
                        self.onConsume(message, resume)
                    }
                    continuation.resume(with: result)
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}

/// The messages a session receives, in order, as they are taken by the application.
public struct InboundMessages: AsyncSequence, Sendable {
    public typealias Element = Message
    public typealias Failure = any Error

    let queue: InboundQueue

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(queue: self.queue)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: InboundQueue

        public mutating func next() async throws -> Message? {
            try await self.queue.next()
        }
    }
}
