import NIOConcurrencyHelpers

/// A ``LeaderElection`` held in this process's memory, for tests and examples: candidates are
/// elected in the order they campaign, terms count up from 1, and a test ends a leadership
/// with ``resign(_:)`` or ``loseLease()``. Leases never run out by themselves.
public final class InMemoryLeaderElection: LeaderElection {
    private struct Candidate {
        var address: String
        var continuation: CheckedContinuation<Leadership, any Error>
    }

    private struct State {
        var term: UInt64 = 0
        var leader: Leadership?
        var candidates: [(id: UInt64, candidate: Candidate)] = []
        var nextID: UInt64 = 0
        /// `hold` calls waiting for their leadership to end, by token.
        var holders: [String: CheckedContinuation<Void, any Error>] = [:]
        var observers: [UInt64: AsyncThrowingStream<ElectedLeader, any Error>.Continuation] = [:]
    }

    private let state = NIOLockedValueBox(State())
    /// How far ahead ``Leadership/validUntil`` is set.
    private let leaseTime: Duration

    public init(leaseTime: Duration = .seconds(3600)) {
        self.leaseTime = leaseTime
    }

    /// The leader now, if any.
    public var currentLeader: ElectedLeader? {
        self.state.withLockedValue { state in state.leader.map { ElectedLeader(term: $0.term, address: $0.address) } }
    }

    public func campaign(address: String) async throws -> Leadership {
        let id = self.state.withLockedValue { state in
            state.nextID += 1
            return state.nextID
        }
        let elected = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Leadership, any Error>) in
                let cancelled = self.state.withLockedValue { state -> Bool in
                    if Task.isCancelled { return true }
                    state.candidates.append((id, Candidate(address: address, continuation: continuation)))
                    return false
                }
                if cancelled {
                    continuation.resume(throwing: CancellationError())
                } else {
                    self.electNext()
                }
            }
        } onCancel: {
            let withdrawn = self.state.withLockedValue { state -> Candidate? in
                guard let index = state.candidates.firstIndex(where: { $0.id == id }) else { return nil }
                return state.candidates.remove(at: index).candidate
            }
            withdrawn?.continuation.resume(throwing: CancellationError())
        }
        return elected
    }

    public func hold(
        _ leadership: Leadership,
        confirmed: @escaping @Sendable (ContinuousClock.Instant) -> Void
    ) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Result<Void, any Error>? = self.state.withLockedValue { state in
                    if Task.isCancelled { return .success(()) }
                    guard state.leader?.token == leadership.token else {
                        return .failure(LeaderElectionError("the lease of term \(leadership.term) is gone"))
                    }
                    state.holders[leadership.token] = continuation
                    return nil
                }
                if let outcome {
                    continuation.resume(with: outcome)
                }
            }
        } onCancel: {
            self.state.withLockedValue { $0.holders.removeValue(forKey: leadership.token) }?.resume()
        }
    }

    public func resign(_ leadership: Leadership) async {
        self.end(token: leadership.token, holderError: LeaderElectionError("resigned"))
    }

    /// Ends the current leadership as if its lease had expired: its `hold` throws, and the next
    /// candidate is elected.
    public func loseLease() {
        guard let token = self.state.withLockedValue({ $0.leader?.token }) else { return }
        self.end(token: token, holderError: LeaderElectionError("lease expired"))
    }

    public func leaders() -> AsyncThrowingStream<ElectedLeader, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: ElectedLeader.self,
            bufferingPolicy: .bufferingNewest(16)
        )
        let id = self.state.withLockedValue { state in
            state.nextID += 1
            state.observers[state.nextID] = continuation
            if let leader = state.leader {
                continuation.yield(ElectedLeader(term: leader.term, address: leader.address))
            }
            return state.nextID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.observers.removeValue(forKey: id) }
        }
        return stream
    }

    private func end(token: String, holderError: LeaderElectionError) {
        let holder = self.state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            guard state.leader?.token == token else { return nil }
            state.leader = nil
            return state.holders.removeValue(forKey: token)
        }
        holder?.resume(throwing: holderError)
        self.electNext()
    }

    private func electNext() {
        let lease = self.leaseTime
        let elected = self.state.withLockedValue {
            state -> (Candidate, Leadership, [AsyncThrowingStream<ElectedLeader, any Error>.Continuation])? in
            guard state.leader == nil, !state.candidates.isEmpty else { return nil }
            let (id, candidate) = state.candidates.removeFirst()
            state.term += 1
            let leadership = Leadership(
                term: state.term,
                address: candidate.address,
                validUntil: .now + lease,
                token: "\(id)"
            )
            state.leader = leadership
            return (candidate, leadership, Array(state.observers.values))
        }
        guard let (candidate, leadership, observers) = elected else { return }
        for observer in observers {
            observer.yield(ElectedLeader(term: leadership.term, address: leadership.address))
        }
        candidate.continuation.resume(returning: leadership)
    }
}
