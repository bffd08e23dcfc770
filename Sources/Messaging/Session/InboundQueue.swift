import NIOConcurrencyHelpers
import NIOCore

/// The received messages of one session that the application has not taken yet.
///
/// The session's event loop pushes; one task at a time consumes through ``InboundMessages``.
/// When the connection ends, messages already queued are still delivered, then the sequence
/// ends (cleanly after GOODBYE, with the error otherwise).
final class InboundQueue: Sendable {
    private struct State {
        var buffer = CircularBuffer<Message>()
        var waiter: CheckedContinuation<Message?, any Error>?
        var finished = false
        var failure: (any Error)?
    }

    private let state = NIOLockedValueBox(State())
    /// Called (outside the lock) for each message the application takes.
    private let onConsume: @Sendable (Message) -> Void

    init(onConsume: @escaping @Sendable (Message) -> Void) {
        self.onConsume = onConsume
    }

    /// Queues a message, or hands it straight to a waiting consumer.
    func push(_ message: Message) {
        let waiter: CheckedContinuation<Message?, any Error>? = self.state.withLockedValue { state in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.buffer.append(message)
            return nil
        }
        if let waiter {
            waiter.resume(returning: message)
            self.onConsume(message)
        }
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
    var count: Int {
        self.state.withLockedValue { $0.buffer.count }
    }

    func next() async throws -> Message? {
        enum Immediate {
            case message(Message)
            case end
            case failure(any Error)
            case wait
        }
        let immediate: Immediate = self.state.withLockedValue { state in
            if let message = state.buffer.popFirst() { return .message(message) }
            if state.finished {
                if let failure = state.failure { return .failure(failure) }
                return .end
            }
            return .wait
        }
        switch immediate {
        case .message(let message):
            self.onConsume(message)
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
                let resumeNow: Result<Message?, any Error>? = self.state.withLockedValue { state in
                    if let message = state.buffer.popFirst() { return .success(message) }
                    if state.finished {
                        return state.failure.map { .failure($0) } ?? .success(nil)
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    precondition(state.waiter == nil, "a session's messages are consumed by one task at a time")
                    state.waiter = continuation
                    return nil
                }
                if let resumeNow {
                    if case .success(let message?) = resumeNow {
                        self.onConsume(message)
                    }
                    continuation.resume(with: resumeNow)
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
