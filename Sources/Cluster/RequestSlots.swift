import NIOConcurrencyHelpers

/// The REQUEST handlers one ``Router/serve(_:)`` loop may run at once, per session: the loop
/// takes a slot before it starts a handler and waits, taking nothing more from the session,
/// while the session has none left.
///
/// One loop waits at a time (the loop that owns the slots); handlers release from any task.
final class RequestSlots: Sendable {
    private struct State {
        var inUse: [ObjectIdentifier: Int] = [:]
        /// The loop, waiting for a slot of this session.
        var waiter: (key: ObjectIdentifier, continuation: CheckedContinuation<Bool, Never>)?
        var cancelled = false
    }

    let limit: Int
    private let state = NIOLockedValueBox(State())

    init(limit: Int) {
        precondition(limit > 0, "a router runs at least one request at a time")
        self.limit = limit
    }

    /// Takes a slot of `key`, waiting for one while all are in use. Returns false when the
    /// calling task is cancelled first (no slot taken).
    func acquire(_ key: ObjectIdentifier) async -> Bool {
        let taken = self.state.withLockedValue { state -> Bool in
            guard state.inUse[key, default: 0] < self.limit else { return false }
            state.inUse[key, default: 0] += 1
            return true
        }
        if taken { return true }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = self.state.withLockedValue { state in
                    if state.cancelled || Task.isCancelled { return false }
                    if state.inUse[key, default: 0] < self.limit {
                        state.inUse[key, default: 0] += 1
                        return true
                    }
                    precondition(state.waiter == nil, "one loop waits for request slots at a time")
                    state.waiter = (key, continuation)
                    return nil
                }
                if let now {
                    continuation.resume(returning: now)
                }
            }
        } onCancel: {
            let waiter = self.state.withLockedValue { state in
                state.cancelled = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Gives back a slot of `key`; the loop, if it waits for one of `key`, takes it.
    func release(_ key: ObjectIdentifier) {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<Bool, Never>? in
            let left = state.inUse[key, default: 1] - 1
            if let waiter = state.waiter, waiter.key == key {
                // Handed straight to the loop: the count stays.
                state.waiter = nil
                return waiter.continuation
            }
            state.inUse[key] = left == 0 ? nil : left
            return nil
        }
        waiter?.resume(returning: true)
    }
}
