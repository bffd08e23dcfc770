public import Testing

/// Polls `condition` until it holds or `timeout` passes.
@discardableResult
public func eventually(
    _ what: String,
    timeout: Duration = .seconds(10),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async -> Bool
) async -> Bool {
    StallWatchdog.start()
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    if await condition() { return true }
    Issue.record("timed out waiting for \(what)", sourceLocation: sourceLocation)
    return false
}

/// Polls `value` until it has not changed for `quiet`, and returns it: for a count that keeps
/// moving while data already in flight lands, however slowly a loaded machine delivers it.
/// Records an issue and returns the last value if it is still moving after `timeout`.
public func settled(
    _ what: String,
    quiet: Duration = .milliseconds(300),
    timeout: Duration = .seconds(10),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ value: () -> Int
) async -> Int {
    StallWatchdog.start()
    let deadline = ContinuousClock.now + timeout
    var last = value()
    var since = ContinuousClock.now
    while ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(20))
        let current = value()
        if current != last {
            last = current
            since = ContinuousClock.now
        } else if ContinuousClock.now - since >= quiet {
            return current
        }
    }
    Issue.record("\(what) was still changing after \(timeout)", sourceLocation: sourceLocation)
    return last
}
