import Synchronization

/// Session ids that this process never hands out twice: a random prefix chosen at start-up
/// (so restarts do not repeat them either, in practice) and a counter.
enum SessionIDGenerator {
    private static let prefix: String = {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }()
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        let number = self.counter.add(1, ordering: .relaxed).newValue
        return "\(self.prefix)-\(number)"
    }
}
