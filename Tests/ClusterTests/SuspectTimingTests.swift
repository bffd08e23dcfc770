import NIOCore
import Testing

@testable import Cluster

@Suite("Collaborator liveness (explicit time)")
struct SuspectTimingTests {
    @Test("active until silent for more than two heartbeat intervals, then suspect, active again when heard")
    func suspectAndBack() {
        let interval = TimeAmount.seconds(1)
        var state = CollaboratorState.active
        state = state.connected(silence: .milliseconds(2_000), heartbeatInterval: interval)
        #expect(state == .active)
        state = state.connected(silence: .milliseconds(2_001), heartbeatInterval: interval)
        #expect(state == .suspect)
        state = state.connected(silence: .seconds(10), heartbeatInterval: interval)
        #expect(state == .suspect)
        state = state.connected(silence: .milliseconds(10), heartbeatInterval: interval)
        #expect(state == .active)
        // A gone record is not brought back by this rule.
        #expect(CollaboratorState.gone.connected(silence: .zero, heartbeatInterval: interval) == .gone)
    }

    @Test("the peer's interval sets the bound: 5 s intervals are suspect only after 10 s")
    func boundFollowsInterval() {
        let interval = TimeAmount.seconds(5)
        #expect(CollaboratorState.active.connected(silence: .seconds(9), heartbeatInterval: interval) == .active)
        #expect(CollaboratorState.active.connected(silence: .seconds(11), heartbeatInterval: interval) == .suspect)
    }
}
