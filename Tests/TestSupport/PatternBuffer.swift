public import NIOCore

/// `count` bytes whose byte `i` is `i × step + seed` (mod 256), so that a misordered, lost or
/// repeated byte shows.
///
/// Built one period (256 bytes) at a time: written a byte at a time, a mebibyte takes seconds
/// of CPU in a debug build, on a thread of the cooperative pool that every test in the process
/// shares (the watchdog caught two such loops stalling the whole test run).
public func patternBuffer(_ count: Int, step: Int = 7, seed: UInt8 = 0) -> ByteBuffer {
    let period = (0..<256).map { UInt8(truncatingIfNeeded: $0 &* step &+ Int(seed)) }
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    var left = count
    while left > 0 {
        let chunk = min(left, period.count)
        buffer.writeBytes(period[..<chunk])
        left -= chunk
    }
    return buffer
}
