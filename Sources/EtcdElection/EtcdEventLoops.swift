import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The event loops of an election's calls to etcd, the caller's or one of the election's own
/// (made on first use), and the calls under way: ``shutDown()`` refuses new calls, closes the
/// connections of those under way, waits for them to return, then stops its own loop. So no
/// call ever lands on a loop that has stopped.
final class EtcdEventLoops: Sendable {
    private enum Phase {
        case given(any EventLoopGroup)
        case notStarted
        case running(MultiThreadedEventLoopGroup)
        case draining
        case shutDown
    }

    private struct State {
        var phase: Phase
        /// The group to stop once the calls are done (`nil`: the caller's, not ours to stop).
        var own: MultiThreadedEventLoopGroup?
        var inFlight = 0
        var channels: [ObjectIdentifier: any Channel] = [:]
        var drained: [CheckedContinuation<Void, Never>] = []
    }

    private let state: NIOLockedValueBox<State>

    init(given: (any EventLoopGroup)?) {
        self.state = NIOLockedValueBox(State(phase: given.map { .given($0) } ?? .notStarted))
    }

    private static let refusal = EtcdError(.shutDown, "the election was shut down")

    /// A call begins: its event loops (``leave()`` when it ends).
    func enter() throws -> any EventLoopGroup {
        try self.state.withLockedValue { state in
            let group: any EventLoopGroup
            switch state.phase {
            case .given(let given):
                group = given
            case .running(let own):
                group = own
            case .notStarted:
                let own = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                state.phase = .running(own)
                state.own = own
                group = own
            case .draining, .shutDown:
                throw Self.refusal
            }
            state.inFlight += 1
            return group
        }
    }

    /// A call ends.
    func leave() {
        let drained: [CheckedContinuation<Void, Never>] = self.state.withLockedValue { state in
            state.inFlight -= 1
            guard state.inFlight == 0 else { return [] }
            defer { state.drained = [] }
            return state.drained
        }
        for waiter in drained {
            waiter.resume()
        }
    }

    /// A call's connection opened; `false` when the election is shutting down (close it).
    func opened(_ channel: any Channel) -> Bool {
        self.state.withLockedValue { state in
            guard case .draining = state.phase else {
                if case .shutDown = state.phase { return false }
                state.channels[ObjectIdentifier(channel)] = channel
                return true
            }
            return false
        }
    }

    /// A call's connection closed.
    func closed(_ channel: any Channel) {
        _ = self.state.withLockedValue { $0.channels.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Refuses new calls, closes the connections of those under way, waits until they have
    /// returned, then stops the election's own event loop (a given group is its owner's).
    func shutDown() async {
        let channels: [any Channel]? = self.state.withLockedValue { state in
            switch state.phase {
            case .draining, .shutDown:
                return nil
            default:
                state.phase = .draining
                return Array(state.channels.values)
            }
        }
        guard let channels else { return }
        for channel in channels {
            channel.close(promise: nil)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = self.state.withLockedValue { state -> Bool in
                if state.inFlight == 0 { return true }
                state.drained.append(continuation)
                return false
            }
            if done {
                continuation.resume()
            }
        }
        let own = self.state.withLockedValue { state -> MultiThreadedEventLoopGroup? in
            state.phase = .shutDown
            defer { state.own = nil }
            return state.own
        }
        try? await own?.shutdownGracefully()
    }

    /// From `deinit`, which cannot wait: nothing is in flight then (a call keeps its election
    /// alive); the election's own loop stops on a queue of its own.
    func shutDownInBackground() {
        let own = self.state.withLockedValue { state -> MultiThreadedEventLoopGroup? in
            state.phase = .shutDown
            defer { state.own = nil }
            return state.own
        }
        own?.shutdownGracefully(queue: .global()) { _ in }
    }
}
