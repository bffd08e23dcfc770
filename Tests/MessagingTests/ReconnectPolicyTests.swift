import Testing

@testable import Messaging

/// A seeded generator (SplitMix64) so that jitter is reproducible in tests.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("ReconnectPolicy")
struct ReconnectPolicyTests {
    @Test("ceilings grow by the multiplier up to the maximum")
    func ceilings() {
        let policy = ReconnectPolicy(initialDelay: .milliseconds(100), multiplier: 2, maximumDelay: .seconds(2))
        let ceilings = (1...8).map { policy.ceiling(forAttempt: $0) }
        #expect(
            ceilings == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800),
                .milliseconds(1600), .seconds(2), .seconds(2), .seconds(2),
            ]
        )
        // Huge attempt numbers stay at the maximum instead of overflowing.
        #expect(policy.ceiling(forAttempt: 1_000_000) == .seconds(2))
    }

    @Test("each delay lies within its jitter range, and the ranges are used")
    func jitter() {
        let policy = ReconnectPolicy(initialDelay: .milliseconds(100), multiplier: 3, maximumDelay: .seconds(5))
        var generator = SeededGenerator(state: 42)
        for attempt in 1...10 {
            let ceiling = policy.ceiling(forAttempt: attempt)
            var samples: [Duration] = []
            for _ in 0..<200 {
                let delay = policy.delay(forAttempt: attempt, using: &generator)!
                #expect(delay >= .zero && delay <= ceiling)
                samples.append(delay)
            }
            // Full jitter: the samples spread over the whole range, not bunched at its top.
            #expect(samples.min()! < ceiling / 4)
            #expect(samples.max()! > ceiling * 3 / 4)
        }
    }

    @Test("attempts stop at the maximum")
    func maximumAttempts() {
        let policy = ReconnectPolicy(maximumAttempts: 3)
        var generator = SeededGenerator(state: 7)
        #expect(policy.delay(forAttempt: 3, using: &generator) != nil)
        #expect(policy.delay(forAttempt: 4, using: &generator) == nil)
        #expect(ReconnectPolicy.never.delay(forAttempt: 1, using: &generator) == nil)
    }

    @Test("a multiplier of 1 keeps a constant ceiling")
    func constant() {
        let policy = ReconnectPolicy(initialDelay: .milliseconds(250), multiplier: 1, maximumDelay: .seconds(1))
        #expect((1...5).map { policy.ceiling(forAttempt: $0) } == Array(repeating: .milliseconds(250), count: 5))
    }
}
