import NIOConcurrencyHelpers

/// A value that comes once (a server's listening address): any number of tasks wait for it,
/// the first completion wins and later ones are ignored, a waiting task that is cancelled
/// stops waiting, and one never completed costs nothing when it goes (unlike a NIO promise,
/// which a debug build reports as leaked).
package final class Eventual<Value: Sendable>: Sendable {
    private enum State {
        case waiting([Int: CheckedContinuation<Value, any Error>], nextID: Int)
        case done(Result<Value, any Error>)
    }

    private let state = NIOLockedValueBox(State.waiting([:], nextID: 0))

    package init() {}

    /// Completes it, unless it is already: the waiting tasks get `result`.
    package func complete(_ result: Result<Value, any Error>) {
        let waiters: [CheckedContinuation<Value, any Error>] = self.state.withLockedValue { state in
            guard case .waiting(let waiters, _) = state else { return [] }
            state = .done(result)
            return Array(waiters.values)
        }
        for waiter in waiters {
            waiter.resume(with: result)
        }
    }

    /// The value, once it comes; throws what it was failed with, or `CancellationError` when
    /// the calling task is cancelled first.
    package func value() async throws -> Value {
        let id: Int? = self.state.withLockedValue { state in
            guard case .waiting(let waiters, let nextID) = state else { return nil }
            state = .waiting(waiters, nextID: nextID + 1)
            return nextID
        }
        guard let id else {
            guard case .done(let result) = self.state.withLockedValue({ $0 }) else { fatalError("unreachable") }
            return try result.get()
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
                let now: Result<Value, any Error>? = self.state.withLockedValue { state in
                    switch state {
                    case .done(let result):
                        return result
                    case .waiting(var waiters, let nextID):
                        if Task.isCancelled { return .failure(CancellationError()) }
                        waiters[id] = continuation
                        state = .waiting(waiters, nextID: nextID)
                        return nil
                    }
                }
                if let now {
                    continuation.resume(with: now)
                }
            }
        } onCancel: {
            let waiter: CheckedContinuation<Value, any Error>? = self.state.withLockedValue { state in
                guard case .waiting(var waiters, let nextID) = state, let waiter = waiters.removeValue(forKey: id)
                else {
                    return nil
                }
                state = .waiting(waiters, nextID: nextID)
                return waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
